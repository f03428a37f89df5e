"""medsec: cybersecurity lifecycle for medical devices (manufacturer server, hospital portal, device agent)."""

__version__ = "0.1.0"

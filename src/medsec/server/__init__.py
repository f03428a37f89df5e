"""The manufacturer server: API, hospital portal, audit log. Needs the ``server`` extra."""

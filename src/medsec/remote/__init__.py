"""Remote maintenance under hospital control (RA-1..RA-6, PA-3).

``session`` is the pure life cycle; ``ticket`` the hospital-signed approval the
device checks; ``certs`` the short-lived SSH certificates; ``recording`` the
asciicast v2 recordings; ``gateway`` and ``device_side`` the two SSH ends.
Nothing is imported here, so ``medsec.remote.session`` works without asyncssh.
"""

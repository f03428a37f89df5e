"""The device daemon: enrollment, signed check-ins and the device's own access log.

Everything the agent keeps lives under one device root folder, so several
simulated devices can run side by side on one machine::

    ROOT/etc/medsec/agent.json          settings (server, serial, hardware id, interval)
    ROOT/etc/medsec/version             the installed version string
    ROOT/var/lib/medsec/device.key      the device's Ed25519 key (0600, never leaves the device)
    ROOT/var/lib/medsec/state.json      enrollment, counter, nonce, last cosigned checkpoint
    ROOT/var/lib/medsec/agent.lock      held while a daemon runs on this root
    ROOT/var/log/medsec/access-log/     the tamper-evident access log (medsec.auditlog)

This package must stay free of FastAPI and SQLAlchemy: it runs on the device.
"""

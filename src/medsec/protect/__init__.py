"""Device protection (RL-1..3, PA-1, PA-2): execution allowlisting with fanotify, a signed trust
database, integrity monitoring with recovery, and the device's port, interface and USB policy.

Everything here runs on the device, inside the agent, as root. Tests and the demo mark only a
dedicated mount (a tmpfs holding a simulated device root), never the machine's own root.
"""

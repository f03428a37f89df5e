"""Third-party vulnerability management (SM-3): feeds, alias groups, version ordering, matching, priority.

The modules here are pure: they take values (advisories, SBOM components, a clock) and return values,
or read files the caller names. Storage and scheduling belong to the server.
"""

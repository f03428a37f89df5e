"""Advisories for hospitals: CSAF 2.0 documents, the trusted-provider tree, and VEX exports (SM-2, SM-3, SM-4)."""

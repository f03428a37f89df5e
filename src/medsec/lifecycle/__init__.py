"""End-of-life and end-of-support data, plans and legacy plans for releases (SM-4)."""

"""Signed software updates: TUF image repository, per-device director, device updater (SM-1, SM-5, SM-6)."""

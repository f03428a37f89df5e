"""Software bills of materials: read, check, generate, export and compare (SM-3, 附属書A)."""

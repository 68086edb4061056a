"""Provider implementations: one thin adapter per module (local models first)."""

"""Litestar layer: the only place Litestar types appear (besides the app factory)."""

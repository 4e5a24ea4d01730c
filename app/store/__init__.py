"""Storage: one small interface per concern (``base``), Redis implementations (``redis``).

Key names are built in ``keys`` only.
"""

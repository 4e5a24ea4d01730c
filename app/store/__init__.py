"""Storage: one small interface per concern (``base``), Redis implementations (``redis``,
``token_cache``, ``ratelimit``).

Redis key names are built in ``keyspace`` only and never leave this package.
"""

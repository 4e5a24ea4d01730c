"""token-broker-jose: the JOSE code the broker and its client and resource-server libraries share.

``constants`` (protocol values and size caps), ``jose`` (strict parsing, the one JWK → joserfc key
conversion), ``assertion`` (client assertions), ``credentials`` (a client's private key from a JWK
or PEM) and ``access_token`` (RFC 9068 verification). Each is defined here once; the broker's
``app.oauth`` modules re-export what they use.
"""

__version__ = "0.1.0"

"""Token broker: OAuth 2.0 client credentials with private_key_jwt (RFC 6749 §4.4, RFC 7523)."""

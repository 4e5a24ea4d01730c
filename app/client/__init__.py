"""Client side: build private_key_jwt assertions and obtain access tokens from the broker."""

from app.client.assertion import make_client_assertion

__all__ = ["make_client_assertion"]

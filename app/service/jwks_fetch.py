"""Fetching a client's ``jwks_uri`` (RFC 7591 §2) without becoming an SSRF tool (RFC 8725 §3.10).

The rules, all fail-closed:

- ``https`` only; plain ``http`` only to a loopback address, and only when
  ``BROKER_JWKS_URI_ALLOW_HTTP_LOOPBACK`` is on (tests, local development);
- no user info, no fragment, no redirects (a 3xx is a failure, never followed);
- the host name is resolved once and **every** address must be global unicast, IPv4 carried in
  IPv6 (mapped, compatible, 6to4, Teredo, NAT64) judged as IPv4 (``app.service.ssrf``; loopback
  only with the flag); numeric hosts other than a dotted quad (``2130706433``, ``127.1``) are
  refused. The connection then goes to the checked address itself (the name is kept for the
  ``Host`` header and TLS SNI/certificate check), so a second DNS answer cannot redirect it;
- connect/read timeouts and a total deadline; at most 64 KiB of body;
- no proxies from the environment (``trust_env=False``).

The body must be a JWK Set; keys marked ``use: enc`` are ignored, every other key goes through
``validate_client_jwk`` (so each key is bound to one algorithm and stamped ``use: sig``).
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import msgspec

from app import tracing
from app.oauth.clients import InvalidClientMetadata, validate_client_jwks
from app.oauth.constants import FETCHED_DOCUMENT_MAX, URI_MAX
from app.service import ssrf


class JwksFetchError(Exception):
    """The set could not be fetched or is unusable; ``reason`` is a short code for logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_jwks_uri(url: Any, *, allow_http_loopback: bool) -> str:
    """Registration-time check of the URL and any literal address; names are resolved and
    checked again at every fetch."""
    if not isinstance(url, str) or not url or len(url) > URI_MAX or not url.isascii() or not url.isprintable():
        raise InvalidClientMetadata("jwks_uri_invalid", "jwks_uri must be an absolute https URL")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment or "@" in parts.netloc:
        raise InvalidClientMetadata("jwks_uri_invalid", "jwks_uri must be an absolute https URL without user info or fragment")
    try:
        _ = parts.port  # urllib parses the port lazily: a bad one raises here
    except ValueError:
        raise InvalidClientMetadata("jwks_uri_invalid", "jwks_uri has an invalid port") from None
    literal = _literal_ip(parts.hostname)
    if literal is None and ssrf.numeric_host_refused(parts.hostname):
        raise InvalidClientMetadata(
            "jwks_uri_numeric_host",
            "jwks_uri's host must be a DNS name, a dotted-quad IPv4 address or a bracketed IPv6 address",
        )
    name = parts.hostname.rstrip(".")
    local_name = name == "localhost" or name.endswith(".localhost")
    if local_name and not allow_http_loopback:
        raise InvalidClientMetadata("jwks_uri_private", "jwks_uri points at a private, loopback or link-local address")
    if parts.scheme == "http":
        loopback = local_name or (literal is not None and literal.is_loopback)
        if not (allow_http_loopback and loopback):
            raise InvalidClientMetadata(
                "jwks_uri_not_https", "jwks_uri must use https (plain http only for loopback when the broker allows it)"
            )
    if literal is not None and not address_allowed(literal, allow_loopback=allow_http_loopback):
        raise InvalidClientMetadata("jwks_uri_private", "jwks_uri points at a private, loopback or link-local address")
    return url


def address_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_loopback: bool) -> bool:
    """Global unicast only, tunnelled and translated IPv4 judged too (``app.service.ssrf``)."""
    return ssrf.address_refusal(ip, allow_loopback=allow_loopback) is None


def _literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def resolve_checked(host: str, port: int, *, allow_loopback: bool) -> str:
    """Resolve ``host`` and return one address to connect to; refuse if any answer is not public."""
    literal = _literal_ip(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = await ssrf.resolve(host, port)
        except (OSError, UnicodeError):
            raise JwksFetchError("dns_failed") from None
    if not addresses:
        raise JwksFetchError("dns_failed")
    for ip in addresses:
        if not address_allowed(ip, allow_loopback=allow_loopback):
            raise JwksFetchError("address_forbidden")
    return str(addresses[0])


@tracing.jwks_fetch_span
async def fetch_jwks(url: str, *, allow_http_loopback: bool, timeout: float) -> bytes:
    """GET the URL under every rule above; return the raw body."""
    try:  # again at fetch time: the stored URI may predate a settings change
        check_jwks_uri(url, allow_http_loopback=allow_http_loopback)
    except InvalidClientMetadata as exc:
        raise JwksFetchError(exc.reason) from None
    parts = urlsplit(url)
    assert parts.hostname is not None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    allow_loopback = allow_http_loopback
    try:
        async with asyncio.timeout(timeout):
            ip = await resolve_checked(parts.hostname, port, allow_loopback=allow_loopback)
            if parts.scheme == "http" and not ipaddress.ip_address(ip).is_loopback:
                raise JwksFetchError("http_not_loopback")
            netloc_ip = f"[{ip}]" if ":" in ip else ip
            pinned = urlunsplit((parts.scheme, f"{netloc_ip}:{port}", parts.path or "/", parts.query, ""))
            host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
            limits = httpx.Timeout(timeout, connect=min(timeout, 2.0))
            async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=limits) as http:
                request = http.build_request(
                    "GET", pinned,
                    # identity: a compressed body could expand far past the size limit.
                    headers={"Host": host_header, "Accept": "application/jwk-set+json, application/json",
                             "Accept-Encoding": "identity"},
                    extensions={"sni_hostname": parts.hostname},
                )
                response = await http.send(request, stream=True)
                try:
                    if response.status_code != 200:
                        raise JwksFetchError(f"http_{response.status_code}")
                    if response.headers.get("content-encoding", "identity").lower() != "identity":
                        raise JwksFetchError("content_encoding")
                    length = response.headers.get("content-length")
                    if length is not None and (not length.isdigit() or int(length) > FETCHED_DOCUMENT_MAX):
                        raise JwksFetchError("too_large")
                    body = bytearray()
                    async for chunk in response.aiter_raw():
                        body += chunk
                        if len(body) > FETCHED_DOCUMENT_MAX:
                            raise JwksFetchError("too_large")
                finally:
                    await response.aclose()
    except TimeoutError:
        raise JwksFetchError("timeout") from None
    except httpx.HTTPError as exc:
        raise JwksFetchError("http_error:" + type(exc).__name__) from None
    return bytes(body)


def parse_fetched_jwks(body: bytes, *, default_alg: str | None) -> dict[str, list[dict[str, Any]]]:
    """Validate a fetched JWK Set exactly like registered keys; ``use: enc`` keys are skipped."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise JwksFetchError("not_json") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwksFetchError("not_jwks")
    keys = [k for k in data["keys"] if not (isinstance(k, dict) and k.get("use") == "enc")]
    if not keys:
        raise JwksFetchError("no_signing_keys")
    try:
        return validate_client_jwks(keys, default_alg=default_alg)
    except InvalidClientMetadata as exc:
        raise JwksFetchError("key_invalid:" + str(exc.reason)) from None

"""Which hosts the broker may connect to when it fetches a client's ``jwks_uri`` (RFC 8725 §3.10).

Only global unicast addresses. Python's ``ipaddress.is_global`` alone is not enough: it calls
site-local ``fec0::/10``, the returned 6bone ``3ffe::/16`` and every 6to4 address global, so the
ranges are listed here and ``is_global`` is only a further check.

IPv6 addresses that carry an IPv4 address are judged by that IPv4 address: IPv4-mapped
(``::ffff:a.b.c.d``), IPv4-compatible (``::a.b.c.d``), 6to4 (``2002::/16``), Teredo
(``2001::/32``, server and client) and NAT64 (``64:ff9b::/96``). The NAT64 local-use prefix
``64:ff9b:1::/48`` is refused whole: where the IPv4 address sits in it is the local network's
choice. The loopback exception (``BROKER_JWKS_URI_ALLOW_HTTP_LOOPBACK``, for tests) covers
loopback itself and its IPv4-mapped form, never a loopback address carried through a tunnel or
translator.

Host spellings: a host whose last label is a number must be a dotted-quad IPv4 address. URL parsers
and resolvers disagree on ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1`` and ``0``
(glibc reads them all as IPv4 addresses), so they are refused outright.

Host names are resolved at registration (``refuse_inward_names``) as an early, best-effort
refusal; the check at fetch time stays the authority, because DNS answers can change.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from urllib.parse import urlsplit

from app.oauth.clients import InvalidClientMetadata

IPAddress = IPv4Address | IPv6Address

_V4_REFUSED: tuple[tuple[IPv4Network, str], ...] = tuple((IPv4Network(net), why) for net, why in (
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # includes the broadcast address
))
_V6_REFUSED: tuple[tuple[IPv6Network, str], ...] = tuple((IPv6Network(net), why) for net, why in (
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "NAT64 local-use prefix"),
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignments"),  # Teredo (2001::/32) is unwrapped before this
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("3ffe::/16", "6bone (returned)"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
))
_GLOBAL_UNICAST = IPv6Network("2000::/3")
_IPV4_COMPATIBLE = IPv6Network("::/96")
_NAT64 = IPv6Network("64:ff9b::/96")
#: WHATWG URL "ends in a number": such a host is parsed as IPv4 by browsers and by glibc.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")


def address_refusal(ip: IPAddress, *, allow_loopback: bool = False) -> str | None:
    """Why the broker must not connect to ``ip``; None for a global unicast address."""
    if isinstance(ip, IPv4Address):
        return _ipv4_refusal(ip, allow_loopback=allow_loopback)
    if ip.scope_id:
        return "zone identifier"
    carried = _carried_ipv4(ip)
    for label, inner in carried:
        why = _ipv4_refusal(inner, allow_loopback=allow_loopback and label == "IPv4-mapped")
        if why is not None:
            return f"{label} {inner}: {why}"
    return None if carried else _ipv6_refusal(ip, allow_loopback=allow_loopback)


def _carried_ipv4(ip: IPv6Address) -> list[tuple[str, IPv4Address]]:
    if ip.ipv4_mapped is not None:
        return [("IPv4-mapped", ip.ipv4_mapped)]
    if ip.sixtofour is not None:
        return [("6to4", ip.sixtofour)]
    if ip.teredo is not None:
        server, client = ip.teredo
        return [("Teredo server", server), ("Teredo client", client)]
    if ip in _NAT64:
        return [("NAT64", IPv4Address(int(ip) & 0xFFFFFFFF))]
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # :: and ::1 are the unspecified and loopback addresses
        return [("IPv4-compatible", IPv4Address(int(ip)))]
    return []


def _ipv4_refusal(ip: IPv4Address, *, allow_loopback: bool) -> str | None:
    for net, why in _V4_REFUSED:
        if ip in net:
            return None if why == "loopback" and allow_loopback else why
    return None if ip.is_global else "not globally reachable"


def _ipv6_refusal(ip: IPv6Address, *, allow_loopback: bool) -> str | None:
    for net, why in _V6_REFUSED:
        if ip in net:
            return None if why == "loopback" and allow_loopback else why
    if ip not in _GLOBAL_UNICAST:
        return "not global unicast"
    return None if ip.is_global else "not globally reachable"


def numeric_host_refused(host: str) -> bool:
    """True for a host a resolver would read as an IPv4 address in anything but dotted-quad form."""
    last = host[:-1] if host.endswith(".") else host
    if not _NUMERIC_LABEL.fullmatch(last.rsplit(".", 1)[-1]):
        return False
    try:
        IPv4Address(host)  # four decimal parts, no leading zeros, no trailing dot
    except ValueError:
        return True
    return False


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for ``host`` (``OSError`` / ``UnicodeError`` on failure)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0]) for info in infos]


async def refuse_inward_names(url: str, *, allow_loopback: bool, timeout: float) -> None:
    """At registration: refuse a host name that resolves to any address the fetch would refuse.

    Best effort only: a name that does not resolve (yet), or not within ``timeout``, is let
    through, and an answer can change after registration. The fetch checks every address again.
    """
    host = urlsplit(url).hostname
    if host is None or _is_literal(host):
        return  # literals were judged by check_jwks_uri already
    try:
        async with asyncio.timeout(timeout):
            addresses = await resolve(host, 443)
    except (OSError, UnicodeError, TimeoutError, ValueError):
        return
    if any(address_refusal(ip, allow_loopback=allow_loopback) is not None for ip in addresses):
        raise InvalidClientMetadata(
            "jwks_uri_private", "jwks_uri's host name resolves to a private, loopback or link-local address"
        )


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True

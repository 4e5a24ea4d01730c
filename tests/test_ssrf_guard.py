"""The jwks_uri fetch connects only to global unicast addresses (RFC 8725 §3.10 for a broker that
fetches client-supplied URLs).

IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64) are
judged by the IPv4 address they carry; ranges Python's ``ipaddress`` calls global although nothing
public lives there (site-local fec0::/10, the returned 6bone 3ffe::/16, 3fff::/20 documentation)
are refused; numeric host spellings other than a dotted quad (``2130706433``, ``0x7f000001``,
``0177.0.0.1``, ``127.1``, ``0``) are refused at registration; a host name that resolves to a
refused address is refused at registration (best effort) and again, authoritatively, at fetch.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from app.oauth.clients import InvalidClientMetadata
from app.service.jwks_fetch import JwksFetchError, address_allowed, check_jwks_uri, fetch_jwks
from app.service.ssrf import address_refusal
from tests.test_admin_api import admin_headers, bad_request, meta

# Teredo addresses carry the client's IPv4 address with every bit inverted.
TEREDO_SERVER = "4136:e378"  # 65.54.227.120
TEREDO_CLIENT_LOOPBACK = "80ff:fffe"  # ~127.0.0.1
TEREDO_CLIENT_PUBLIC = "f7f7:f7f7"  # ~8.8.8.8

#: address → None (allowed) or why it is refused; loopback not allowed (the production setting).
ADDRESSES: list[tuple[str, str, str | None]] = [
    ("v4-public", "8.8.8.8", None),
    ("v4-public-2", "1.1.1.1", None),
    ("v4-this-network", "0.0.0.0", "this network"),
    ("v4-this-network-host", "0.1.2.3", "this network"),
    ("v4-private-10", "10.0.0.1", "private"),
    ("v4-private-172", "172.16.5.4", "private"),
    ("v4-private-192", "192.168.1.1", "private"),
    ("v4-shared-cgnat", "100.64.0.1", "shared address space"),
    ("v4-shared-cgnat-top", "100.127.255.254", "shared address space"),
    ("v4-loopback", "127.0.0.1", "loopback"),
    ("v4-loopback-range", "127.255.255.254", "loopback"),
    ("v4-link-local-metadata", "169.254.169.254", "link-local"),
    ("v4-ietf-protocol-192.0.0.9", "192.0.0.9", "IETF protocol assignments"),
    ("v4-ietf-protocol-192.0.0.170", "192.0.0.170", "IETF protocol assignments"),
    ("v4-documentation-1", "192.0.2.1", "documentation"),
    ("v4-documentation-2", "198.51.100.7", "documentation"),
    ("v4-documentation-3", "203.0.113.9", "documentation"),
    ("v4-6to4-relay-anycast", "192.88.99.1", "6to4 relay anycast"),
    ("v4-benchmarking", "198.18.0.1", "benchmarking"),
    ("v4-benchmarking-top", "198.19.255.255", "benchmarking"),
    ("v4-multicast", "224.0.0.1", "multicast"),
    ("v4-multicast-ssdp", "239.255.255.250", "multicast"),
    ("v4-reserved-240", "240.0.0.1", "reserved"),
    ("v4-broadcast", "255.255.255.255", "reserved"),
    ("v6-public", "2606:4700:4700::1111", None),
    ("v6-public-2", "2a00:1450:4001::200e", None),
    ("v6-unspecified", "::", "unspecified"),
    ("v6-loopback", "::1", "loopback"),
    ("v6-mapped-public", "::ffff:8.8.8.8", None),
    ("v6-mapped-loopback", "::ffff:127.0.0.1", "IPv4-mapped 127.0.0.1: loopback"),
    ("v6-mapped-private", "::ffff:10.0.0.1", "IPv4-mapped 10.0.0.1: private"),
    ("v6-compatible-public", "::8.8.8.8", None),
    ("v6-compatible-loopback", "::127.0.0.1", "IPv4-compatible 127.0.0.1: loopback"),
    ("v6-compatible-this-network", "::0.0.0.2", "IPv4-compatible 0.0.0.2: this network"),
    ("v6-ipv4-translated", "::ffff:0:7f00:1", "not global unicast"),
    ("v6-6to4-public", "2002:808:808::1", None),
    ("v6-6to4-loopback", "2002:7f00:1::", "6to4 127.0.0.1: loopback"),
    ("v6-6to4-private", "2002:c0a8:101::1", "6to4 192.168.1.1: private"),
    ("v6-6to4-cgnat", "2002:6440:1::", "6to4 100.64.0.1: shared address space"),
    ("v6-teredo-public", f"2001:0:{TEREDO_SERVER}:8000:63bf:{TEREDO_CLIENT_PUBLIC}", None),
    ("v6-teredo-client-loopback", f"2001:0:{TEREDO_SERVER}:8000:63bf:{TEREDO_CLIENT_LOOPBACK}",
     "Teredo client 127.0.0.1: loopback"),
    ("v6-teredo-server-private", f"2001:0:a00:1:8000:63bf:{TEREDO_CLIENT_PUBLIC}", "Teredo server 10.0.0.1: private"),
    ("v6-nat64-public", "64:ff9b::808:808", None),
    ("v6-nat64-loopback", "64:ff9b::7f00:1", "NAT64 127.0.0.1: loopback"),
    ("v6-nat64-metadata", "64:ff9b::a9fe:a9fe", "NAT64 169.254.169.254: link-local"),
    ("v6-nat64-local-use", "64:ff9b:1::808:808", "NAT64 local-use prefix"),
    ("v6-site-local", "fec0::1", "site-local"),
    ("v6-site-local-top", "feff::1", "site-local"),
    ("v6-6bone", "3ffe::1", "6bone (returned)"),
    ("v6-documentation", "2001:db8::1", "documentation"),
    ("v6-documentation-3fff", "3fff::1", "documentation"),
    ("v6-discard-only", "100::1", "discard-only"),
    ("v6-unique-local", "fd12:3456::1", "unique local"),
    ("v6-link-local", "fe80::1", "link-local"),
    ("v6-link-local-zone", "fe80::1%eth0", "zone identifier"),
    ("v6-multicast", "ff02::1", "multicast"),
    ("v6-ietf-benchmarking", "2001:2::1", "IETF protocol assignments"),
    ("v6-ietf-orchid", "2001:20::1", "IETF protocol assignments"),
    ("v6-srv6-sid", "5f00::1", "not global unicast"),
    ("v6-unassigned-4000", "4000::1", "not global unicast"),
]


@pytest.mark.parametrize(("ip", "expected"), [a[1:] for a in ADDRESSES], ids=[a[0] for a in ADDRESSES])
def test_address_judgment(ip, expected):
    assert address_refusal(ipaddress.ip_address(ip), allow_loopback=False) == expected


@pytest.mark.parametrize(("ip", "expected"), [a[1:] for a in ADDRESSES], ids=[a[0] for a in ADDRESSES])
def test_address_allowed(ip, expected):
    assert address_allowed(ipaddress.ip_address(ip), allow_loopback=False) is (expected is None)


#: With BROKER_JWKS_URI_ALLOW_HTTP_LOOPBACK (tests, development): loopback itself, nothing that
#: merely carries a loopback address through a tunnel or translator.
LOOPBACK_FLAG = [
    ("v4-loopback", "127.0.0.1", None),
    ("v6-loopback", "::1", None),
    ("v6-mapped-loopback", "::ffff:127.0.0.1", None),
    ("v6-compatible-loopback", "::127.0.0.1", "IPv4-compatible 127.0.0.1: loopback"),
    ("v6-6to4-loopback", "2002:7f00:1::", "6to4 127.0.0.1: loopback"),
    ("v6-nat64-loopback", "64:ff9b::7f00:1", "NAT64 127.0.0.1: loopback"),
    ("v6-teredo-loopback", f"2001:0:{TEREDO_SERVER}:8000:63bf:{TEREDO_CLIENT_LOOPBACK}", "Teredo client 127.0.0.1: loopback"),
    ("v4-private", "10.0.0.1", "private"),
]


@pytest.mark.parametrize(("ip", "expected"), [a[1:] for a in LOOPBACK_FLAG], ids=[a[0] for a in LOOPBACK_FLAG])
def test_loopback_flag_allows_loopback_only(ip, expected):
    assert address_allowed(ipaddress.ip_address(ip), allow_loopback=True) is (expected is None)
    assert address_refusal(ipaddress.ip_address(ip), allow_loopback=True) == expected


# -- the URL check at registration (and again before every fetch) -------------------------------

PRIVATE = ("jwks_uri_private", "jwks_uri points at a private, loopback or link-local address")
NUMERIC = ("jwks_uri_numeric_host",
           "jwks_uri's host must be a DNS name, a dotted-quad IPv4 address or a bracketed IPv6 address")

URLS: list[tuple[str, str, tuple[str, str] | None]] = [
    ("name", "https://keys.example.com/jwks", None),
    ("name-starting-with-digits", "https://1e100.net/jwks", None),
    ("v4-public", "https://8.8.8.8/jwks", None),
    ("v6-public", "https://[2606:4700:4700::1111]/jwks", None),
    ("decimal", "https://2130706433/jwks", NUMERIC),
    ("decimal-public", "https://134744072/jwks", NUMERIC),
    ("hex", "https://0x7f000001/jwks", NUMERIC),
    ("hex-dotted", "https://0x7F.0.0.1/jwks", NUMERIC),
    ("octal", "https://0177.0.0.1/jwks", NUMERIC),
    ("leading-zero", "https://08.8.8.8/jwks", NUMERIC),
    ("short-127.1", "https://127.1/jwks", NUMERIC),
    ("short-three-parts", "https://127.0.1/jwks", NUMERIC),
    ("zero", "https://0/jwks", NUMERIC),
    ("trailing-dot", "https://127.0.0.1./jwks", NUMERIC),
    ("five-parts", "https://1.2.3.4.5/jwks", NUMERIC),
    ("numeric-last-label", "https://keys.example.123/jwks", NUMERIC),
    ("v4-this-network", "https://0.0.0.0/jwks", PRIVATE),
    ("v4-cgnat", "https://100.64.0.1/jwks", PRIVATE),
    ("v4-ietf-protocol", "https://192.0.0.8/jwks", PRIVATE),
    ("v4-benchmarking", "https://198.18.0.1/jwks", PRIVATE),
    ("v4-reserved", "https://240.0.0.1/jwks", PRIVATE),
    ("v6-6to4-loopback", "https://[2002:7f00:1::]/jwks", PRIVATE),
    ("v6-site-local", "https://[fec0::1]/jwks", PRIVATE),
    ("v6-6bone", "https://[3ffe::1]/jwks", PRIVATE),
    ("v6-documentation", "https://[2001:db8::1]/jwks", PRIVATE),
    ("v6-discard-only", "https://[100::1]/jwks", PRIVATE),
    ("v6-nat64-loopback", "https://[64:ff9b::7f00:1]/jwks", PRIVATE),
    ("v6-nat64-local-use", "https://[64:ff9b:1::a00:1]/jwks", PRIVATE),
    ("v6-mapped-loopback", "https://[::ffff:127.0.0.1]/jwks", PRIVATE),
    ("v6-compatible-loopback", "https://[::127.0.0.1]/jwks", PRIVATE),
    ("v6-teredo-loopback", f"https://[2001:0:{TEREDO_SERVER}:8000:63bf:{TEREDO_CLIENT_LOOPBACK}]/jwks", PRIVATE),
    ("v6-link-local-zone", "https://[fe80::1%25eth0]/jwks", PRIVATE),
]


@pytest.mark.parametrize(("url", "expected"), [u[1:] for u in URLS], ids=[u[0] for u in URLS])
def test_url_check(url, expected):
    if expected is None:
        assert check_jwks_uri(url, allow_http_loopback=False) == url
    else:
        with pytest.raises(InvalidClientMetadata) as caught:
            check_jwks_uri(url, allow_http_loopback=False)
        assert (caught.value.reason, caught.value.detail) == expected


def uri_metadata(uri: str) -> dict[str, Any]:
    body = meta("svc", jwks_uri=uri, token_endpoint_auth_signing_alg="ES256")
    body.pop("jwks")
    return body


ADMIN_URLS = [u for u in URLS if u[0] in ("decimal", "hex", "octal", "short-127.1", "zero", "v6-6to4-loopback",
                                          "v6-site-local", "v6-nat64-loopback", "v4-cgnat")]


@pytest.mark.parametrize(("url", "expected"), [u[1:] for u in ADMIN_URLS], ids=[u[0] for u in ADMIN_URLS])
def test_admin_api_refuses_jwks_uri(broker, url, expected):
    r = broker.http.post("/admin/clients", json=uri_metadata(url), headers=admin_headers(broker))
    assert (r.status_code, r.json()) == bad_request(expected[1])


# -- host names: resolved at registration (best effort), and at fetch (authoritative) -------------

RESOLVES_INWARD = ("jwks_uri_private", "jwks_uri's host name resolves to a private, loopback or link-local address")

#: What the fake resolver answers; a name missing here fails to resolve.
DNS = {
    "keys.public.test": ["8.8.8.8", "2606:4700:4700::1111"],
    "keys.loopback.test": ["127.0.0.1"],
    "keys.sixtofour.test": ["2002:7f00:1::"],
    "keys.site-local.test": ["fec0::1"],
    "keys.mixed.test": ["8.8.8.8", "10.0.0.1"],
}


@pytest.fixture
def fake_dns(monkeypatch) -> Iterator[list[str]]:
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[Any]:
        asked.append(host)
        if host not in DNS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in DNS[host]]

    monkeypatch.setattr("app.service.ssrf.resolve", resolve)
    yield asked


NAMES = [
    ("public", "keys.public.test", None),
    ("resolves-to-loopback", "keys.loopback.test", RESOLVES_INWARD),
    ("resolves-to-6to4-loopback", "keys.sixtofour.test", RESOLVES_INWARD),
    ("resolves-to-site-local", "keys.site-local.test", RESOLVES_INWARD),
    ("one-answer-private", "keys.mixed.test", RESOLVES_INWARD),
    ("does-not-resolve-yet", "keys.unknown.test", None),  # best effort: the fetch decides later
]


@pytest.mark.parametrize(("host", "expected"), [n[1:] for n in NAMES], ids=[n[0] for n in NAMES])
def test_admin_api_resolves_the_host_at_registration(broker, fake_dns, host, expected):
    h = admin_headers(broker)
    r = broker.http.post("/admin/clients", json=uri_metadata(f"https://{host}/jwks"), headers=h)
    if expected is None:
        assert r.status_code == 201, r.text
    else:
        assert (r.status_code, r.json()) == bad_request(expected[1])
    assert fake_dns == [host]


def test_admin_api_resolves_a_changed_host_on_update(broker, fake_dns):
    h = admin_headers(broker)
    assert broker.http.post("/admin/clients", json=uri_metadata("https://keys.public.test/jwks"), headers=h).status_code == 201
    assert broker.http.patch("/admin/clients/svc", json={"scopes": ["read", "write"]}, headers=h).status_code == 200
    assert fake_dns == ["keys.public.test"]  # an unchanged jwks_uri is not resolved again
    r = broker.http.patch("/admin/clients/svc", json={"jwks_uri": "https://keys.sixtofour.test/jwks"}, headers=h)
    assert (r.status_code, r.json()) == bad_request(RESOLVES_INWARD[1])
    assert fake_dns == ["keys.public.test", "keys.sixtofour.test"]


@pytest.mark.parametrize("host", ["keys.loopback.test", "keys.sixtofour.test", "keys.mixed.test"])
def test_fetch_refuses_a_name_that_resolves_inward(fake_dns, host):
    """DNS may change after registration: the fetch judges the answers it gets, every one of them."""
    with pytest.raises(JwksFetchError) as caught:
        asyncio.run(fetch_jwks(f"https://{host}/jwks", allow_http_loopback=False, timeout=1.0))
    assert caught.value.reason == "address_forbidden"


# -- the fetch never connects ----------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on 127.0.0.1 that never accepts on its own: connections wait in its backlog."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        s.setblocking(False)
        yield s


def arrived(listener: socket.socket) -> bool:
    """Whether a connection waits in the backlog (the fetch has returned, so it would be there)."""
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def test_listener_sees_a_plain_loopback_fetch(listener):
    """Control: with the loopback flag on, a fetch of the listener's own address does arrive (it
    is accepted and closed at once, so the TLS handshake fails)."""
    port = listener.getsockname()[1]
    peers: list[Any] = []

    def accept_one() -> None:
        listener.settimeout(5)
        conn, peer = listener.accept()
        peers.append(peer)
        conn.close()

    thread = threading.Thread(target=accept_one)
    thread.start()
    with pytest.raises(JwksFetchError) as caught:
        asyncio.run(fetch_jwks(f"https://127.0.0.1:{port}/jwks.json", allow_http_loopback=True, timeout=2.0))
    thread.join(5)
    assert [p[0] for p in peers] == ["127.0.0.1"]
    assert caught.value.reason.startswith("http_error:")


NEVER_CONNECT = [
    ("6to4", "https://[2002:7f00:1::]:{port}/jwks.json", "jwks_uri_private"),
    ("6to4-http", "http://[2002:7f00:1::]:{port}/jwks.json", "jwks_uri_not_https"),
    ("nat64", "https://[64:ff9b::7f00:1]:{port}/jwks.json", "jwks_uri_private"),
    ("ipv4-compatible", "https://[::127.0.0.1]:{port}/jwks.json", "jwks_uri_private"),
    ("teredo", f"https://[2001:0:{TEREDO_SERVER}:8000:63bf:{TEREDO_CLIENT_LOOPBACK}]:{{port}}/jwks.json", "jwks_uri_private"),
    ("decimal", "https://2130706433:{port}/jwks.json", "jwks_uri_numeric_host"),
    ("short", "https://127.1:{port}/jwks.json", "jwks_uri_numeric_host"),
]


@pytest.mark.parametrize(("url", "reason"), [n[1:] for n in NEVER_CONNECT], ids=[n[0] for n in NEVER_CONNECT])
def test_fetch_of_an_embedded_loopback_never_connects(listener, url, reason):
    """Even with the loopback flag on, an address that only carries 127.0.0.1 inside it is refused
    before any connection: nothing reaches the listener."""
    port = listener.getsockname()[1]
    with pytest.raises(JwksFetchError) as caught:
        asyncio.run(fetch_jwks(url.format(port=port), allow_http_loopback=True, timeout=1.0))
    assert not arrived(listener)
    assert caught.value.reason == reason

"""The outbound client and its SSRF guard (`core.outbound`).

The guard's decisions about private, link-local, metadata and other special addresses are tested
without connecting anywhere (a fake resolver stands in for DNS); requests that do connect go only
to a local server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.outbound import (
    AddressGuard,
    Outbound,
    OutboundConnectError,
    OutboundError,
    OutboundHTTPError,
    OutboundRefused,
    OutboundTimeout,
    OutboundTooLarge,
    OutboundUnsupportedType,
    guarded_client,
    refusal_reason,
)
from core.settings import OutboundSettings
from tests.fake_web import FakeWeb, Reply, as_json, html, redirect


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- the guard's decisions (no connection is ever made) -------------------------------------------


@pytest.mark.parametrize("address,reason", [
    ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"), ("fd12:3456::1", "private"),
    ("169.254.169.254", "metadata"), ("169.254.170.2", "metadata"), ("fd00:ec2::254", "metadata"),
    ("100.100.100.200", "metadata"), ("168.63.129.16", "metadata"), ("192.0.0.192", "metadata"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("100.64.0.1", "non-public"), ("198.18.0.1", "private"), ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("64:ff9b::a00:1", "private"),
    ("2002:a9fe:a9fe::1", "metadata"), ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private"),
])
def test_special_addresses_are_refused_with_a_reason(address: str, reason: str) -> None:
    found = refusal_reason(ipaddress.ip_address(address))
    assert found is not None and reason in found
    with pytest.raises(OutboundRefused, match=reason):
        AddressGuard().check_address(address, ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None
    AddressGuard().check_address("example.com", ipaddress.ip_address(address))


def fake_dns(table: dict[str, list[str]], calls: list[str] | None = None) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise OSError("no such host")
        return table[host]
    return resolve


def test_names_are_judged_by_every_address_they_resolve_to() -> None:
    dns = fake_dns({"inside.example": ["10.0.0.7"], "both.example": ["93.184.216.34", "169.254.169.254"],
                    "public.example": ["93.184.216.34"], "v6.example": ["fd00:ec2::254"]})
    guard = AddressGuard(resolver=dns)
    with pytest.raises(OutboundRefused, match="inside.example resolves to 10.0.0.7, which is a private address"):
        run(guard.resolve("inside.example", 80))
    with pytest.raises(OutboundRefused, match="metadata"):
        run(guard.resolve("both.example", 80))
    with pytest.raises(OutboundRefused, match="metadata"):
        run(guard.resolve("v6.example", 443))
    with pytest.raises(OutboundRefused, match="metadata service"):
        run(guard.resolve("metadata.google.internal", 80))
    with pytest.raises(OutboundError, match="Could not resolve"):
        run(guard.resolve("nowhere.example", 80))
    assert run(guard.resolve("public.example", 80)) == ["93.184.216.34"]


def test_the_operator_lists_allow_and_deny_hosts_and_networks() -> None:
    dns = fake_dns({"searx.internal": ["10.1.2.3"], "api.corp.example": ["10.9.9.9"], "evil.example": ["8.8.8.8"],
                    "lab.example": ["192.168.7.7"]})
    guard = AddressGuard.from_lists(["searx.internal", "*.corp.example", "192.168.7.0/24", "10.5.0.0/16"],
                                    ["evil.example", "8.8.4.0/24", "192.168.7.7/32"], resolver=dns)
    assert run(guard.resolve("searx.internal", 80)) == ["10.1.2.3"]
    assert run(guard.resolve("api.corp.example", 80)) == ["10.9.9.9"]
    assert run(guard.resolve("10.5.1.1", 80)) == ["10.5.1.1"]
    with pytest.raises(OutboundRefused, match="deny list"):
        run(guard.resolve("evil.example", 80))
    with pytest.raises(OutboundRefused, match="deny list"):
        run(guard.resolve("8.8.4.4", 80))
    with pytest.raises(OutboundRefused, match="deny list"):  # deny wins over an allowed network
        run(guard.resolve("lab.example", 80))
    with pytest.raises(OutboundRefused, match="private"):
        run(guard.resolve("10.6.0.1", 80))


def test_a_deny_all_refuses_every_host_before_resolving_it() -> None:
    async def no_dns(host: str, port: int) -> list[str]:
        raise AssertionError(f"resolved {host} although every host is denied")

    guard = AddressGuard.from_lists(["searx.internal"], ["*"], resolver=no_dns)
    for host in ("example.com", "searx.internal", "93.184.216.34", "[2606:4700::1]"):
        with pytest.raises(OutboundRefused, match="deny list"):
            run(guard.resolve(host, 443))


# --- requests to a local server -------------------------------------------------------------------


@pytest.fixture
def web() -> Iterator[FakeWeb]:
    with FakeWeb() as server:
        yield server


def client(**settings: Any) -> Outbound:
    return Outbound(OutboundSettings(**{"retry_base_delay_s": 0.01, **settings}))


async def get(outbound: Outbound, url: str, **kwargs: Any) -> Any:
    async with outbound:
        return await outbound.request("GET", url, **kwargs)


def test_loopback_is_refused_in_every_spelling_before_connecting(web: FakeWeb) -> None:
    web.routes["/page"] = lambda _: html("<p>hi</p>")
    for url in (web.url("/page"), web.url("/page", "[::1]"), web.url("/page", "localhost"),
                web.url("/page", "127.1"), web.url("/page", "0.0.0.0")):
        with pytest.raises(OutboundRefused):
            run(get(client(), url))
    assert web.seen == []


def test_an_allowed_local_page_is_fetched_and_redirects_are_checked_at_every_hop(web: FakeWeb) -> None:
    web.routes["/page"] = lambda _: html("<p>hi</p>")
    web.routes["/to-page"] = lambda _: redirect("/page")
    web.routes["/to-other-loopback"] = lambda _: redirect(f"http://127.0.0.2:{web.port}/page")
    web.routes["/to-v6-loopback"] = lambda _: redirect(f"http://[::1]:{web.port}/page", 307)
    web.routes["/to-metadata"] = lambda _: redirect("http://169.254.169.254/latest/meta-data/", 301)
    web.routes["/to-file"] = lambda _: redirect("file:///etc/passwd")
    web.routes["/loop"] = lambda _: redirect("/loop")
    allowed = {"allow": ["127.0.0.1/32"]}
    page = run(get(client(**allowed), web.url("/to-page")))
    assert page.status == 200 and page.content == b"<p>hi</p>" and page.url.endswith("/page")
    for path, match in [("/to-other-loopback", "127.0.0.2 is a loopback"), ("/to-v6-loopback", "::1 is a loopback"),
                        ("/to-metadata", "metadata"), ("/to-file", "only http and https")]:
        with pytest.raises(OutboundRefused, match=match):
            run(get(client(**allowed), web.url(path)))
    with pytest.raises(OutboundError, match="redirected more than 2 times"):
        run(get(client(max_redirects=2, **allowed), web.url("/loop")))


def test_the_checked_address_is_the_one_connected_to(web: FakeWeb) -> None:
    """One lookup per connection, made by the guard; the request still names the host (Host
    header, and SNI for https)."""
    web.routes["/page"] = lambda _: html("ok")
    calls: list[str] = []
    outbound = Outbound(OutboundSettings(allow=["127.0.0.1/32"]), resolver=fake_dns({"pinned.test": ["127.0.0.1"]},
                                                                                      calls))
    assert run(get(outbound, f"http://pinned.test:{web.port}/page")).content == b"ok"
    assert calls == ["pinned.test"]
    assert web.seen[-1].headers["Host"] == f"pinned.test:{web.port}"
    # A name that resolves to an allowed and a refused address is refused as a whole, unconnected.
    mixed = Outbound(OutboundSettings(allow=["127.0.0.1/32"]),
                     resolver=fake_dns({"rebind.test": ["127.0.0.1", "10.0.0.1"]}))
    with pytest.raises(OutboundRefused, match="10.0.0.1"):
        run(get(mixed, f"http://rebind.test:{web.port}/page"))
    assert len(web.seen) == 1


def test_credentials_do_not_follow_a_redirect_to_another_origin(web: FakeWeb) -> None:
    web.routes["/same"] = lambda _: redirect("/echo")
    web.routes["/away"] = lambda _: redirect(web.url("/echo", "localhost"))
    web.routes["/echo"] = lambda _: html("ok")
    allowed = {"allow": ["127.0.0.1/32", "localhost"]}
    run(get(client(**allowed), web.url("/same"), headers={"Authorization": "Bearer t0ken"}))
    assert web.seen[-1].headers.get("Authorization") == "Bearer t0ken"
    run(get(client(**allowed), web.url("/away"), headers={"Authorization": "Bearer t0ken"}))
    assert web.seen[-1].path == "/echo" and "Authorization" not in web.seen[-1].headers


def test_size_type_and_time_are_bounded(web: FakeWeb) -> None:
    big = b"x" * 50_000
    web.routes["/declared"] = lambda _: Reply(200, big, {"Content-Type": "text/plain"})
    web.routes["/streamed"] = lambda _: Reply(200, big, {"Content-Type": "text/plain"}, chunked=True)
    web.routes["/binary"] = lambda _: Reply(200, b"\x00\x01", {"Content-Type": "application/octet-stream"})
    web.routes["/slow"] = lambda _: Reply(200, b"late", {"Content-Type": "text/plain"}, delay_s=1.5)
    allowed = {"allow": ["127.0.0.1"]}
    with pytest.raises(OutboundTooLarge, match="50000 bytes"):
        run(get(client(**allowed), web.url("/declared"), max_bytes=10_000))
    with pytest.raises(OutboundTooLarge, match="stopped reading"):
        run(get(client(**allowed), web.url("/streamed"), max_bytes=10_000))
    with pytest.raises(OutboundUnsupportedType, match="application/octet-stream"):
        run(get(client(**allowed), web.url("/binary"), content_types=["text/", "application/json"]))
    with pytest.raises(OutboundTimeout, match="did not answer"):
        run(get(client(**allowed), web.url("/slow"), timeout_s=0.3))


def test_429_and_5xx_are_retried_then_returned(web: FakeWeb) -> None:
    answers = iter([Reply(503, b"busy"), as_json({"error": "slow down"}, 429, **{"Retry-After": "0"}),
                    as_json({"ok": True})])
    web.routes["/flaky"] = lambda _: next(answers)
    web.routes["/down"] = lambda _: Reply(502, b"bad gateway")
    allowed = {"allow": ["127.0.0.1"]}
    response = run(get(client(**allowed), web.url("/flaky"), retries=2))
    assert response.json() == {"ok": True} and len(web.seen) == 3
    down = run(get(client(**allowed), web.url("/down"), retries=1))
    assert down.status == 502 and len(web.seen) == 5
    with pytest.raises(OutboundHTTPError, match="HTTP 502"):
        down.raise_for_status()
    # A refusal is never retried.
    with pytest.raises(OutboundRefused):
        run(get(client(), web.url("/flaky"), retries=3))
    assert len(web.seen) == 5


# --- TLS: the address is pinned, the name is still verified ----------------------------------------


def _tls_files(tmp: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for `pinned.test` signed by it: (CA, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pinned.test")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("pinned.test")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_https_connects_to_the_checked_address_and_verifies_the_url_host(web: FakeWeb, tmp_path: Path) -> None:
    ca, cert, key = _tls_files(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    names: list[str | None] = []
    server_context.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,misc]
    web.routes["/secure"] = lambda _: html("over tls")
    web.use_tls(server_context)
    client_context = ssl.create_default_context(cafile=str(ca))
    dns = fake_dns({"pinned.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    settings = OutboundSettings(allow=["127.0.0.1/32"])
    page = run(get(Outbound(settings, resolver=dns, ssl_context=client_context),
                   f"https://pinned.test:{web.port}/secure"))
    assert page.content == b"over tls" and names == ["pinned.test"]
    assert web.seen[-1].headers["Host"] == f"pinned.test:{web.port}"
    # The same address under another name: the certificate does not match, nothing is sent.
    with pytest.raises(OutboundError, match="certificate"):
        run(get(Outbound(settings, resolver=dns, ssl_context=client_context), f"https://other.test:{web.port}/secure"))
    # And a certificate nobody vouches for (the system's CAs do not know the test CA).
    with pytest.raises(OutboundError, match="certificate"):
        run(get(Outbound(settings, resolver=dns), f"https://pinned.test:{web.port}/secure"))
    assert len(web.seen) == 1


def test_a_header_http_cannot_carry_fails_without_quoting_it(web: FakeWeb) -> None:
    web.routes["/p"] = lambda _: html("x")
    for value in ("line\nbreak-SECRET", "caf\u00e9-SECRET", "nul\x00-SECRET"):
        with pytest.raises(OutboundError, match="not valid HTTP") as failure:
            run(get(client(allow=["127.0.0.1"]), web.url("/p"), headers={"X-Key": value}))
        assert "SECRET" not in str(failure.value)
    assert web.seen == []


def test_a_plain_guarded_client_for_libraries_checks_every_connection(web: FakeWeb) -> None:
    web.routes["/p"] = lambda _: html("x")
    web.routes["/hop"] = lambda _: redirect(f"http://127.0.0.2:{web.port}/p")

    async def go() -> tuple[int, str]:
        async with guarded_client(OutboundSettings(allow=["127.0.0.1/32"]), follow_redirects=True) as http:
            ok = await http.get(web.url("/p"))
            with pytest.raises(OutboundRefused, match="127.0.0.2 is a loopback"):
                await http.get(web.url("/hop"))
        async with guarded_client(OutboundSettings()) as http:
            with pytest.raises(OutboundRefused):
                await http.get(web.url("/p"))
        return ok.status_code, ok.text

    assert run(go()) == (200, "x")
    assert [s.path for s in web.seen] == ["/p", "/hop"]


def test_failed_connections_are_retried_and_refusals_are_not() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    calls: list[str] = []
    dns = fake_dns({"down.test": ["127.0.0.1"], "inside.test": ["10.0.0.1"]}, calls)
    settings = OutboundSettings(allow=["127.0.0.1/32"], retry_base_delay_s=0.01)
    with pytest.raises(OutboundConnectError, match="Could not connect"):
        run(get(Outbound(settings, resolver=dns), f"http://down.test:{closed}/", retries=2))
    assert calls == ["down.test"] * 3
    with pytest.raises(OutboundRefused):
        run(get(Outbound(settings, resolver=dns), "http://inside.test/", retries=2))
    assert calls[3:] == ["inside.test"]

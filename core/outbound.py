"""Outbound HTTP: the one way skills, providers, webhooks and MCP calls reach other servers.

The SSRF guard (`AddressGuard`) resolves a host once and refuses loopback, private, link-local,
multicast, unspecified, reserved and cloud metadata addresses (also when an IPv6 address embeds
one: IPv4-mapped, NAT64, 6to4, Teredo), unless the operator allowed them
(`AGENTOS_OUTBOUND__ALLOW`; `__DENY` wins over everything). The connection then goes to exactly
the address that was checked: the check runs inside the transport's own connect step, so no
second DNS lookup can hand the socket another address (DNS rebinding), and TLS still verifies
the URL's host name (SNI and Host come from the URL, not the address). Every redirect hop is a
new request through the same check; credentials given by the caller are dropped when a
redirect leaves the origin. Timeouts and the response size are bounded, and a response whose
content type the caller did not ask for is refused before its body is read.

Every failure is an `OutboundError` whose text is a sentence a model or a user can read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import ssl
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import httpcore
import httpcore2
import httpx
import httpx2

from core.settings import OutboundSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

# Cloud instance metadata services. Most are link-local or private anyway; these are named so
# that the refusal says what they are, and the public-looking ones are refused at all.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
    "169.254.170.2",  # AWS ECS task metadata
    "fd00:ec2::254",  # AWS IMDS over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",  # Azure wireserver (a public address)
    "192.0.0.192",  # Oracle Cloud
))
METADATA_HOSTS: frozenset[str] = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal",
    "metadata.azure.internal", "metadata.platformequinix.com",
})
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
RETRY_STATUSES: frozenset[int] = frozenset({429, 500, 502, 503, 504})
_ALLOW_HINT = "an operator can allow it with AGENTOS_OUTBOUND__ALLOW"


class OutboundError(Exception):
    """An outbound request failed; str(e) says what happened in a readable sentence."""


class OutboundRefused(OutboundError):
    """The guard refused the address (or the URL) before any connection was made."""


class OutboundTimeout(OutboundError):
    pass


class OutboundConnectError(OutboundError):
    """No connection could be made, or it broke before the answer was read (worth a retry)."""


class OutboundTooLarge(OutboundError):
    pass


class OutboundUnsupportedType(OutboundError):
    pass


class OutboundHTTPError(OutboundError):
    """The server answered with an error status (`raise_for_status`)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# --- the address guard ----------------------------------------------------------------------------


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo client), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def refusal_reason(ip: IPAddress) -> str | None:
    """Why the guard refuses `ip` by default (e.g. "a loopback address"), or None for a public one."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            inner = refusal_reason(embedded)
            if inner is not None:
                return f"an IPv6 address embedding {embedded}, {inner}"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "a non-public address"
    return None


def _host_key(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _matches(host: str, patterns: frozenset[str]) -> bool:
    """Exact names, `*.example.com` for its subdomains, or `*` for every host (a deny-all, for an
    air-gapped deployment or a fuzzing run that must not reach out)."""
    if host in patterns or "*" in patterns:
        return True
    return any(p.startswith("*.") and host.endswith(p[1:]) for p in patterns)


def _split(entries: Sequence[str]) -> tuple[frozenset[str], tuple[IPNetwork, ...]]:
    hosts: set[str] = set()
    nets: list[IPNetwork] = []
    for entry in entries:
        text = entry.strip()
        if not text:
            continue
        try:
            nets.append(ipaddress.ip_network(text.strip("[]"), strict=False))
        except ValueError:
            hosts.add(_host_key(text))
    return frozenset(hosts), tuple(nets)


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (in its order of preference)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        if address not in seen:
            seen.append(address)
    return seen


@dataclass(frozen=True)
class AddressGuard:
    """Decides which addresses outbound requests may connect to; never connects itself."""

    allow_hosts: frozenset[str] = frozenset()
    allow_nets: tuple[IPNetwork, ...] = ()
    deny_hosts: frozenset[str] = frozenset()
    deny_nets: tuple[IPNetwork, ...] = ()
    resolver: Resolver = field(default=system_resolver, compare=False)

    @classmethod
    def from_lists(cls, allow: Sequence[str] = (), deny: Sequence[str] = (), *,
                   resolver: Resolver = system_resolver) -> AddressGuard:
        allow_hosts, allow_nets = _split(allow)
        deny_hosts, deny_nets = _split(deny)
        return cls(allow_hosts, allow_nets, deny_hosts, deny_nets, resolver)

    @classmethod
    def from_settings(cls, settings: OutboundSettings, *, allow: Sequence[str] = (),
                      resolver: Resolver = system_resolver) -> AddressGuard:
        """The operator's lists, plus `allow` (e.g. an org's own allowlist set by its admin)."""
        return cls.from_lists([*settings.allow, *allow], settings.deny, resolver=resolver)

    def check_address(self, host: str, ip: IPAddress) -> None:
        """OutboundRefused unless `host` may be reached at `ip`."""
        if any(ip in net for net in self.deny_nets):
            raise OutboundRefused(f"{host} resolves to {ip}, which the operator's deny list blocks.")
        if _matches(_host_key(host), self.allow_hosts) or any(ip in net for net in self.allow_nets):
            return
        reason = refusal_reason(ip)
        if reason is not None:
            what = f"{ip} is" if _host_key(host) == str(ip) else f"{host} resolves to {ip}, which is"
            raise OutboundRefused(f"{what} {reason}; requests to internal or special addresses are not allowed "
                                  f"({_ALLOW_HINT}).")

    async def resolve(self, host: str, port: int) -> list[str]:
        """The host's addresses, every one of them checked; OutboundRefused if any is refused (a
        name that also points inside is not half-trusted), OutboundError if it does not resolve."""
        key = _host_key(host)
        if not key:
            raise OutboundRefused("The URL has no host.")
        if _matches(key, self.deny_hosts):
            raise OutboundRefused(f"{key} is on the operator's deny list.")
        if key in METADATA_HOSTS and not _matches(key, self.allow_hosts):
            raise OutboundRefused(f"{key} is a cloud metadata service; requests to it are not allowed.")
        try:
            literal: IPAddress | None = ipaddress.ip_address(key)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                addresses = await self.resolver(key, port)
            except (OSError, UnicodeError) as exc:
                raise OutboundError(f"Could not resolve the host {key!r} ({type(exc).__name__}).") from None
            if not addresses:
                raise OutboundError(f"The host {key!r} has no address.")
        for address in addresses:
            self.check_address(key, ipaddress.ip_address(address))
        return addresses


# --- the pinned transport -------------------------------------------------------------------------


_Stream = TypeVar("_Stream")


async def _connect_first(guard: AddressGuard, host: str, port: int,
                         connect: Callable[[str, int], Awaitable[_Stream]],
                         retryable: tuple[type[Exception], ...]) -> _Stream:
    """Resolve `host` through the guard (every address checked) and connect to the first address
    that answers: what both guarded backends (httpcore's and httpcore2's) do in `connect_tcp`."""
    failure: Exception | None = None
    for address in await guard.resolve(host, port):
        try:
            return await connect(address, port)
        except retryable as exc:
            failure = exc
    assert failure is not None
    raise failure


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the guard in its connect step: the address checked is the
    address connected to. TLS (started later by httpcore) uses the URL's host for SNI."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await _connect_first(self._guard, host, port, partial(
            self._inner.connect_tcp, timeout=timeout, local_address=local_address, socket_options=socket_options),
            (httpcore.ConnectError, httpcore.ConnectTimeout))

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise OutboundRefused("Unix sockets are not reachable from outbound requests.")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedBackend2(httpcore2.AsyncNetworkBackend):
    """`_GuardedBackend` for httpcore2, the HTTP core under the openai and anthropic SDKs' httpx2."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        return await _connect_first(self._guard, host, port, partial(
            self._inner.connect_tcp, timeout=timeout, local_address=local_address, socket_options=socket_options),
            (httpcore2.ConnectError, httpcore2.ConnectTimeout))

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise OutboundRefused("Unix sockets are not reachable from outbound requests.")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _SdkTransport(httpx2.AsyncHTTPTransport):
    """httpx2's transport over a pool whose connections go through `_GuardedBackend2` (no proxy,
    no environment, as for `_PinnedTransport`)."""

    def __init__(self, guard: AddressGuard, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context, trust_env=False)
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=ssl_context, network_backend=_GuardedBackend2(guard), max_connections=20,
            max_keepalive_connections=5, keepalive_expiry=5.0,
        )


def sdk_client(settings: OutboundSettings, *, allow: Sequence[str] = (), resolver: Resolver = system_resolver,
               timeout_s: float | None = None) -> httpx2.AsyncClient:
    """An `httpx2.AsyncClient` (what the openai and anthropic SDKs take as `http_client`) whose every
    connection passes the guard: model providers an org configures reach only what `allow` and the
    operator's lists admit, checked at connect time like every other outbound request."""
    guard = AddressGuard.from_settings(settings, allow=allow, resolver=resolver)
    timeout = httpx2.Timeout(timeout_s or settings.timeout_s, connect=settings.connect_timeout_s)
    return httpx2.AsyncClient(transport=_SdkTransport(guard, httpx2.create_ssl_context()), trust_env=False,
                              timeout=timeout, follow_redirects=False)


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None or isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _mapped(exc: Exception, url: str) -> OutboundError:
    if isinstance(exc, OutboundError):
        return exc
    tls = _tls_failure(exc)
    if tls is not None:
        reason = getattr(tls, "verify_message", None) or getattr(tls, "reason", None) or type(tls).__name__
        return OutboundError(f"The TLS certificate of {url} could not be verified ({reason}); nothing was sent.")
    if isinstance(exc, (httpcore.TimeoutException, httpx.TimeoutException, TimeoutError)):
        return OutboundTimeout(f"{url} did not answer in time.")
    # Never str(exc) here: a library's message may quote a header, and headers carry credentials.
    if isinstance(exc, (httpx.LocalProtocolError, UnicodeError)):
        return OutboundError(f"The request to {url} could not be sent: a header or the URL is not valid HTTP "
                             f"({type(exc).__name__}).")
    if isinstance(exc, (httpcore.ConnectError, httpx.ConnectError)):
        return OutboundConnectError(f"Could not connect to {url} (connection refused or unreachable).")
    if isinstance(exc, (httpx.TransportError, OSError)):
        return OutboundConnectError(f"The connection to {url} broke ({type(exc).__name__}).")
    return OutboundError(f"The request to {url} failed ({type(exc).__name__}).")


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes], closer: Callable[[], Awaitable[None]] | None) -> None:
        self._stream = stream
        self._closer = closer

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except httpcore.TimeoutException as exc:
            raise httpx.ReadTimeout(str(exc)) from exc
        except httpcore.NetworkError as exc:
            raise httpx.ReadError(str(exc)) from exc

    async def aclose(self) -> None:
        if self._closer is not None:
            await self._closer()


class _PinnedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore pool whose connections go through `_GuardedBackend`
    (no proxies, no environment: a proxy would connect to addresses the guard never saw)."""

    def __init__(self, guard: AddressGuard, ssl_context: ssl.SSLContext) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, network_backend=_GuardedBackend(guard), max_connections=20,
            max_keepalive_connections=5, keepalive_expiry=5.0,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port,
                             target=request.url.raw_path),
            headers=request.headers.raw, content=request.stream, extensions=request.extensions,
        )
        try:
            response = await self._pool.handle_async_request(core_request)
        except httpcore.TimeoutException as exc:
            raise httpx.TimeoutException(str(exc), request=request) from exc
        except httpcore.ConnectError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except httpcore.NetworkError as exc:
            raise httpx.NetworkError(str(exc), request=request) from exc
        except httpcore.LocalProtocolError as exc:  # e.g. a header value with a line break
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        except httpcore.ProtocolError as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        stream = response.stream
        assert isinstance(stream, typing.AsyncIterable)
        closer = getattr(stream, "aclose", None)
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_Body(stream, closer), extensions=response.extensions)

    async def aclose(self) -> None:
        await self._pool.aclose()


# --- the client -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboundResponse:
    """A finished response, its body read in full (within the size limit)."""

    url: str
    status: int
    headers: httpx.Headers
    content: bytes

    @property
    def content_type(self) -> str:
        return str(self.headers.get("content-type", "")).split(";", 1)[0].strip().lower()

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        charset = str(httpx.Response(self.status, headers=self.headers).charset_encoding or "utf-8")
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return httpx.Response(self.status, headers=self.headers, content=self.content).json()

    def raise_for_status(self, what: str = "The server") -> OutboundResponse:
        if not self.ok:
            raise OutboundHTTPError(f"{what} answered HTTP {self.status} for {self.url}.", self.status)
        return self


def _guarded(guard: AddressGuard, settings: OutboundSettings, ssl_context: ssl.SSLContext | None,
             **client_options: Any) -> httpx.AsyncClient:
    # The default context verifies certificates against certifi's CAs, host names included.
    transport = _PinnedTransport(guard, ssl_context or httpx.create_ssl_context())
    options: dict[str, Any] = {"follow_redirects": False, "headers": {"User-Agent": settings.user_agent},
                               **client_options}
    return httpx.AsyncClient(transport=transport, trust_env=False, **options)


def guarded_client(settings: OutboundSettings, *, allow: Sequence[str] = (), resolver: Resolver = system_resolver,
                   ssl_context: ssl.SSLContext | None = None, **client_options: Any) -> httpx.AsyncClient:
    """A plain `httpx.AsyncClient` whose every connection passes the guard, for libraries that
    take one (the MCP client's `httpx_client_factory`). `client_options` go to the client
    (`headers`, `timeout`, `auth`; `follow_redirects` is off unless given, and each hop is checked
    anyway). Unlike `Outbound`, it does not bound response sizes: the library reads what it reads."""
    client_options.setdefault("timeout", httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s))
    guard = AddressGuard.from_settings(settings, allow=allow, resolver=resolver)
    return _guarded(guard, settings, ssl_context, **client_options)


def _type_allowed(content_type: str, allowed: Sequence[str]) -> bool:
    """`allowed` holds full types (`application/json`) or prefixes ending in `/` (`text/`)."""
    return any(content_type.startswith(a) if a.endswith("/") else content_type == a for a in allowed)


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


class Outbound:
    """An HTTP client for one task (a skill call, a provider request): `async with Outbound(...)`.

    `allow` adds entries to the operator's allowlist for this client only (an org's own
    allowlist for private addresses, set by its admin). `resolver` replaces DNS (tests);
    `ssl_context` the certificate authorities trusted (a private CA)."""

    def __init__(self, settings: OutboundSettings, *, allow: Sequence[str] = (),
                 resolver: Resolver = system_resolver, ssl_context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        self.guard = AddressGuard.from_settings(settings, allow=allow, resolver=resolver)
        self._client = _guarded(self.guard, settings, ssl_context)

    async def __aenter__(self) -> Outbound:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
        params: Mapping[str, str | int] | None = None, json: Any = None, content: bytes | None = None,
        timeout_s: float | None = None, max_bytes: int | None = None, content_types: Sequence[str] | None = None,
        retries: int = 0, follow_redirects: bool = True,
    ) -> OutboundResponse:
        """Send a request and read its response within the limits.

        Retries (`retries` more attempts, exponential backoff with jitter, honouring a short
        Retry-After) on 429/5xx answers, timeouts and failed or broken connections; never on a
        refusal or any other error.
        After the last attempt a 429/5xx answer is returned as it is (see `raise_for_status`).
        `content_types` restricts successful responses' types (full types or `text/`-style
        prefixes); other responses are refused unread."""
        attempt = 0
        while True:
            try:
                response = await self._attempt(method, url, headers or {}, params, json, content,
                                               timeout_s or self.settings.timeout_s,
                                               max_bytes or self.settings.max_response_bytes, content_types,
                                               follow_redirects)
            except (OutboundTimeout, OutboundConnectError):
                if attempt >= retries:
                    raise
                delay = None
            else:
                if response.status not in RETRY_STATUSES or attempt >= retries:
                    return response
                delay = _retry_after(response.headers.get("retry-after"))
            attempt += 1
            base = self.settings.retry_base_delay_s * (2 ** (attempt - 1))
            await asyncio.sleep(min(delay if delay is not None else base * (0.5 + random.random()), 10.0))

    async def _attempt(
        self, method: str, url: str, headers: Mapping[str, str], params: Mapping[str, str | int] | None, json: Any,
        content: bytes | None, timeout_s: float, max_bytes: int, content_types: Sequence[str] | None,
        follow_redirects: bool,
    ) -> OutboundResponse:
        shown = url
        try:
            async with asyncio.timeout(timeout_s):
                request = self._build(method, url, headers, params, json, content, timeout_s)
                first = request.url
                for _ in range(self.settings.max_redirects + 1):
                    shown = str(request.url)
                    response = await self._client.send(request, stream=True)
                    try:
                        location = response.headers.get("location")
                        if follow_redirects and response.is_redirect and location:
                            request = self._redirected(request, response, location, first, headers, timeout_s)
                            continue
                        return await self._read(response, shown, max_bytes, content_types)
                    finally:
                        await response.aclose()
                raise OutboundError(f"{url} redirected more than {self.settings.max_redirects} times.")
        except OutboundError:
            raise
        except TimeoutError:
            raise OutboundTimeout(f"{shown} did not answer within {timeout_s:g} s.") from None
        except (httpx.HTTPError, httpcore.ConnectError, OSError, UnicodeError) as exc:
            raise _mapped(exc, shown) from None

    def _build(self, method: str, url: str, headers: Mapping[str, str], params: Mapping[str, str | int] | None,
               json: Any, content: bytes | None, timeout_s: float) -> httpx.Request:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError):
            raise OutboundRefused(f"{url!r} is not a valid URL.") from None
        if parsed.scheme not in ("http", "https"):
            raise OutboundRefused(f"{url!r}: only http and https URLs can be fetched.")
        if not parsed.host:
            raise OutboundRefused(f"{url!r} has no host.")
        timeout = httpx.Timeout(timeout_s, connect=min(self.settings.connect_timeout_s, timeout_s))
        return self._client.build_request(method, parsed, headers=headers, params=params, json=json, content=content,
                                          timeout=timeout)

    def _redirected(self, request: httpx.Request, response: httpx.Response, location: str, first: httpx.URL,
                    headers: Mapping[str, str], timeout_s: float) -> httpx.Request:
        target = request.url.join(location)
        # 303, and 301/302 after a POST, become GET without a body (as browsers do).
        method = request.method
        if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
            method = "GET" if method != "HEAD" else method
        keep_body = method == request.method and response.status_code in (307, 308)
        # The caller's headers (API keys, tokens) go only to the origin they were meant for.
        kept = headers if _same_origin(target, first) else {}
        return self._build(method, str(target), kept, None, None, request.content if keep_body else None,
                           timeout_s)

    async def _read(self, response: httpx.Response, url: str, max_bytes: int,
                    content_types: Sequence[str] | None) -> OutboundResponse:
        content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_types is not None and response.is_success and not _type_allowed(content_type, content_types):
            raise OutboundUnsupportedType(f"{url} returned content of type {content_type or 'unknown'!r}; only "
                                          f"{', '.join(content_types)} can be read.")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise OutboundTooLarge(f"{url} is {int(declared)} bytes, over the limit of {max_bytes} bytes.")
        body = bytearray()
        # Decoded bytes are counted, so a small compressed body cannot expand past the limit.
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise OutboundTooLarge(f"{url} sent more than the limit of {max_bytes} bytes; stopped reading.")
        return OutboundResponse(str(response.url), response.status_code, response.headers, bytes(body))


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None

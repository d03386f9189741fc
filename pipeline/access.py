"""Who may do what (SPEC §8): the Host check, Origin checks, read and write tokens, sessions.

:class:`Access` is an ASGI middleware in front of everything: ``web`` wraps the front layer
with it, and ``app`` wraps Quart with it too (for Quart's test client; a request is checked
once). Every request, on every route (the direct hot paths, Quart's routes, routes added
later), passes these checks in this order before anything else happens:

1. **Host** (DNS rebinding): exactly one well-formed ``Host`` that ``ALLOWED_HOSTS`` allows,
   else ``400``/``421``. By default, when listening on a loopback address, only ``localhost``,
   ``127.0.0.1``, ``[::1]`` (and ``HOST`` itself), any port; any host otherwise.
2. **One Authorization, one Origin**: two of either is ``400``, never "the last one wins".
3. **Origin** (other sites using a visitor's browser): every request except loading an open
   route (the page, its static files, ``/healthz``, ``/openapi.json``) is ``403`` when its
   ``Origin`` is neither the page's own (same host and port as ``Host``) nor in
   ``ALLOWED_ORIGINS``; ``Origin: null`` is refused. Writes and streams that a browser marks
   ``Sec-Fetch-Site: cross-site`` without an ``Origin`` are refused too. Requests with
   neither (curl, servers) pass.
4. **Tokens**: writes (any method but GET, HEAD, OPTIONS) need a bearer token from
   ``INGEST_TOKEN`` when it is set; every other request except the open routes and
   ``/session`` needs one from ``READ_TOKEN``, or a session cookie, when that is set (``401``:
   for a stream, before the upgrade and before any event). Deny by default: a route nobody
   listed here is private.

It also serves ``/session``, the page's sign-in: ``POST`` a read token as JSON to get a cookie
(``HttpOnly``, ``SameSite=Strict``, ``Secure`` over HTTPS) worth 12 hours. The cookie is
stateless, ``v1.<expiry>.<nonce>.<MAC>``, the MAC keyed by the read token it was issued for, so
every web process accepts it, across restarts, until it expires or its token leaves
``READ_TOKEN``. Tokens are compared in constant time, as SHA-256 digests against every
configured token; they are never taken from a URL and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from .asgi import ASGIApp, Receive, Scope, Send
from .config import Settings
from .problems import Problem, problem_document

SESSION_PATH = "/session"
SESSION_COOKIE = "pipeline_session"
SESSION_MAX_AGE_S = 12 * 3600
# Web processes' clocks may differ a little; a cookie from the future by more is forged or stale.
_CLOCK_SKEW_S = 300
_SESSION_BODY_LIMIT = 4096
_SESSION_BODY_TIMEOUT_S = 10.0
_MAX_AUTHORIZATION_CHARS = 4096
_MAX_COOKIE_CHARS = 256
_SESSION_KEY_LABEL = b"pipeline session v1"
# Anyone may load the page (it then asks to sign in), its files, and the health check.
_OPEN_PATHS = frozenset({"/", "/healthz", "/favicon.ico", "/openapi.json"})
_OPEN_PREFIX = "/static/"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_STREAM_PATHS = frozenset({"/events"})  # and every WebSocket
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
# A Host header (RFC 9110 §7.2): a name or address, then an optional port.
_HOST = re.compile(
    r"(?P<name>[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?", re.IGNORECASE
)
_KNOWN_HOSTS = 1024
_CHECKED = "pipeline.access"  # set in the scope once a request passed (the two wrappings)
_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="pipeline"'}


class Tokens:
    """Bearer tokens, matched in constant time: the SHA-256 of what was given against every
    configured token's, with no early exit (neither length nor which one matched leaks)."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [hashlib.sha256(token.encode()).digest() for token in tokens]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def index(self, given: str | None) -> int | None:
        """Which configured token ``given`` is, or None."""
        if given is None:
            return None
        digest = hashlib.sha256(given.encode()).digest()
        matches = [hmac.compare_digest(digest, known) for known in self._digests]
        return matches.index(True) if any(matches) else None


class Sessions:
    """Stateless session cookies, each signed with a key derived from one read token."""

    def __init__(self, read_tokens: Iterable[str]) -> None:
        self._keys = [_session_key(token) for token in read_tokens]

    def issue(self, token_index: int, now: float) -> tuple[str, int]:
        """A cookie value for the read token at ``token_index``, and when it expires."""
        expiry = int(now) + SESSION_MAX_AGE_S
        signed = f"v1.{expiry}.{secrets.token_urlsafe(12)}"
        return f"{signed}.{_mac(self._keys[token_index], signed).decode()}", expiry

    def expiry(self, values: Iterable[str], now: float) -> int | None:
        """When the first valid cookie among ``values`` expires; None if none is valid."""
        for value in values:
            version, _, rest = value.partition(".")
            expiry, _, rest = rest.partition(".")
            nonce, _, given = rest.partition(".")
            well_formed = version == "v1" and expiry.isascii() and expiry.isdigit() and nonce
            if not well_formed or len(value) > _MAX_COOKIE_CHARS:
                continue
            signed = f"v1.{expiry}.{nonce}".encode("latin-1")
            valid = False
            for key in self._keys:  # every key, no early exit
                valid |= hmac.compare_digest(_mac(key, signed), given.encode("latin-1"))
            if valid and now < int(expiry) <= now + SESSION_MAX_AGE_S + _CLOCK_SKEW_S:
                return int(expiry)
        return None


def _session_key(token: str) -> bytes:
    return hmac.new(token.encode(), _SESSION_KEY_LABEL, hashlib.sha256).digest()


def _mac(key: bytes, signed: str | bytes) -> bytes:
    data = signed.encode() if isinstance(signed, str) else signed
    return base64.urlsafe_b64encode(hmac.new(key, data, hashlib.sha256).digest()).rstrip(b"=")


_SEEN_HEADERS = frozenset(
    {
        b"host",
        b"origin",
        b"authorization",
        b"cookie",
        b"sec-fetch-site",
        b"x-forwarded-proto",
        b"content-type",
        b"content-length",
    }
)


@dataclass
class Seen:
    """The headers the checks look at, gathered in one pass (names are case-insensitive)."""

    hosts: list[str] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)
    cookies: list[str] = field(default_factory=list)  # values of this service's session cookie
    fetch_site: str | None = None
    forwarded_proto: str | None = None
    content_type: str | None = None
    content_length: str | None = None

    @classmethod
    def parse(cls, headers: Iterable[tuple[bytes, bytes]]) -> Seen:
        seen = cls()
        for raw_name, raw_value in headers:
            name = raw_name.lower()
            if name not in _SEEN_HEADERS:
                continue
            value = raw_value.decode("latin-1")
            if name == b"host":
                seen.hosts.append(value)
            elif name == b"origin":
                seen.origins.append(value)
            elif name == b"authorization":
                seen.authorizations.append(value)
            elif name == b"cookie":
                for pair in value.split(";"):
                    cookie, _, cookie_value = pair.strip().partition("=")
                    if cookie == SESSION_COOKIE:
                        seen.cookies.append(cookie_value.strip().strip('"'))
            elif name == b"sec-fetch-site":
                seen.fetch_site = value.strip().lower()
            elif name == b"x-forwarded-proto":
                seen.forwarded_proto = value.split(",")[0].strip().lower()
            elif name == b"content-type":
                seen.content_type = value.split(";")[0].strip().lower()
            elif name == b"content-length":
                seen.content_length = value.strip()
        return seen

    @property
    def bearer(self) -> str | None:
        """The token of ``Authorization: Bearer <token>`` (scheme in any case), or None."""
        if len(self.authorizations) != 1 or len(self.authorizations[0]) > _MAX_AUTHORIZATION_CHARS:
            return None
        scheme, _, token = self.authorizations[0].strip().partition(" ")
        token = token.strip(" \t")
        return token if scheme.lower() == "bearer" and token else None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (HOST: a name or address, IPv6 with or without brackets) is loopback."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    name = host.lower().rstrip(".")
    return f"[{name}]" if ":" in name and not name.startswith("[") else name


class Policy:
    """The access rules for one web process's settings."""

    def __init__(self, settings: Settings) -> None:
        self.read = Tokens(settings.read_tokens)
        self.write = Tokens(settings.ingest_tokens)
        self.sessions = Sessions(settings.read_tokens)
        hosts = settings.allowed_hosts
        if hosts is None:
            loopback = is_loopback(settings.host)
            hosts = frozenset({*_LOOPBACK_HOSTS, _host_name(settings.host)}) if loopback else frozenset({"*"})
        self.any_host = "*" in hosts
        self.hosts = frozenset(host for host in hosts if not host.startswith("."))
        self.host_suffixes = tuple(host for host in hosts if host.startswith("."))
        self.origins = settings.allowed_origins or frozenset()
        self._known_hosts: dict[str, tuple[str, int | None]] = {}  # Host header -> allowed host

    def host(self, seen: Seen) -> tuple[str, int | None]:
        """The request's host name and port; Problem unless there is one, allowed."""
        if len(seen.hosts) != 1:
            raise Problem(400, "A request needs exactly one Host header.")
        known = self._known_hosts.get(seen.hosts[0])
        if known is not None:
            return known
        name_and_port = self._judge_host(seen.hosts[0])
        if len(self._known_hosts) >= _KNOWN_HOSTS:
            self._known_hosts.clear()  # a bound: only allowed hosts are remembered, but any port
        self._known_hosts[seen.hosts[0]] = name_and_port
        return name_and_port

    def _judge_host(self, header: str) -> tuple[str, int | None]:
        match = _HOST.fullmatch(header.strip())
        port = int(match["port"]) if match and match["port"] else None
        if match is None or (port is not None and port > 65535):
            raise Problem(400, "The Host header is malformed.")
        name = _host_name(match["name"])
        allowed = (
            self.any_host
            or name in self.hosts
            or any(name.endswith(suffix) or name == suffix[1:] for suffix in self.host_suffixes)
        )
        if not allowed:
            raise Problem(421, f"This server does not answer for the host {name!r} (see ALLOWED_HOSTS).")
        return name, port

    def origin_allowed(self, origin: str, host: tuple[str, int | None]) -> bool:
        """Whether a page at ``origin`` may use this server: its own origin (the same host and
        port as the request's Host) or one listed in ALLOWED_ORIGINS."""
        if "*" in self.origins:
            return True
        scheme, separator, rest = origin.strip().lower().partition("://")
        match = _HOST.fullmatch(rest)
        if not separator or scheme not in ("http", "https") or match is None:
            return False  # "null", and anything malformed
        default_port = 443 if scheme == "https" else 80
        name, port = _host_name(match["name"]), int(match["port"] or default_port)
        if name == host[0] and port == (host[1] or default_port):
            return True
        return f"{scheme}://{rest}" in self.origins

    def check_origin(self, seen: Seen, host: tuple[str, int | None], *, write_or_stream: bool) -> None:
        if len(seen.origins) > 1:
            raise Problem(400, "A request may carry one Origin header.")
        if seen.origins:
            if not self.origin_allowed(seen.origins[0], host):
                origin = seen.origins[0]
                raise Problem(403, f"Origin {origin!r} may not use this server (see ALLOWED_ORIGINS).")
        elif write_or_stream and seen.fetch_site == "cross-site":
            raise Problem(403, "A page on another site may not write to this server or open its streams.")

    def may_read(self, seen: Seen, now: float) -> bool:
        if not self.read:
            return True
        return self.read.index(seen.bearer) is not None or self.sessions.expiry(seen.cookies, now) is not None

    def may_write(self, seen: Seen) -> bool:
        return not self.write or self.write.index(seen.bearer) is not None


class Access:
    """The ASGI middleware applying :class:`Policy` to every request (see the module's doc)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.policy = Policy(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or scope.get(_CHECKED):
            await self.app(scope, receive, send)
            return
        try:
            seen = Seen.parse(scope["headers"])
            if kind == "http" and scope["path"] == SESSION_PATH:
                await self._session(scope, receive, send, seen)
                return
            self._check(scope, seen)
        except Problem as problem:
            await _refuse(scope, receive, send, problem)
            return
        scope[_CHECKED] = True
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, seen: Seen) -> None:
        policy = self.policy
        host = policy.host(seen)
        if len(seen.authorizations) > 1:
            raise Problem(400, "A request may carry one Authorization header.")
        path = scope["path"]
        method = "GET" if scope["type"] == "websocket" else scope["method"]
        stream = scope["type"] == "websocket" or path in _STREAM_PATHS
        write = method not in _SAFE_METHODS
        if not write and (path in _OPEN_PATHS or path.startswith(_OPEN_PREFIX)):
            return
        policy.check_origin(seen, host, write_or_stream=write or stream)
        if write and not policy.may_write(seen):
            raise Problem(
                401,
                "Writes need the header 'Authorization: Bearer <token>' with the configured token.",
                headers=_WWW_AUTHENTICATE,
            )
        if not write and not policy.may_read(seen, time.time()):
            raise Problem(
                401,
                "Reads need the header 'Authorization: Bearer <token>' with a read token, or a "
                'session: POST /session with {"token": "<read token>"}.',
                headers=_WWW_AUTHENTICATE,
            )

    async def _session(self, scope: Scope, receive: Receive, send: Send, seen: Seen) -> None:
        """``/session``: GET says whether this browser is signed in, POST signs in, DELETE out."""
        policy, method = self.policy, scope["method"]
        host = policy.host(seen)
        if method not in ("GET", "HEAD", "POST", "DELETE"):
            raise Problem(
                405,
                "This URL does not accept that method. Allowed: GET, HEAD, POST, DELETE.",
                headers={"Allow": "GET, HEAD, POST, DELETE"},
            )
        now = time.time()
        if method in ("GET", "HEAD"):
            expiry = policy.sessions.expiry(seen.cookies, now) if policy.read else None
            state = {
                "signed_in": expiry is not None,
                "read_token_required": bool(policy.read),
                "ingest_token_required": bool(policy.write),
                "expires_at": None if expiry is None else _iso(expiry),
            }
            await _respond(scope, send, 200, orjson.dumps(state), "application/json")
            return
        policy.check_origin(seen, host, write_or_stream=True)
        secure = scope["scheme"] in ("https", "wss") or seen.forwarded_proto == "https"
        attributes = "; HttpOnly; SameSite=Strict; Path=/" + ("; Secure" if secure else "")
        if method == "DELETE":
            cookie = f"{SESSION_COOKIE}={attributes}; Max-Age=0"
            await _respond(scope, send, 204, b"", None, {"Set-Cookie": cookie})
            return
        token = await _session_token(receive, seen)
        if token is None:
            return  # the client went away
        if not policy.read:
            raise Problem(400, "READ_TOKEN is not set here: reads are open, there is nothing to sign in to.")
        index = policy.read.index(token)
        if index is None:
            raise Problem(401, "That is not a read token.", headers=_WWW_AUTHENTICATE)
        value, _ = policy.sessions.issue(index, now)
        cookie = f"{SESSION_COOKIE}={value}{attributes}; Max-Age={SESSION_MAX_AGE_S}"
        await _respond(scope, send, 204, b"", None, {"Set-Cookie": cookie})


async def _session_token(receive: Receive, seen: Seen) -> str | None:
    """The token in a sign-in's JSON body ``{"token": "..."}`` (read with a bound on size and time)."""
    if seen.content_type != "application/json":
        raise Problem(415, 'Sign in with Content-Type: application/json and {"token": "<read token>"}.')
    too_large = Problem(413, f"A sign-in body is at most {_SESSION_BODY_LIMIT} bytes.")
    length = seen.content_length
    if length is not None and length.isascii() and length.isdigit() and int(length) > _SESSION_BODY_LIMIT:
        raise too_large
    body = b""
    try:
        async with asyncio.timeout(_SESSION_BODY_TIMEOUT_S):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                body += message.get("body", b"")
                if len(body) > _SESSION_BODY_LIMIT:
                    raise too_large
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise Problem(408, f"The body did not arrive within {_SESSION_BODY_TIMEOUT_S:.0f} seconds.") from None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    token = document.get("token") if isinstance(document, dict) else None
    if not isinstance(token, str):
        raise Problem(400, 'Sign in with a JSON body: {"token": "<read token>"}.')
    return token.strip()


def _iso(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _respond(
    scope: Scope,
    send: Send,
    status: int,
    body: bytes,
    content_type: str | None,
    headers: dict[str, str] | None = None,
) -> None:
    raw = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")]
    if content_type is not None:
        raw.append((b"content-type", content_type.encode()))
    raw.append((b"content-length", str(len(body)).encode()))
    raw += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})


async def _refuse(scope: Scope, receive: Receive, send: Send, problem: Problem) -> None:
    """Answer with ``problem``; a WebSocket handshake gets it as an HTTP response, not an upgrade."""
    body = problem_document(problem.status, problem.detail, problem.extensions)
    if scope["type"] == "http":
        # The request's body (if any) is left unread, so the connection cannot carry another
        # request: say so, or a client reusing it would find it closed under its next request.
        # (HTTP/2 has no such header: there a refused stream does not affect the connection.)
        closing = (
            {**problem.headers, "Connection": "close"}
            if scope.get("http_version", "1.1") < "2"
            else problem.headers
        )
        await _respond(scope, send, problem.status, body, "application/problem+json", closing)
        return
    await receive()  # websocket.connect
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in problem.headers.items()),
    ]
    await send({"type": "websocket.http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})

"""The live page (SPEC §5, issue 4) in a real browser: Debian's Chromium, headless, driven by
Playwright, against the real service (``python run.py`` with its private Redis, or web + worker
processes on a private redis-server where a test restarts parts of it).

The page is served with a Content-Security-Policy without 'unsafe-eval', so Playwright's
``wait_for_function`` (which compiles its predicate in the page) cannot run there; these tests
poll with ``page.evaluate`` from Python instead (evaluation through DevTools is not subject to
the page's CSP), and only the hostile-payload test also runs once with the CSP bypassed.

Every page is watched: an uncaught page error, a console error (other than those a test expects
from what it breaks on purpose, each named by a narrow pattern) or a dialog fails the test.

``UPDATE_SCREENSHOT=1`` makes ``test_screenshots`` write the README's pictures, ``docs/page-*.png``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Page,
    ViewportSize,
    WebSocket,
    sync_playwright,
)

from tests.support import (
    ROOT,
    Pipeline,
    RedisServer,
    RunPy,
    Sender,
    free_port,
    send,
    stop_process,
    stored,
    wait_stored,
    wait_until,
)

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP: ViewportSize = {"width": 1200, "height": 800}
PHONE: ViewportSize = {"width": 390, "height": 844}

HOSTILE_IMG = {"x": "<img src=x onerror=alert(1)>"}
HOSTILE_SCRIPT = "</script><script>alert(1)</script>"

# What a person sees, read in one call: the status badge and the counter.
STATE_JS = """() => {
  const status = document.getElementById("status"), count = document.getElementById("count");
  const state = status.dataset.state;
  return {state, text: status.textContent, title: status.title,
          transport: state === "ws" || state === "sse" ? state : null,
          total: Number(count.dataset.total), shown: Number(count.dataset.shown), count: count.textContent};
}"""
# The seqs of the entries drawn now (the list is windowed: those near the view).
DOM_SEQS_JS = (
    "() => Array.from(document.querySelectorAll('#messages > li.msg'), li => Number(li.dataset.seq))"
    ".sort((a, b) => a - b)"
)
# Every seq in the list, ascending, read as a person would: scrolling from the newest (top) to
# the oldest, a screenful at a time, then back to where the list was.
ALL_SEQS_JS = """async () => {
  const list = document.getElementById("messages");
  const frame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));
  const seen = new Set(), saved = list.scrollTop;
  for (let y = 0; ; y += Math.max(100, list.clientHeight - 50)) {
    list.scrollTop = y;
    await frame();
    for (const li of list.querySelectorAll("li.msg")) seen.add(Number(li.dataset.seq));
    if (y + list.clientHeight >= list.scrollHeight) break;
  }
  list.scrollTop = saved;
  await frame();
  return [...seen].sort((a, b) => a - b);
}"""
ENTRY_JS = """(id) => {
  const li = document.querySelector(`#messages > li.msg[data-id="${CSS.escape(id)}"]`);
  if (!li) return null;
  const text = (sel) => { const e = li.querySelector(sel); return e ? e.textContent : null; };
  const time = li.querySelector("time.received");
  return {seq: Number(li.dataset.seq), payload: text("pre.payload"), seqText: text(".seq"),
          idText: text(".id"), received: text("time.received"), receivedTitle: time && time.title,
          store: text(".delay.store"), screen: text(".delay.screen"), storeMs: li.dataset.storeMs,
          view: li.dataset.view, channel: li.dataset.channel || null, chan: text(".chan")};
}"""
# Is the newest entry (offset 0, shown on top) inside the list's visible box and the window?
NEWEST_VISIBLE_JS = """() => {
  const list = document.getElementById("messages");
  const lis = Array.from(list.querySelectorAll("li.msg"));
  if (!lis.length) return null;
  const li = lis.reduce((a, b) => (Number(a.dataset.seq) > Number(b.dataset.seq) ? a : b));
  const r = li.getBoundingClientRect(), l = list.getBoundingClientRect();
  return {seq: Number(li.dataset.seq),
          visible: r.height > 0 && r.top >= l.top - 1 && r.top < l.bottom - 10 && r.top < innerHeight - 10};
}"""


# ---------------------------------------------------------------- the browser and its pages


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing (apt-get install -y chromium); the page's browser tests need it"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " and REQUIRE_BROWSER=1")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        yield launched
        launched.close()


class Watched:
    """A page, and everything it did that a test must not let pass unnoticed."""

    def __init__(self, page: Page, allow_console: list[str]) -> None:
        self.page = page
        self.allow_console = [re.compile(pattern) for pattern in allow_console]
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        self.tolerated: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.websockets: list[str] = []
        self.websocket_log: list[dict[str, object]] = []
        self.console_log: list[str] = []
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("console", self._console)
        page.on("dialog", self._dialog)
        page.on("request", lambda request: self.requests.append((request.method, request.url)))
        page.on("websocket", self._websocket)

    def _websocket(self, websocket: WebSocket) -> None:
        """Keeps, for each WebSocket the page opened, what the browser saw (for failure reports)."""
        self.websockets.append(websocket.url)
        seen: dict[str, object] = {"url": websocket.url, "closed": False}
        self.websocket_log.append(seen)
        frames = [0]

        def frame(payload: str | bytes) -> None:
            frames[0] += 1
            seen["frames"] = frames[0]

        websocket.on("framereceived", frame)
        websocket.on("close", lambda _: seen.update(closed=True))
        websocket.on("socketerror", lambda error: seen.update(error=error))

    def _console(self, message: ConsoleMessage) -> None:
        self.console_log = [*self.console_log[-30:], f"{message.type}: {message.text}"]
        if message.type == "warning" and message.text.startswith("pipeline:"):
            # The page's own complaints (a frame it could not parse, a malformed message).
            self.problems.append(f"console warning: {message.text}")
            return
        if message.type != "error":
            return
        url = message.location.get("url", "")
        if url.endswith("/favicon.ico") and "404" in message.text:
            return
        if url.endswith(("/session", "/channels")) and "404" in message.text:
            # A server without sessions or channels (yet): the page then treats reads as open
            # and knows only the channels it sees.
            return
        if any(pattern.search(message.text) for pattern in self.allow_console):
            self.tolerated.append(message.text)
            return
        self.problems.append(f"console error: {message.text} ({url})")

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def assert_clean(self) -> None:
        assert not self.problems, self.problems
        assert not self.dialogs, f"dialogs opened: {self.dialogs}"

    # -- reading the page

    def evaluate(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.page.evaluate(STATE_JS)
        return result

    def seqs(self) -> list[int]:
        """Every seq in the list, read by scrolling through it."""
        result: list[int] = self.page.evaluate(ALL_SEQS_JS)
        return result

    def streams(self) -> list[str]:
        """The URLs of the streams the page opened (WebSocket and SSE), in order."""
        return [u for u in self.websockets] + [u for method, u in self.requests if "/events?" in u]

    def dom_seqs(self) -> list[int]:
        result: list[int] = self.page.evaluate(DOM_SEQS_JS)
        return result

    def entry(self, message_id: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = self.page.evaluate(ENTRY_JS, message_id)
        return result

    def until(self, condition: Callable[[], Any], what: str, timeout_s: float = 20) -> Any:
        """Poll ``condition`` until truthy; fail at once on a page problem, or after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.assert_clean()
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"page: not {what} within {timeout_s}s; page state: {self.state()};"
                    f" its WebSockets: {self.websocket_log}; its console: {self.console_log}"
                )
            self.page.wait_for_timeout(50)  # lets Playwright dispatch page events meanwhile

    def wait_newest_visible(self) -> int:
        """Wait until the newest entry is on screen at the top of the list; its seq."""
        found = self.until(
            lambda: (v := self.evaluate(NEWEST_VISIBLE_JS)) and v["visible"] and v, "showing the newest"
        )
        seq: int = found["seq"]
        return seq

    def wait_live(self, transport: str, timeout_s: float = 20) -> dict[str, Any]:
        state: dict[str, Any] = self.until(
            lambda: (s := self.state())["state"] == transport and s, f"live over {transport}", timeout_s
        )
        return state


OpenPage = Callable[..., Watched]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[OpenPage]:
    """Opens a page in a fresh browser context; every page is checked clean at the end."""
    contexts: list[BrowserContext] = []
    watched: list[Watched] = []

    def open_(
        url: str,
        *,
        viewport: ViewportSize = DESKTOP,
        bypass_csp: bool = False,
        allow_console: list[str] | None = None,
        color_scheme: str = "light",
        clipboard: bool = False,
    ) -> Watched:
        context = browser.new_context(
            viewport=viewport,
            bypass_csp=bypass_csp,
            color_scheme=color_scheme,  # type: ignore[arg-type]
            permissions=["clipboard-read", "clipboard-write"] if clipboard else [],
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(20_000)
        watch = Watched(page, allow_console or [])
        watched.append(watch)
        response = page.goto(url, wait_until="load")
        assert response is not None and response.status == 200, response
        return watch

    yield open_
    try:
        for watch in watched:
            watch.assert_clean()
    finally:
        for context in contexts:
            context.close()


# ---------------------------------------------------------------- the service


@pytest.fixture
def run_py(tmp_path: Path) -> Iterator[RunPy]:
    """``python run.py --port P`` as a user runs it: private Redis, web and worker, own data folder."""
    service = RunPy(tmp_path / "data", free_port()).start()
    yield service
    service.stop()
    print("".join(service.output[-300:]))  # shown by pytest when the test failed


@pytest.fixture
def http(run_py: RunPy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=run_py.url, timeout=10) as client:
        yield client


def put_raw(client: httpx.Client, text: str) -> str:
    response = client.put("/messages", content=text)
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id


def send_many(client: httpx.Client, documents: list[Any], *, per_second: float | None = None) -> list[str]:
    """PUT documents from a few threads, optionally paced at ``per_second``; the ids of the 202s."""
    started = time.monotonic()

    def one(numbered: tuple[int, Any]) -> str | None:
        number, document = numbered
        if per_second is not None:
            delay = started + number / per_second - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        response = send(client, document)
        return response.json()["id"] if response.status_code == 202 else None

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [i for i in pool.map(one, enumerate(documents)) if i is not None]


def pretty(document: Any) -> str:
    """What the page shows for a payload: JSON.stringify(payload, null, 2)."""
    return json.dumps(document, indent=2, ensure_ascii=False)


# ---------------------------------------------------------------- 1. live over WebSocket and SSE


@pytest.mark.parametrize(
    ("query", "transport", "badge", "title"),
    [
        ("", "ws", "live · WebSocket", ""),
        ("?transport=ws", "ws", "live · WebSocket", ""),
        ("?transport=sse", "sse", "live · SSE", "Server-Sent Events (forced by ?transport=sse)"),
    ],
    ids=["default-websocket", "forced-websocket", "forced-sse"],
)
def test_message_sent_over_http_appears_live(
    open_page: OpenPage, run_py: RunPy, http: httpx.Client, query: str, transport: str, badge: str, title: str
) -> None:
    stored_before = put_raw(http, '{"stored": "before the page opened"}')
    wait_stored(http, 1)
    page = open_page(run_py.url + "/" + query)
    state = page.wait_live(transport)
    assert (state["text"], state["transport"], state["title"]) == (badge, transport, title)
    history = page.until(lambda: page.entry(stored_before), "showing the stored message")

    # Sent as text: the page must show 1.0 and the big integer exactly as sent.
    first = put_raw(http, '{"hello": "world", "n": 1.0, "big": 12345678901234567890}')
    second = put_raw(http, '["second", 2]')
    entry = page.until(lambda: page.entry(first), "showing the first message")
    page.until(lambda: page.entry(second), "showing the second message")

    row = http.get(f"/messages/{first}").json()
    assert entry["seq"] == row["seq"]
    assert entry["payload"] == '{\n  "hello": "world",\n  "n": 1.0,\n  "big": 12345678901234567890\n}'
    assert entry["seqText"] == f"#{row['seq']}"
    assert entry["idText"] == first
    # Date and local time on screen, the UTC text on hover.
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", entry["received"]), entry
    assert row["received_at"] in entry["receivedTitle"] and "UTC" in entry["receivedTitle"], entry
    assert entry["store"].startswith("stored ") and entry["screen"].startswith("on screen "), entry
    assert float(entry["storeMs"]) >= 0
    # A message from the history shows receipt -> stored only: receipt -> screen would be its age.
    assert history["store"].startswith("stored ") and history["screen"] is None, history

    rows = stored(http)
    assert page.seqs() == page.dom_seqs() == [r["seq"] for r in rows]
    final = page.state()
    assert (final["state"], final["transport"]) == (transport, transport), final
    assert len(page.streams()) == 1, page.streams()
    assert final["count"] == "3 messages (3 shown)"
    page.assert_clean()


def test_counts_read_naturally(open_page: OpenPage, run_py: RunPy, http: httpx.Client) -> None:
    page = open_page(run_py.url + "/")
    page.wait_live("ws")
    assert page.state()["count"] == "0 messages (0 shown)"
    put_raw(http, '{"one": 1}')
    page.until(lambda: page.state()["count"] == "1 message (1 shown)", "counting one message")
    page.page.fill("#filter", "nothing like this")
    page.until(lambda: page.state()["count"] == "1 message (0 shown)", "filtering it out")
    page.assert_clean()


# ---------------------------------------------------------------- 2. WebSocket unavailable -> SSE


class WebSocketRefusingProxy:
    """A TCP proxy in front of the real web process that passes plain HTTP through (the page,
    REST, the SSE stream) and answers every WebSocket upgrade with ``403``, as some corporate
    proxies and load balancers do. So the browser's own network stack really fails to open the
    WebSocket against a real server, while everything else works: nothing in the page is
    patched (Playwright's route_web_socket would replace the page's WebSocket class instead,
    and DevTools request blocking does not apply to WebSockets)."""

    UPGRADE = re.compile(rb"(?im)^upgrade:[ \t]*websocket")

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.refused = 0
        self.passed = 0
        self.refuse_websockets = True  # a test may lift the refusal: the page should move back
        self.upgrade_delay_s = 0.0  # a slow handshake once upgrades pass
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
        return sock

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(self._track(client),), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            if self.refuse_websockets and self.UPGRADE.search(head):
                self.refused += 1
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            self.passed += 1
            if self.UPGRADE.search(head):
                time.sleep(self.upgrade_delay_s)
            upstream = self._track(socket.create_connection(("127.0.0.1", self.upstream_port)))
            upstream.sendall(head)
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()
            self._pump(client, upstream, True)
        except OSError:
            pass
        finally:
            client.close()

    def _pump(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        try:
            while chunk := source.recv(65536):
                # (an upgrade on a kept-alive connection)
                if from_client and self.refuse_websockets and self.UPGRADE.search(chunk):
                    self.refused += 1
                    break
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


# While its web process is down Chromium reports the page's refused attempts to connect
# (WebSocket, then the SSE fallback it tries at once).
WHILE_WEB_IS_DOWN = [
    r"^WebSocket connection to 'ws://127\.0\.0\.1:\d+/ws\?after=\d+[^']*' failed: "
    r"Error in connection establishment: net::ERR_CONNECTION_REFUSED$",
    r"^Failed to load resource: net::ERR_CONNECTION_REFUSED$",
]
# Chromium reports each refused handshake on the console; that is what these tests do on purpose.
REFUSED_WEBSOCKET = r"^WebSocket connection to 'ws://127\.0\.0\.1:\d+/ws\?after=\d+[^']*' failed: .*\b403\b"


def test_falls_back_to_sse_when_websocket_cannot_connect(
    open_page: OpenPage, run_py: RunPy, http: httpx.Client
) -> None:
    before = put_raw(http, '{"stored": "before the page opened"}')
    wait_stored(http, 1)
    proxy = WebSocketRefusingProxy(run_py.port)
    try:
        page = open_page(proxy.url + "/", allow_console=[REFUSED_WEBSOCKET])
        state = page.wait_live("sse")
        assert (state["text"], state["transport"]) == ("live · SSE", "sse")
        assert state["title"] == "Server-Sent Events (WebSocket unavailable)"
        assert proxy.refused >= 1 and len(page.streams()) >= 2, (proxy.refused, page.streams())
        assert page.tolerated, "the WebSocket was never tried"
        assert page.entry(before) is not None  # history came over REST through the same proxy

        live = [put_raw(http, json.dumps({"over": "sse", "n": n})) for n in range(3)]
        page.until(lambda: all(page.entry(i) for i in live), "showing the messages sent after fallback")
        assert page.seqs() == page.dom_seqs() == [r["seq"] for r in stored(http)]
        assert page.state()["transport"] == "sse"
        assert page.state()["count"] == "4 messages (4 shown)"
        page.assert_clean()
    finally:
        proxy.close()


def test_moves_back_to_websocket_when_it_works_again(
    open_page: OpenPage, run_py: RunPy, http: httpx.Client
) -> None:
    """After the fallback the page tries WebSocket again now and then; once the proxy lets it
    through, the page moves back, while messages keep arriving, with no gap and no duplicate."""
    proxy = WebSocketRefusingProxy(run_py.port)
    sender = Sender([run_py.url], interval_s=0.02)
    try:
        page = open_page(proxy.url + "/", allow_console=[REFUSED_WEBSOCKET])
        page.wait_live("sse")
        sender.start()
        page.until(lambda: page.state()["total"] >= 10, "showing messages over SSE")
        refused = proxy.refused
        page.until(lambda: proxy.refused > refused, "trying WebSocket again while on SSE", 30)
        # A slow handshake: the SSE stream delivers meanwhile what the WebSocket, opened from an
        # older seq, then replays too; the page must show each of those once.
        proxy.upgrade_delay_s = 1.0
        proxy.refuse_websockets = False
        page.wait_live("ws", 60)
        shown = page.state()["total"]
        page.until(lambda: page.state()["total"] >= shown + 20, "showing messages over WebSocket")
        sender.stop()
        with httpx.Client(base_url=run_py.url, timeout=10) as client:
            wait_until(lambda: set(sender.accepted) <= {r["id"] for r in stored(client)}, 30, 0.2)
            want = [r["seq"] for r in stored(client)]
        page.until(lambda: page.state()["total"] == len(want), f"showing all {len(want)} stored messages")
        assert page.seqs() == want
        assert page.state()["state"] == "ws"
        page.assert_clean()
    finally:
        sender.stop()
        proxy.close()


# ---------------------------------------------------------------- 3. the service restarts under the page


@pytest.mark.slow
def test_page_resumes_after_the_service_restarts(
    open_page: OpenPage, redis_server: RedisServer, pipeline: Pipeline
) -> None:
    """A sender writes throughout while the service goes down and comes back under the open page:
    Redis stops (writes get 503), then web and worker stop (no answer at all); Redis and a worker
    come back and messages are stored through another web process while the page's web is still
    down, so the page can only get those by resuming from its last seq; then its web returns on
    the same port. The page ends with every stored message exactly once, in seq order."""
    url = pipeline.start_web()
    port = int(url.rsplit(":", 1)[1])
    pipeline.start_worker()
    pipeline.wait_healthy(url)
    page = open_page(
        url + "/",
        allow_console=WHILE_WEB_IS_DOWN,
    )
    page.wait_live("ws")

    sender = Sender([url], interval_s=0.02)
    sender.start()
    try:
        # before
        page.until(lambda: page.state()["total"] >= 20, "showing messages sent before the restart")

        # during: Redis down, the web answers 503 ...
        redis_server.stop()
        refused_before = len(sender.refused)
        page.until(lambda: len(sender.refused) >= refused_before + 5, "seeing the sender refused", 30)
        # ... then web and worker down too.
        pipeline.stop()
        reconnecting = page.until(
            lambda: (s := page.state())["state"] == "reconnecting" and s, "reconnecting", 30
        )
        assert re.fullmatch(r"reconnecting \(attempt \d+\)", reconnecting["text"]), reconnecting
        assert reconnecting["transport"] is None
        last_seen = max(page.dom_seqs())  # the newest, on top of the pinned list

        # Redis (same port, same append-only file) and a worker return; messages are stored
        # through another web process while the page's own is still down.
        redis_server.start()
        pipeline.start_worker()
        other = pipeline.start_web(port=next(p for p in iter(free_port, None) if p != port))
        pipeline.wait_healthy(other)
        with httpx.Client(base_url=other, timeout=10) as client:
            while_away = [
                put_raw(client, json.dumps({"while": "the page was away", "n": n})) for n in range(10)
            ]
            wait_until(lambda: all(client.get(f"/messages/{i}").status_code == 200 for i in while_away), 20)
        assert page.state()["state"] == "reconnecting" and max(page.dom_seqs()) == last_seen

        # after: the page's web process returns on the same port.
        pipeline.start_web(port=port)
        pipeline.wait_healthy(url)
        accepted_at_restart = len(sender.accepted)
        page.until(lambda: len(sender.accepted) >= accepted_at_restart + 20, "sender accepted again", 30)
    finally:
        sender.stop()

    assert set(sender.refused) == {503}, sender.refused
    accepted = set(sender.accepted) | set(while_away)
    with httpx.Client(base_url=url, timeout=10) as client:

        def all_stored() -> list[dict[str, Any]] | None:  # the last accepted may still be on their way
            found = stored(client)
            return found if accepted <= {r["id"] for r in found} else None

        rows: list[dict[str, Any]] = wait_until(all_stored, 30, 0.2)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "a message was stored twice"
    assert len(set(ids) - accepted) <= sender.unknown  # only unanswered writes may be stored without a 202

    with httpx.Client(base_url=url, timeout=10) as client:
        # (compared with what is stored at each look: a write whose outcome was unknown may land late)
        page.until(lambda: page.state()["total"] == len(stored(client)), "counting every stored message", 30)
        want = [r["seq"] for r in stored(client)]
        by_id = {r["id"]: r["seq"] for r in stored(client)}
    seqs = page.seqs()
    assert seqs == want
    assert {by_id[i] for i in while_away} <= set(seqs)
    # It got them by resuming from the last seq it had shown, not by reloading the history.
    history_loads = [u for method, u in page.requests if "/messages?tail=" in u]
    assert len(history_loads) == 1, history_loads
    stream_urls = page.streams()
    assert any(re.search(rf"\?after={last_seen}(&|$)", u) for u in stream_urls), stream_urls
    state = page.state()
    assert state["state"] in ("ws", "sse"), state  # SSE only if it won a race right after the restart
    assert state["count"] == f"{len(want)} messages ({len(want)} shown)"
    page.assert_clean()


# ---------------------------------------------------------------- 4. hostile payloads are text


@pytest.mark.parametrize("bypass_csp", [False, True], ids=["with-csp", "csp-bypassed"])
def test_hostile_payloads_render_as_text(
    open_page: OpenPage, run_py: RunPy, http: httpx.Client, bypass_csp: bool
) -> None:
    """With the CSP as served, and once without it, to prove the page itself never turns a
    payload into markup (then the CSP is only a second line of defence)."""
    ids = [send(http, HOSTILE_IMG).json()["id"], send(http, HOSTILE_SCRIPT).json()["id"]]
    wait_stored(http, 2)  # these two come with the history, the next two live
    page = open_page(run_py.url + "/", bypass_csp=bypass_csp)
    response_csp = http.get("/").headers["content-security-policy"]
    assert "unsafe-inline" not in response_csp and "unsafe-eval" not in response_csp
    page.wait_live("ws")
    ids += [send(http, HOSTILE_IMG).json()["id"], send(http, HOSTILE_SCRIPT).json()["id"]]
    entries = page.until(lambda: all(e := [page.entry(i) for i in ids]) and e, "showing the four payloads")

    for entry in entries[0::2]:
        assert entry["payload"] == pretty(HOSTILE_IMG)
        assert "<img src=x onerror=alert(1)>" in entry["payload"]
    for entry in entries[1::2]:
        assert entry["payload"] == json.dumps(HOSTILE_SCRIPT)
        assert "</script><script>alert(1)</script>" in entry["payload"]
    found = page.evaluate(
        """() => ({imgs: document.querySelectorAll("#messages img").length,
                   scripts: document.querySelectorAll("#messages script").length,
                   elementsInPayloads: document.querySelectorAll("pre.payload *").length,
                   allScripts: Array.from(document.scripts, s => s.src)})"""
    )
    assert found["imgs"] == found["scripts"] == found["elementsInPayloads"] == 0, found
    assert found["allScripts"] == [run_py.url + "/static/app.js"], found
    assert not [u for method, u in page.requests if u.endswith("/x")], "the img's src was requested"
    page.until(lambda: page.state()["total"] == 4, "counting four")
    assert page.dialogs == []
    page.assert_clean()

    if bypass_csp:
        # Control: in this context an injected inline handler does run, so the silence above is
        # the page's doing and not the CSP's.
        page.evaluate(
            """() => { const d = document.createElement("div");
                       d.innerHTML = '<img src="data:," onerror="window.__controlRan = true">';
                       document.body.append(d); }"""
        )
        page.until(lambda: page.evaluate("() => window.__controlRan === true"), "running the control")


# ---------------------------------------------------------------- 5. the send form


def test_send_form(open_page: OpenPage, run_py: RunPy, http: httpx.Client) -> None:
    page = open_page(
        run_py.url + "/",
        # The server's 400 for the over-nested body is logged by Chromium as a failed load.
        allow_console=[r"^Failed to load resource: the server responded with a status of 400\b"],
    )
    page.wait_live("ws")
    result = page.page.locator("#send-result")

    def posts() -> int:
        return sum(1 for method, url in page.requests if method == "POST" and url.endswith("/messages"))

    def submitted(text: str, status: str) -> str:
        page.page.fill("#send-body", text)
        page.page.click("#send-button")
        page.until(lambda: result.get_attribute("data-status") == status, f"send result {status!r}")
        return result.text_content() or ""

    # A valid message: queued, its id shown, then it appears in the list, stored as typed.
    typed = '{"from": "the form", "price": 10.50}'
    submitted(typed, "ok")
    message_id = result.get_attribute("data-id") or ""
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", message_id)
    entry = page.until(lambda: page.entry(message_id), "showing the message sent from the form")
    assert entry["payload"] == '{\n  "from": "the form",\n  "price": 10.50\n}'
    assert message_id in (result.text_content() or "")
    page.until(
        lambda: f"on screen as #{entry['seq']}" in (result.text_content() or ""), "noting it is on screen"
    )
    assert '"price": 10.50' in http.get(f"/messages/{message_id}").text
    assert posts() == 1
    count = len(stored(http))
    assert count == 1

    # Invalid JSON and an empty document: refused in the page, nothing sent.
    text = submitted('{"a": }', "invalid")
    assert text.startswith("Invalid JSON: "), text
    assert page.page.get_attribute("#send-body", "aria-invalid") == "true"
    text = submitted("   ", "invalid")
    assert text == "Invalid JSON: the document is empty"
    assert posts() == 1

    # Valid JSON the server refuses (nested deeper than its bound): the server's own words shown.
    deep = "[" * 5000 + "]" * 5000
    problem = http.put("/messages", content=deep)
    assert problem.status_code == 400 and problem.headers["content-type"] == "application/problem+json"
    detail = problem.json()["detail"]
    text = submitted(deep, "error")
    assert detail in text and "(HTTP 400)" in text, (detail, text)
    assert posts() == 2

    assert len(stored(http)) == count  # neither the invalid nor the refused ones were stored
    assert page.seqs() == page.dom_seqs() == [entry["seq"]]
    page.assert_clean()


# ---------------------------------------------------------------- 6. history, all of it


def before_is_supported(client: httpx.Client) -> bool:
    """Does the server page backwards (``?before=``, SPEC §3)? Needs at least 3 stored messages."""
    rows = client.get("/messages", params={"limit": 3}).json()
    answer = client.get("/messages", params={"before": rows[2]["seq"], "limit": 1})
    return answer.status_code == 200 and [r["seq"] for r in answer.json()] == [rows[1]["seq"]]


def test_history_loads_older_down_to_the_first_message(
    open_page: OpenPage, run_py: RunPy, http: httpx.Client
) -> None:
    send_many(http, [{"history": n, "note": "stored before the page opened"} for n in range(1100)])
    rows = wait_stored(http, 1100, timeout_s=60)
    assert before_is_supported(http), "GET /messages?before= is not served"

    page = open_page(run_py.url + "/")
    page.until(lambda: page.state()["count"] == "500 messages (500 shown)", "counting the newest 500")
    page.wait_live("ws")
    assert page.wait_newest_visible() == rows[-1]["seq"]
    older = page.page.locator("#older")
    status = page.page.locator("#older-status")
    assert older.is_visible() and status.get_attribute("data-reached-first") == "false"

    older.click()
    page.until(lambda: page.state()["total"] == 1000, "loading 500 older")
    older.click()
    page.until(lambda: page.state()["total"] == 1100, "loading the last 100")
    page.until(lambda: status.get_attribute("data-reached-first") == "true", "saying it reached the first")
    assert not older.is_visible()
    assert status.text_content() == f"All stored messages are here: the oldest is #{rows[0]['seq']}."
    assert page.seqs() == [r["seq"] for r in rows]
    # Three reads: the newest 500, then two pages going back, each below the oldest on the page.
    reads = [u for method, u in page.requests if "/messages?" in u]
    assert len(reads) == 3 and "tail=500" in reads[0], reads
    assert f"before={rows[600]['seq']}" in reads[1] and f"before={rows[100]['seq']}" in reads[2], reads

    # Live messages still land on top while the oldest are loaded.
    late = put_raw(http, '{"late": true}')
    page.until(lambda: page.entry(late), "showing a live message on top")
    assert page.state()["count"] == "1101 messages (1101 shown)"
    page.assert_clean()


# ---------------------------------------------------------------- 7. 200 messages/s


def test_200_messages_per_second_arrive_once_each(
    open_page: OpenPage, run_py: RunPy, http: httpx.Client
) -> None:
    """Correctness at rate, not timing (that is the benchmark's business)."""
    page = open_page(run_py.url + "/")
    page.wait_live("ws")
    started = time.monotonic()
    accepted = send_many(http, [{"rate": n, "pad": "x" * 40} for n in range(1000)], per_second=200)
    took = time.monotonic() - started
    assert len(accepted) == 1000, f"{1000 - len(accepted)} sends refused"
    rows = wait_stored(http, 1000, timeout_s=30)
    want = [r["seq"] for r in rows]
    assert {r["id"] for r in rows} == set(accepted)
    page.until(lambda: page.state()["total"] >= 1000, f"showing 1000 (sent in {took:.1f}s)", 30)
    assert page.seqs() == want
    state = page.wait_live("ws")  # it may have resumed meanwhile (a 1013 on a busy machine): that is allowed
    assert state["count"] == "1000 messages (1000 shown)"
    page.assert_clean()


# ---------------------------------------------------------------- filter, counter, pause; phone


def test_filter_counter_and_pause(open_page: OpenPage, run_py: RunPy, http: httpx.Client) -> None:
    cities = ["Oslo", "Lima", "Oslo", "Pune", "Oslo"]
    send_many(http, [{"city": city, "n": n} for n, city in enumerate(cities)])
    wait_stored(http, 5)
    page = open_page(run_py.url + "/")
    page.wait_live("ws")
    count = page.page.locator("#count")
    page.page.fill("#filter", "oslo")
    page.until(lambda: count.text_content() == "5 messages (3 shown)", "filtering to 3")
    page.page.fill("#filter", "no such text")
    page.until(lambda: count.text_content() == "5 messages (0 shown)", "filtering to 0")
    assert page.page.locator("#empty").inner_text() == "No message matches the filter."
    page.page.fill("#filter", "")
    page.until(lambda: count.text_content() == "5 messages (5 shown)", "showing all again")

    pin = page.page.locator("#pin")
    assert pin.get_attribute("aria-pressed") == "true"
    pin.click()
    assert pin.get_attribute("aria-pressed") == "false"
    send(http, {"city": "Oslo", "n": 5})
    page.until(lambda: pin.text_content() == "Paused · 1 new", "counting new messages while paused")
    pin.click()
    assert pin.get_attribute("aria-pressed") == "true" and pin.text_content() == "Pinned to newest"
    page.wait_newest_visible()
    page.assert_clean()


def test_readable_on_a_phone(open_page: OpenPage, run_py: RunPy, http: httpx.Client) -> None:
    page = open_page(run_py.url + "/", viewport=PHONE)
    page.wait_live("ws")
    long_id = put_raw(http, json.dumps({"long": "y" * 400, "nested": {"a": {"b": {"c": [1, 2, 3]}}}}))
    page.until(lambda: page.entry(long_id), "showing the long message")
    layout = page.evaluate(
        """() => ({scrollWidth: document.documentElement.scrollWidth, innerWidth,
                   badge: document.getElementById("status").getBoundingClientRect().right,
                   form: document.getElementById("send-body").getBoundingClientRect().width})"""
    )
    assert layout["scrollWidth"] <= layout["innerWidth"], layout  # no sideways scrolling
    assert layout["badge"] <= layout["innerWidth"] and layout["form"] > 250, layout
    page.assert_clean()


# ---------------------------------------------------------------- inspector: copy, raw, chart, empty state

# Duplicate keys, 1.0, a big integer, an escape and a single quote (for the shell), spaced oddly.
ODD = '{"a": 1.0, "a": 2,  "big": 123456789012345678901234567890, "s": "it\'s \\u00e9 <b>x</b>"}'
CLIPBOARD_JS = "() => navigator.clipboard.readText()"


def entry_button(page: Watched, message_id: str, css: str) -> Any:
    return page.page.locator(f'#messages li.msg[data-id="{message_id}"] button.{css}')


def run_shell(command: str) -> dict[str, Any]:
    """Runs a command as pasted into a shell; its JSON answer."""
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_copy_payload_and_copy_as_curl(open_page: OpenPage, run_py: RunPy, http: httpx.Client) -> None:
    page = open_page(run_py.url + "/", clipboard=True)
    page.wait_live("ws")
    message_id = put_raw(http, ODD)
    page.until(lambda: page.entry(message_id), "showing the message")

    copy = entry_button(page, message_id, "copy")
    copy.click()
    page.until(lambda: copy.text_content() == "Copied ✓", "saying it copied")
    assert page.evaluate(CLIPBOARD_JS) == ODD  # the stored text, byte for byte

    curl = entry_button(page, message_id, "copy-curl")
    curl.click()
    page.until(lambda: curl.text_content() == "Copied ✓", "saying it copied the command")
    command = page.evaluate(CLIPBOARD_JS)
    assert command.startswith(f"curl -X POST '{run_py.url}/messages' "), command
    assert "Authorization" not in command  # this server needs no ingest token
    resent = run_shell(command)["id"]
    page.until(lambda: page.entry(resent), "showing the message the curl command sent")
    assert ODD in http.get(f"/messages/{resent}").text  # stored exactly as the original
    page.assert_clean()


def test_raw_view_shows_the_text_as_stored(open_page: OpenPage, run_py: RunPy, http: httpx.Client) -> None:
    page = open_page(run_py.url + "/")
    page.wait_live("ws")
    text = '{"k": 1.0, "k": 2, "n": 12345678901234567890123, "nested": {"k": [1.50, 2e3, {}]}}'
    message_id = put_raw(http, text)
    entry = page.until(lambda: page.entry(message_id), "showing the message")
    assert entry["view"] == "pretty"
    assert entry["payload"] == (
        '{\n  "k": 1.0,\n  "k": 2,\n  "n": 12345678901234567890123,\n  "nested": {\n    "k": [\n'
        "      1.50,\n      2e3,\n      {}\n    ]\n  }\n}"
    )
    toggle = entry_button(page, message_id, "view-raw")
    assert (toggle.text_content(), toggle.get_attribute("aria-pressed")) == ("Raw", "false")
    toggle.click()
    entry = page.until(lambda: (e := page.entry(message_id)) and e["view"] == "raw" and e, "showing it raw")
    assert entry["payload"] == text  # duplicate keys, 1.0 and the big number as stored
    assert (toggle.text_content(), toggle.get_attribute("aria-pressed")) == ("Pretty", "true")
    toggle.click()
    page.until(lambda: (page.entry(message_id) or {}).get("view") == "pretty", "back to the pretty view")
    page.assert_clean()


def canvas_picture(page: Watched) -> str:
    picture: str = page.evaluate("() => document.getElementById('chart').toDataURL()")
    return picture


def test_chart_moves_while_messages_arrive(open_page: OpenPage, run_py: RunPy, http: httpx.Client) -> None:
    page = open_page(run_py.url + "/")
    page.wait_live("ws")
    figures = page.page.locator("#chart-figures")
    page.until(lambda: "msg/s" in (figures.text_content() or ""), "drawing the chart")
    assert figures.get_attribute("data-last-minute") == "0"
    assert figures.get_attribute("data-p50-ms") == ""
    quiet = canvas_picture(page)

    send_many(http, [{"tick": n} for n in range(60)], per_second=30)
    page.until(lambda: figures.get_attribute("data-last-minute") == "60", "counting 60 in the last minute")
    text = figures.text_content() or ""
    assert "60 messages in the last minute" in text, text
    assert re.search(r"p50 [\d.]+ (ms|s), p99 [\d.]+ (ms|s)", text), text
    assert float(figures.get_attribute("data-p99-ms") or "nan") >= float(
        figures.get_attribute("data-p50-ms") or "nan"
    )
    assert canvas_picture(page) != quiet  # the bars and lines were drawn
    page.assert_clean()


def test_empty_state_curl_lands_a_message(open_page: OpenPage, run_py: RunPy) -> None:
    page = open_page(run_py.url + "/")
    page.wait_live("ws")
    empty = page.page.locator("#empty")
    assert empty.is_visible()
    command = page.page.locator("#empty-curl").text_content() or ""
    assert command.startswith(f"curl -X POST '{run_py.url}/messages' "), command
    message_id = run_shell(command)["id"]
    entry = page.until(lambda: page.entry(message_id), "showing the message sent by the pasted command")
    assert entry["payload"] == '{\n  "hello": "world"\n}'
    assert not empty.is_visible()
    page.assert_clean()


# ---------------------------------------------------------------- 10,000 messages

FILTER_JS = """async (text) => {
  const input = document.getElementById("filter"), count = document.getElementById("count");
  const frame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));
  const before = count.textContent, started = performance.now();
  input.value = text;
  input.dispatchEvent(new Event("input", {bubbles: true}));
  // (each filter here changes the count, so a changed count is the answer)
  while (count.textContent === before) await frame();
  await frame();   // the frame that shows the filtered list
  return {ms: performance.now() - started, count: count.textContent};
}"""
SCROLL_JS = """async () => {
  const list = document.getElementById("messages");
  const frame = () => new Promise((resolve) => requestAnimationFrame(() => resolve()));
  list.scrollTop = 0;
  await frame(); await frame();
  const gaps = [];
  let last = performance.now();
  for (let i = 0; i < 300; i++) {
    // mostly steady scrolling, now and then a jump (dragging the scroll bar)
    list.scrollTop = i % 50 === 49 ? Math.random() * list.scrollHeight : list.scrollTop + 250;
    await frame();
    const now = performance.now();
    gaps.push(now - last);
    last = now;
  }
  const shown = Array.from(list.querySelectorAll("li.msg"), (li) => Number(li.dataset.seq));
  gaps.sort((a, b) => a - b);
  return {p50: gaps[Math.floor(gaps.length * 0.5)], p95: gaps[Math.floor(gaps.length * 0.95)],
          max: gaps[gaps.length - 1], frames: gaps.length, drawn: shown.length};
}"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_10000_messages_filter_and_scroll_stay_smooth(
    open_page: OpenPage, run_py: RunPy, http: httpx.Client
) -> None:
    """SPEC §5: with 10,000 messages on the page, filtering answers within 300 ms and scrolling
    keeps the p95 frame time under 50 ms (headless Chromium on the shared 2-core machine).
    The messages arrive live, so this holds whether or not the server can page back."""
    page = open_page(run_py.url + "/")
    page.wait_live("ws")
    cities = ["Oslo", "Lima", "Pune", "Kyiv"]
    started = time.monotonic()
    accepted = send_many(
        http, [{"n": n, "city": cities[n % 4], "note": "ten thousand"} for n in range(10_000)]
    )
    assert len(accepted) == 10_000
    print(f"\n10,000 sent in {time.monotonic() - started:.0f} s")
    page.until(lambda: page.state()["total"] == 10_000, "holding 10,000 messages", 300)

    timings = []
    for text, want in [("oslo", 2500), ('"n": 9999,', 1), ("kyiv", 2500), ("", 10_000)]:
        result = page.evaluate(FILTER_JS, text)
        assert result["count"] == f"10000 messages ({want} shown)", result
        timings.append(result["ms"])
    scroll = page.evaluate(SCROLL_JS)
    print(
        f"\nPAGE 10k: filter ms {[round(t) for t in timings]}; scroll frame ms p50 {scroll['p50']:.1f}"
        f" p95 {scroll['p95']:.1f} max {scroll['max']:.1f} over {scroll['frames']} frames;"
        f" entries in the DOM {scroll['drawn']}"
    )
    assert max(timings) < 300, timings
    assert scroll["p95"] < 50, scroll
    assert scroll["drawn"] < 200, scroll  # windowed: only what is near the view
    page.assert_clean()


# ---------------------------------------------------------------- channels (SPEC §9)


def channels_supported(client: httpx.Client) -> bool:
    return client.get("/channels").status_code == 200


def post_to(client: httpx.Client, channel: str, text: str, **headers: str) -> str:
    response = client.post(f"/channels/{channel}/messages", content=text, headers=headers)
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id


def option_values(page: Watched) -> list[str]:
    values: list[str] = page.evaluate(
        "() => Array.from(document.getElementById('channel').options, o => o.value)"
    )
    return values


def test_channel_picker(open_page: OpenPage, run_py: RunPy, http: httpx.Client) -> None:
    assert channels_supported(http), "GET /channels is not served"
    order = post_to(http, "orders", '{"order": 1}')
    hit = post_to(http, "web", '{"hit": 1}')
    put_raw(http, '{"plain": 1}')
    wait_stored(http, 3)

    page = open_page(run_py.url + "/?channel=orders")
    page.wait_live("ws")
    page.until(lambda: page.entry(order), "showing the orders message")
    assert page.state()["count"] == "1 message (1 shown)"
    page.until(lambda: option_values(page) == ["", "default", "orders", "web"], "listing the channels")
    assert page.page.locator("#channel").input_value() == "orders"
    assert all("channel=orders" in u for u in page.streams()), page.streams()
    assert page.page.locator("#send-target").text_content() == "/channels/orders/messages"

    # Live: only this channel; the form writes to it.
    post_to(http, "web", '{"hit": 2}')
    second = post_to(http, "orders", '{"order": 2}')
    page.until(lambda: page.entry(second), "showing the second order")
    page.page.fill("#send-body", '{"order": "from the form"}')
    page.page.click("#send-button")
    result = page.page.locator("#send-result")
    page.until(lambda: "on screen as" in (result.text_content() or ""), "showing the form's message")
    sent = result.get_attribute("data-id") or ""
    assert http.get(f"/messages/{sent}").json()["channel"] == "orders"
    assert page.state()["count"] == "3 messages (3 shown)"
    assert page.entry(hit) is None

    # All channels: a new channel is learnt as its first message arrives.
    everything = open_page(run_py.url + "/")
    everything.wait_live("ws")
    fresh = post_to(http, "brand-new", '{"first": true}')
    entry = everything.until(lambda: everything.entry(fresh), "showing the new channel's message")
    assert entry["chan"] == "brand-new"
    everything.until(lambda: "brand-new" in option_values(everything), "learning the new channel")

    # Choosing a channel is a bookmarkable address.
    everything.page.select_option("#channel", "web")
    everything.page.wait_for_url(re.compile(r"/\?channel=web$"))
    everything.wait_live("ws")
    everything.until(lambda: everything.entry(hit), "showing the web channel")
    assert everything.state()["count"] == "2 messages (2 shown)"
    page.assert_clean()
    everything.assert_clean()


# ---------------------------------------------------------------- sign-in (SPEC §8)

READ_TOKEN = "read-secret-token"
INGEST_TOKEN = "ingest-secret-token"


@pytest.fixture
def private_run_py(tmp_path: Path) -> Iterator[RunPy]:
    service = RunPy(tmp_path / "data", free_port(), READ_TOKEN=READ_TOKEN, INGEST_TOKEN=INGEST_TOKEN).start()
    yield service
    service.stop()
    print("".join(service.output[-300:]))


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_sign_in_then_history_live_and_form(
    open_page: OpenPage, private_run_py: RunPy, transport: str
) -> None:
    url = private_run_py.url
    writer = httpx.Client(base_url=url, timeout=10, headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
    with writer:
        session = httpx.get(f"{url}/session", timeout=10)
        assert session.status_code == 200, "GET /session is not served"
        assert session.json()["read_token_required"] is True
        before = put_raw(writer, '{"stored": "before signing in"}')
        reader = {"Authorization": f"Bearer {READ_TOKEN}"}
        wait_until(lambda: len(httpx.get(f"{url}/messages", headers=reader).json()) == 1, 15)

        page = open_page(
            url + ("/?transport=sse" if transport == "sse" else "/"),
            # The wrong token's 401 is logged by Chromium as a failed load.
            allow_console=[r"^Failed to load resource: the server responded with a status of 401\b"],
        )
        signin = page.page.locator("#signin")
        page.until(lambda: signin.is_visible(), "asking to sign in")
        assert not page.page.locator("#main").is_visible()
        page.page.fill("#signin-token", "wrong")
        page.page.click("#signin-button")
        result = page.page.locator("#signin-result")
        page.until(lambda: result.text_content() == "That token was not accepted.", "refusing a wrong token")
        page.page.fill("#signin-token", READ_TOKEN)
        page.page.click("#signin-button")
        page.wait_live(transport)
        assert not signin.is_visible()
        page.until(lambda: page.entry(before), "showing the history")
        assert "Authorization: Bearer <INGEST_TOKEN>" in (
            page.page.locator("#empty-curl").text_content() or ""
        )

        live = put_raw(writer, '{"sent": "live"}')
        page.until(lambda: page.entry(live), "showing a live message")

        # The form sends the ingest token it was given.
        page.page.click("details.token summary")
        page.page.fill("#send-token", INGEST_TOKEN)
        page.page.fill("#send-body", '{"from": "the signed-in form"}')
        page.page.click("#send-button")
        sent = page.page.locator("#send-result")
        page.until(lambda: "on screen as" in (sent.text_content() or ""), "showing the form's message")
        assert page.state()["count"] == "3 messages (3 shown)"
        urls = [u for _, u in page.requests] + page.websockets
        assert not [u for u in urls if READ_TOKEN in u or INGEST_TOKEN in u], "a token went into a URL"

        page.page.click("#signout")
        page.until(lambda: signin.is_visible(), "asking to sign in again after signing out")
        assert httpx.get(f"{url}/messages", timeout=10).status_code == 401
        page.assert_clean()


# ---------------------------------------------------------------- retention gaps (SPEC §10)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_gap_is_told(open_page: OpenPage, redis_server: RedisServer, pipeline: Pipeline) -> None:
    """The page's web process goes away; meanwhile more messages arrive than retention keeps,
    so when the page resumes the server says a gap: the page tells how many were missed."""
    pipeline.env["RETENTION_MAX_MESSAGES"] = "3"  # for every process started here
    url = pipeline.start_web()
    port = int(url.rsplit(":", 1)[1])
    pipeline.start_worker()
    pipeline.wait_healthy(url)
    with httpx.Client(base_url=url, timeout=10) as client:
        ids = [put_raw(client, json.dumps({"before": n})) for n in range(5)]
        # all five stored (200), or stored and purged already (404): none still queued (202)
        wait_until(lambda: all(client.get(f"/messages/{i}").status_code != 202 for i in ids), 15)
        wait_until(lambda: len(stored(client)) == 3, 75, 1)  # SPEC §10: purged within a minute
        first = put_raw(client, '{"n": 0}')
        wait_until(lambda: (rows := stored(client)) and len(rows) == 3 and rows[-1]["id"] == first, 75, 0.5)
    page = open_page(
        url + "/",
        allow_console=WHILE_WEB_IS_DOWN,
    )
    page.wait_live("ws")
    page.until(lambda: page.entry(first), "showing the first message")
    seen = page.until(lambda: page.entry(first), "reading its seq")["seq"]

    web, _ = pipeline.webs[0]
    stop_process(web)
    page.until(lambda: page.state()["state"] == "reconnecting", "reconnecting")
    other = pipeline.start_web()
    with httpx.Client(base_url=other, timeout=10) as client:
        for n in range(1, 11):
            put_raw(client, json.dumps({"n": n}))
        kept = wait_until(lambda: (rows := stored(client)) and len(rows) == 3 and rows, 90)
    pipeline.start_web(port=port)
    gap = page.page.locator("#gap")
    page.until(lambda: gap.is_visible(), "telling the gap", 30)
    missed = kept[0]["seq"] - seen - 1
    assert gap.get_attribute("data-missed") == str(missed)
    assert f"Missed {missed} messages" in (page.page.locator("#gap-text").text_content() or "")
    page.until(lambda: page.state()["total"] == 6, "showing the three it had and the three kept")
    page.assert_clean()


@pytest.mark.slow
def test_reset_is_told_and_the_list_reloaded(
    open_page: OpenPage, redis_server: RedisServer, pipeline: Pipeline, tmp_path: Path
) -> None:
    """The database is replaced under the open page (a new epoch): when the page resumes, the
    server says reset; the page says so, drops what it showed and loads the new history."""
    url = pipeline.start_web()
    port = int(url.rsplit(":", 1)[1])
    pipeline.start_worker()
    pipeline.wait_healthy(url)
    with httpx.Client(base_url=url, timeout=10) as client:
        for n in range(3):
            put_raw(client, json.dumps({"old": n}))
        wait_stored(client, 3)
        assert "pipeline-epoch" in client.get("/messages").headers, "no Pipeline-Epoch header"
    page = open_page(
        url + "/",
        allow_console=WHILE_WEB_IS_DOWN,
    )
    page.wait_live("ws")
    page.until(lambda: page.state()["total"] == 3, "showing the three old messages")

    pipeline.stop()
    for path in tmp_path.glob("pipeline.db*"):
        path.unlink()
    pipeline.start_worker()
    pipeline.start_web(port=port)
    pipeline.wait_healthy(url)
    with httpx.Client(base_url=url, timeout=10) as client:
        fresh = put_raw(client, '{"new": "database"}')
        wait_stored(client, 1)
    gap = page.page.locator("#gap")
    page.until(lambda: gap.is_visible(), "telling the reset", 30)
    assert "history was reset" in (page.page.locator("#gap-text").text_content() or "")
    page.until(lambda: page.entry(fresh), "showing the new database's message")
    assert page.state()["count"] == "1 message (1 shown)"
    page.assert_clean()


# ---------------------------------------------------------------- the README's screenshots


SCREENSHOT_DOCUMENTS = [
    '{"sensor": "greenhouse-3", "temperature_c": 21.5, "humidity": 0.63, "battery": 0.91}',
    '{"type": "deploy", "service": "api", "version": "2026.11.27-3", "status": "succeeded"}',
    '"a plain string is JSON too"',
    '{"event": "order.created", "order": "A-10293", "total": 59.90, "currency": "EUR",'
    ' "items": [{"sku": "TEA-GREEN-100", "qty": 2}, {"sku": "MUG-01", "qty": 1}]}',
    '{"webhook": "payment", "amount": 1.0, "amount": 1.00, "id": 123456789012345678901234567890}',
]


def test_screenshots(open_page: OpenPage, run_py: RunPy, http: httpx.Client, tmp_path: Path) -> None:
    """The README's pictures (docs/page-*.png): live, history, raw view, dark mode, phone width."""
    update = os.environ.get("UPDATE_SCREENSHOT") == "1"
    folder = ROOT / "docs" if update else tmp_path

    def shoot(page: Watched, name: str) -> None:
        page.page.wait_for_timeout(1200)  # the chart redraws each second (not an assertion)
        target = folder / f"page-{name}.png"
        page.page.screenshot(path=str(target))
        assert target.read_bytes().startswith(b"\x89PNG")

    send_many(http, [{"reading": n, "sensor": f"s-{n % 3}", "value": n * 1.5} for n in range(40)])
    wait_stored(http, 40)
    live = open_page(run_py.url + "/")
    live.wait_live("ws")
    send_many(http, [{"tick": n, "source": "load test"} for n in range(60)], per_second=12)
    ids = [put_raw(http, text) for text in SCREENSHOT_DOCUMENTS]
    live.until(lambda: all(live.entry(i) for i in ids), "showing the messages")
    live.page.fill("#send-body", '{"hello": "world", "from": "the form"}')
    live.page.click("#send-button")
    result = live.page.locator("#send-result")
    live.until(lambda: "on screen as" in (result.text_content() or ""), "showing the form's message")
    live.wait_newest_visible()
    shoot(live, "live")

    entry_button(live, ids[-1], "view-raw").click()
    live.until(lambda: (live.entry(ids[-1]) or {}).get("view") == "raw", "showing the raw text")
    shoot(live, "raw")

    history = open_page(run_py.url + "/")
    history.wait_live("ws")
    for _ in range(3):  # to the oldest: heights measured on the way may lengthen the list
        history.page.evaluate("() => { const l = document.getElementById('messages'); l.scrollTop = 1e9; }")
        history.page.wait_for_timeout(200)
    history.until(
        lambda: history.page.locator("#older-status").get_attribute("data-reached-first") == "true",
        "reaching the first message",
    )
    shoot(history, "history")

    dark = open_page(run_py.url + "/", color_scheme="dark")
    dark.wait_live("ws")
    shoot(dark, "dark")

    phone = open_page(run_py.url + "/", viewport=PHONE)
    phone.wait_live("ws")
    shoot(phone, "phone")
    for page in (live, history, dark, phone):
        page.assert_clean()

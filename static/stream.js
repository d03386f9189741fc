// The live connection and its resumption: WebSocket, or Server-Sent Events when a WebSocket
// cannot connect (?transport=sse forces SSE). Every (re)connection asks the server for what
// came after the newest seq the page holds, so nothing is missed; whatever arrives twice
// (two streams overlapping while moving from SSE back to WebSocket) is dropped by seq.

import { backoffDelay } from "./format.js";
import { readFrame, readMessage } from "./rawjson.js";

const BACKOFF_START_MS = 250;
const BACKOFF_CAP_MS = 10000;
const OPEN_TIMEOUT_MS = 8000;      // a stream that has not opened by then has failed
const WS_SILENCE_MS = 45000;       // the server pings at least every 15 s
const FLAPPING_MS = 1000;          // a connection that dies sooner does not reset the back-off
const WS_RETRY_START_MS = 4000;    // on SSE after a fallback: try WebSocket again after this ...
const WS_RETRY_CAP_MS = 300000;    // ... doubling up to this

export class LiveStream {
  /**
   * opts: mode ("auto" | "ws" | "sse"), filtered (a channel is shown), query() -> extra query
   * parameters as [name, value] pairs (channel, epoch),
   * after() -> the newest seq the page holds, and callbacks onMessage(m), onGap(data),
   * onReset(data), onPing(data), onStatus(state, text, title), onTrouble(attempt).
   */
  constructor(opts) {
    this.opts = opts;
    this.conn = null;
    this.attempt = 0;
    this.reconnectTimer = 0;
    this.preferSse = false;   // auto: WebSocket failed and SSE worked
    this.fellBack = false;    // auto: this round already fell back from WebSocket to SSE
    this.probeTimer = 0;
    this.probe = null;
    this.probeAttempt = 0;
    this.stopped = true;
    window.addEventListener("online", () => { if (this.reconnectTimer) this.connect(); });
  }

  get transport() { return this.conn && this.conn.opened ? this.conn.kind : null; }

  start() {
    this.stopped = false;
    this.attempt = 0;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = 0;
    this.dropProbe();
    this.dropConn();
  }

  url(path) {
    let url = `${path}?after=${this.opts.after()}`;
    for (const [k, v] of this.opts.query()) url += `&${encodeURIComponent(k)}=${encodeURIComponent(v)}`;
    return url;
  }

  status(state, text, title) { this.opts.onStatus(state, text, title); }

  dropConn() {
    const c = this.conn;
    this.conn = null;
    if (c) closeConn(c);
  }

  scheduleReconnect(why) {
    this.dropProbe();
    this.dropConn();
    if (this.stopped) return;
    clearTimeout(this.reconnectTimer);
    this.attempt++;
    const delay = backoffDelay(this.attempt, BACKOFF_START_MS, BACKOFF_CAP_MS);
    this.status("reconnecting", `reconnecting (attempt ${this.attempt})`, why ? `${why}; retrying in ${delay} ms` : undefined);
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
    this.opts.onTrouble(this.attempt);
  }

  connect() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = 0;
    if (this.stopped) return;
    this.fellBack = false;
    const { mode } = this.opts;
    this.open(mode === "auto" ? (this.preferSse ? "sse" : "ws") : mode);
  }

  open(kind) {
    this.dropConn();
    const c = { kind, opened: false, openedAt: 0, behind: 0, behindAt: -1, attemptBefore: this.attempt };
    this.conn = c;
    c.openTimer = setTimeout(() => { if (this.conn === c && !c.opened) this.failed(c, "timed out opening"); }, OPEN_TIMEOUT_MS);
    if (kind === "ws") this.openWs(c); else this.openSse(c);
  }

  wentLive(c) {
    c.opened = true;
    c.openedAt = Date.now();
    c.attemptBefore = this.attempt;
    clearTimeout(c.openTimer);
    this.attempt = 0;
    if (c.kind === "ws") {
      this.status("ws", "live · WebSocket");
      if (this.opts.mode === "auto") this.preferSse = false;
      return;
    }
    const forced = this.opts.mode === "sse";
    this.status("sse", "live · SSE", forced ? "Server-Sent Events (forced by ?transport=sse)"
      : "Server-Sent Events (WebSocket unavailable)");
    if (!forced) {
      this.preferSse = true;
      this.scheduleProbe();
    }
  }

  /** The stream could not be opened at all. */
  failed(c, why) {
    if (this.conn !== c) return;
    this.dropConn();
    if (this.opts.mode === "auto" && c.kind === "ws" && !this.fellBack) {
      this.fellBack = true;          // WebSocket did not work: try SSE at once
      this.open("sse");
      return;
    }
    if (this.opts.mode === "auto" && c.kind === "sse") this.preferSse = false;  // both failed: WS first again
    this.scheduleReconnect(`${c.kind === "ws" ? "WebSocket" : "SSE"} ${why}`);
  }

  /** An open stream ended. */
  ended(c, why) {
    if (this.conn !== c) return;
    if (Date.now() - c.openedAt < FLAPPING_MS) this.attempt = c.attemptBefore;  // don't spin on a flapping server
    this.scheduleReconnect(why);
  }

  armSilence(c) {
    clearTimeout(c.silenceTimer);
    c.silenceTimer = setTimeout(() => { if (this.conn === c) this.ended(c, "no frame from the server for 45 s"); }, WS_SILENCE_MS);
  }

  // ---- back from SSE to WebSocket: a second stream is opened beside the SSE one, from the
  // newest seq the page holds; once it is open it takes over and the SSE stream is closed.
  // What both delivered meanwhile is dropped by seq, and the WebSocket replays from its
  // `after`, so the move has neither a gap nor a duplicate.

  scheduleProbe() {
    clearTimeout(this.probeTimer);
    this.probeAttempt++;
    this.probeTimer = setTimeout(() => this.startProbe(), backoffDelay(this.probeAttempt, WS_RETRY_START_MS, WS_RETRY_CAP_MS));
  }

  startProbe() {
    this.probeTimer = 0;
    const current = this.conn;
    if (this.stopped || !current || current.kind !== "sse" || !current.opened) return;
    const c = { kind: "ws", probe: true, opened: false, openedAt: 0, behind: 0, behindAt: -1, attemptBefore: 0 };
    this.probe = c;
    c.openTimer = setTimeout(() => { if (this.probe === c) this.probeFailed(); }, OPEN_TIMEOUT_MS);
    this.openWs(c);
  }

  probeFailed() {
    this.dropProbe();
    if (this.conn && this.conn.kind === "sse" && this.conn.opened) this.scheduleProbe();
  }

  dropProbe() {
    clearTimeout(this.probeTimer);
    this.probeTimer = 0;
    const p = this.probe;
    this.probe = null;
    if (p) closeConn(p);
  }

  promote(c) {
    this.probe = null;
    c.probe = false;
    this.probeAttempt = 0;
    this.dropConn();
    this.conn = c;
    this.wentLive(c);
  }

  // ---- WebSocket

  openWs(c) {
    let ws;
    try {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      ws = new WebSocket(`${scheme}//${location.host}${this.url("/ws")}`);
    } catch (e) {
      setTimeout(() => (c.probe ? this.probeFailed() : this.failed(c, `could not start (${e.message})`)), 0);
      return;
    }
    c.ws = ws;
    ws.onopen = () => {
      if (c.probe) {
        if (this.probe === c) this.promote(c); else closeConn(c);
      } else if (this.conn === c) {
        this.wentLive(c);
      } else {
        return;
      }
      this.armSilence(c);
    };
    ws.onmessage = (ev) => {
      if (this.conn !== c) return;
      this.armSilence(c);
      if (typeof ev.data !== "string") return;
      let frame;
      try { frame = readFrame(ev.data); } catch (e) { console.warn("pipeline: bad frame", e); return; }
      if (frame.event === "message") this.opts.onMessage(frame.data);
      else if (frame.event === "ping") this.onPing(c, frame.data);
      else if (frame.event === "gap") this.opts.onGap(frame.data);
      else if (frame.event === "reset") this.opts.onReset(frame.data);
    };
    ws.onerror = () => { /* a close event follows */ };
    ws.onclose = (ev) => {
      if (c.probe) { if (this.probe === c) this.probeFailed(); return; }
      if (this.conn !== c) return;
      if (!c.opened) { this.failed(c, `closed before opening (code ${ev.code})`); return; }
      const why = ev.code === 1013 ? "server said this client is too slow (1013)"
        : ev.code === 1001 ? "server going away (1001)"
        : `WebSocket closed (code ${ev.code})`;
      this.ended(c, why);
    };
  }

  // A ping carries the newest stored seq. Being behind it is normal for a moment; behind on
  // two pings in a row with nothing arriving in between means something was missed:
  // reconnect, and the server replays from the page's last seq. (With a channel shown the
  // newest seq may belong to another channel, so then the ping says nothing about a miss.)
  onPing(c, data) {
    this.opts.onPing(data || {});
    const s = data && data.seq;
    const mine = this.opts.after();
    if (this.opts.filtered || !Number.isSafeInteger(s) || s <= mine) { c.behind = 0; return; }
    c.behind = c.behindAt === mine ? c.behind + 1 : 1;
    c.behindAt = mine;
    if (c.behind >= 2) this.ended(c, `server has seq ${s}, page has ${mine}: resuming`);
  }

  // ---- Server-Sent Events

  openSse(c) {
    let es;
    try {
      es = new EventSource(this.url("/events"));
    } catch (e) {
      setTimeout(() => this.failed(c, `could not start (${e.message})`), 0);
      return;
    }
    c.es = es;
    es.onopen = () => { if (this.conn === c) this.wentLive(c); };
    const read = (handler, parse) => (ev) => {
      if (this.conn !== c) return;
      let data;
      try { data = parse(ev.data); } catch (e) { console.warn("pipeline: bad event", e); return; }
      handler(data);
    };
    es.addEventListener("message", read((m) => this.opts.onMessage(m), (t) => readMessage(t)));
    es.addEventListener("gap", read((d) => this.opts.onGap(d), JSON.parse));
    es.addEventListener("reset", read((d) => this.opts.onReset(d), JSON.parse));
    // EventSource would reconnect by itself from its Last-Event-ID; the page reconnects
    // itself instead, so it always resumes from the newest seq it holds.
    es.onerror = () => {
      if (this.conn !== c) return;
      if (!c.opened) this.failed(c, "could not connect");
      else this.ended(c, "SSE stream ended");
    };
  }
}

function closeConn(c) {
  clearTimeout(c.openTimer);
  clearTimeout(c.silenceTimer);
  try {
    if (c.ws) c.ws.close(1000);
    if (c.es) c.es.close();
  } catch (_) { /* already closed */ }
}

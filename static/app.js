"use strict";
// The live page: history over REST, then live over WebSocket (SSE fallback).
// Everything that comes from the server is put on the page with textContent or
// setAttribute only, never as HTML.
(() => {
  const HISTORY_TAIL = 500;
  const MAX_DOM = 2000;              // at most this many entries in the list
  const TRIM_TO = 1900;              // ... trimmed back to this many, oldest first
  const MAX_PAYLOAD_CHARS = 100000;  // longer pretty payloads are cut on screen
  const BACKOFF_START_MS = 250;
  const BACKOFF_CAP_MS = 10000;
  const OPEN_TIMEOUT_MS = 8000;      // a stream that has not opened by then has failed
  const WS_SILENCE_MS = 45000;       // the server pings at least every 15 s
  const FLAPPING_MS = 1000;          // a connection that dies sooner does not reset the back-off
  const FILTER_DEBOUNCE_MS = 80;
  const SEQS_MAX = 1000000;          // window.__pipeline.seqs keeps at most this many (newest)

  const $ = (id) => document.getElementById(id);
  const els = {
    status: $("status"), list: $("messages"), count: $("count"), caption: $("caption"),
    empty: $("empty"), filter: $("filter"), pin: $("pin"), notice: $("notice"),
    form: $("send-form"), body: $("send-body"), button: $("send-button"),
    result: $("send-result"), token: $("send-token"),
  };

  const wanted = new URLSearchParams(location.search).get("transport");
  const mode = wanted === "ws" || wanted === "sse" ? wanted : "auto";

  const pipeline = {
    seqs: [],          // every seq rendered, in the order rendered
    transport: null,   // "ws" | "sse" while live, null otherwise
    mode,              // "auto" | "ws" | "sse"
    lastSeq: 0,        // highest seq accepted (rendered or about to be, this frame)
    ignored: 0,        // messages dropped because their seq was already seen
    connects: 0,       // streams opened (attempts)
    flushes: 0,        // DOM updates (one DocumentFragment each)
  };
  window.__pipeline = pipeline;

  // ---------- JSON: keep numbers exactly as sent (1.0, big integers) ----------
  // Where the browser has JSON.rawJSON and reviver source access, a number whose
  // JS value would print differently from its source text is kept as raw JSON,
  // so JSON.stringify(payload, null, 2) shows what the sender wrote.
  const RAW_OK = (() => {
    try {
      if (typeof JSON.rawJSON !== "function") return false;
      const v = JSON.parse("[1.0]", (k, val, ctx) =>
        typeof val === "number" && ctx && ctx.source === "1.0" ? JSON.rawJSON(ctx.source) : val);
      return JSON.stringify(v) === "[1.0]";
    } catch (_) { return false; }
  })();
  function keepRawNumbers(key, value, context) {
    if (typeof value === "number" && context && typeof context.source === "string"
        && String(value) !== context.source) {
      return JSON.rawJSON(context.source);
    }
    return value;
  }
  const parseJson = (text) => (RAW_OK ? JSON.parse(text, keepRawNumbers) : JSON.parse(text));

  // ---------- formatting ----------
  const pad = (n, w = 2) => String(n).padStart(w, "0");

  // ISO 8601 with up to microseconds -> epoch milliseconds (fractional).
  function parseTs(s) {
    if (typeof s !== "string") return NaN;
    const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:[.,](\d+))?(Z|z|[+-]\d\d:?\d\d)?$/.exec(s.trim());
    if (!m) return Date.parse(s);
    let zone = m[3] || "Z";
    if (/^[+-]\d{4}$/.test(zone)) zone = zone.slice(0, 3) + ":" + zone.slice(3);
    const base = Date.parse(m[1] + zone.toUpperCase());
    return m[2] ? base + Number("0." + m[2]) * 1000 : base;
  }

  function fmtClock(ms) {
    if (!Number.isFinite(ms)) return "?";
    const d = new Date(ms);
    const now = new Date();
    const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
    const sameDay = d.getFullYear() === now.getFullYear() && d.getMonth() === now.getMonth()
      && d.getDate() === now.getDate();
    return sameDay ? time : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
  }

  function fmtDelay(ms) {
    if (!Number.isFinite(ms)) return "—";
    const sign = ms < 0 ? "−" : "";
    const a = Math.abs(ms);
    let s;
    if (a < 10) s = `${a.toFixed(1)} ms`;
    else if (a < 1000) s = `${Math.round(a)} ms`;
    else if (a < 60000) s = `${(a / 1000).toFixed(1)} s`;
    else if (a < 3600000) s = `${(a / 60000).toFixed(1)} min`;
    else if (a < 86400000) s = `${(a / 3600000).toFixed(1)} h`;
    else s = `${(a / 86400000).toFixed(1)} d`;
    return sign + s;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // ---------- status badge ----------
  function setStatus(state, text, title) {
    els.status.dataset.state = state;
    els.status.textContent = text;
    if (title) els.status.title = title; else els.status.removeAttribute("title");
    pipeline.transport = state === "ws" || state === "sse" ? state : null;
  }

  function showNotice(text) {
    if (text) { els.notice.textContent = text; els.notice.hidden = false; }
    else { els.notice.textContent = ""; els.notice.hidden = true; }
  }

  // ---------- the list ----------
  let queue = [];            // accepted, not yet on screen
  let total = 0;             // messages rendered since load
  let inDom = 0;             // entries currently in the list
  let shown = 0;             // entries in the list that match the filter
  let droppedFromDom = 0;
  let pinned = true;
  let newWhilePaused = 0;
  let filterText = "";
  const searchText = new WeakMap();  // entry -> lowercased payload + id
  let pendingSend = null;            // {id} of the last message sent from the form
  // Entries use content-visibility:auto, so off-screen ones cost nothing; an entry is
  // laid out at an estimated height until the browser has seen it on screen. So when
  // pinned, the list is re-pinned on the following frames until its height stops changing.
  let settleId = 0;
  let settleFrames = 0;
  let settleHeight = -1;
  function startSettling() {
    settleFrames = 0;
    settleHeight = -1;
    if (!settleId) settleId = requestAnimationFrame(settle);
  }
  function settle() {
    settleId = 0;
    if (!pinned || queue.length) return;   // a flush is coming: it re-pins first
    const h = els.list.scrollHeight;
    pinToNewest();
    if (h !== settleHeight && ++settleFrames < 10) {
      settleHeight = h;
      settleId = requestAnimationFrame(settle);
    }
  }

  function accept(m) {
    if (!m || typeof m !== "object" || !Number.isSafeInteger(m.seq) || m.seq <= 0) {
      console.warn("pipeline: ignoring a malformed message", m);
      return false;
    }
    if (m.seq <= pipeline.lastSeq) { pipeline.ignored++; return false; }
    pipeline.lastSeq = m.seq;
    queue.push(m);
    scheduleFlush();
    return true;
  }

  // Incoming messages are queued and put on the page in one DocumentFragment per
  // animation frame. If the frames that do so take longer than a frame's time (a slow
  // machine, thousands of entries), flushes are spaced out so that the page keeps most
  // of its time for the reader: each flush then carries more messages.
  let rafId = 0;
  let flushTimer = 0;
  let lastFlushAt = -1e9;
  let flushFrameMs = 0;      // smoothed duration of a frame that flushed
  function flushGap() {
    return Math.min(250, Math.max(0, (flushFrameMs - 20) * 3));
  }
  function scheduleFlush() {
    if (rafId || flushTimer) return;
    rafId = requestAnimationFrame(onFrame);
    // requestAnimationFrame does not run in a hidden tab; a timer keeps the queue short there.
    flushTimer = setTimeout(flush, 1000);
  }
  function onFrame() {
    rafId = 0;
    if (performance.now() - lastFlushAt < flushGap()) { rafId = requestAnimationFrame(onFrame); return; }
    flush();
  }
  function measureFlushFrame(startedAt) {
    requestAnimationFrame(() => {
      const ms = performance.now() - startedAt;
      if (!document.hidden && ms < 2000) flushFrameMs = flushFrameMs ? flushFrameMs * 0.7 + ms * 0.3 : ms;
    });
  }

  function matches(entry) {
    return !filterText || searchText.get(entry).includes(filterText);
  }

  function renderEntry(m, now) {
    const li = el("li", "msg");
    const id = m.id == null ? "" : String(m.id);
    li.dataset.seq = String(m.seq);
    li.dataset.id = id;

    const received = parseTs(m.received_at);
    const persisted = parseTs(m.persisted_at);
    const storeMs = persisted - received;
    const screenMs = now - received;

    const meta = el("div", "meta");
    meta.append(el("span", "seq", `#${m.seq}`));
    meta.append(el("code", "id", id));
    const t = el("time", "received", fmtClock(received));
    if (typeof m.received_at === "string") {
      t.setAttribute("datetime", m.received_at);
      t.title = `received ${m.received_at}` + (typeof m.persisted_at === "string" ? `\nstored ${m.persisted_at}` : "");
    }
    meta.append(t);
    const d1 = el("span", "delay store");
    d1.append(el("span", "lbl", "stored "), fmtDelay(storeMs));
    d1.title = "receipt → stored (persisted_at − received_at)";
    const d2 = el("span", "delay screen");
    d2.append(el("span", "lbl", "on screen "), fmtDelay(screenMs));
    d2.title = "receipt → on this screen (depends on this device's clock)";
    meta.append(d1, d2);
    if (Number.isFinite(storeMs)) li.dataset.storeMs = storeMs.toFixed(3);
    if (Number.isFinite(screenMs)) li.dataset.screenMs = screenMs.toFixed(3);
    li.append(meta);

    let text;
    try { text = JSON.stringify(m.payload, null, 2); } catch (_) { text = undefined; }
    if (text === undefined) text = "(no payload)";
    const pre = el("pre", "payload");
    if (text.length > MAX_PAYLOAD_CHARS) {
      pre.textContent = text.slice(0, MAX_PAYLOAD_CHARS);
      li.append(pre);
      const more = el("p", "truncated", `… ${text.length - MAX_PAYLOAD_CHARS} more characters not shown — `);
      const a = el("a", null, "full message");
      a.href = "/messages/" + encodeURIComponent(id);
      more.append(a);
      li.append(more);
      text = text.slice(0, MAX_PAYLOAD_CHARS);
    } else {
      pre.textContent = text;
      li.append(pre);
    }
    searchText.set(li, (text + "\n" + id).toLowerCase());
    if (!matches(li)) li.hidden = true; else shown++;
    return li;
  }

  function flush() {
    if (rafId) { cancelAnimationFrame(rafId); rafId = 0; }
    if (flushTimer) { clearTimeout(flushTimer); flushTimer = 0; }
    if (!queue.length) return;
    const batch = queue;
    queue = [];
    const now = Date.now();
    lastFlushAt = performance.now();
    measureFlushFrame(lastFlushAt);
    pipeline.flushes++;
    const list = els.list;

    // The list is in ascending seq order in the DOM and shown newest-on-top by CSS
    // (column-reverse): appending never moves the entries already there, which keeps
    // each frame's work small however many entries the list holds.
    // Only the newest MAX_DOM of a large batch can stay in the list: build just those.
    const first = Math.max(0, batch.length - MAX_DOM);
    if (pinned) pinToNewest();  // settles the previous frame's entries; layout is clean here
    const frag = document.createDocumentFragment();
    for (let i = first; i < batch.length; i++) frag.append(renderEntry(batch[i], now));
    for (let i = 0; i < batch.length; i++) pipeline.seqs.push(batch[i].seq);
    if (pipeline.seqs.length > SEQS_MAX) pipeline.seqs.splice(0, pipeline.seqs.length - SEQS_MAX + SEQS_MAX / 10);
    total += batch.length;
    droppedFromDom += first;
    list.append(frag);
    inDom += batch.length - first;

    if (inDom > MAX_DOM) {
      // Trimming the oldest moves every entry, so do it in steps of MAX_DOM - TRIM_TO.
      // Paused: the reader's view must not move; the newest shown entry stays: the anchor.
      let anchor = pinned ? null : list.lastElementChild;
      while (anchor && anchor.hidden) anchor = anchor.previousElementSibling;
      const anchorTop = anchor ? anchor.getBoundingClientRect().top : 0;
      while (inDom > TRIM_TO) {
        const oldest = list.firstElementChild;
        if (!oldest) break;
        if (!oldest.hidden) shown--;
        oldest.remove();
        inDom--;
        droppedFromDom++;
      }
      if (anchor) list.scrollTop += anchor.getBoundingClientRect().top - anchorTop;
    }
    if (pinned) {
      pinToNewest();
      startSettling();
    } else {
      newWhilePaused += batch.length;
      updatePin();
    }

    if (pendingSend) {
      for (const m of batch) {
        if (m.id === pendingSend.id) { noteSentShown(m); break; }
      }
    }
    updateCount();
  }

  // column-reverse: scrollTop is 0 at the oldest end and negative towards the newest;
  // a too-small value clamps to the newest end.
  function pinToNewest() {
    els.list.scrollTop = -els.list.scrollHeight;
  }

  function updateCount() {
    els.count.textContent = `${total} messages (${shown} shown)`;
    els.count.dataset.total = String(total);
    els.count.dataset.shown = String(shown);
    els.count.dataset.inDom = String(inDom);
    els.caption.textContent = droppedFromDom
      ? `Newest on top. The page keeps at most the newest ${MAX_DOM}; ${droppedFromDom} older ones were removed from it (GET /messages has them all).`
      : "Newest on top.";
    els.empty.hidden = inDom > 0 && shown > 0;
    if (!els.empty.hidden) {
      els.empty.textContent = inDom === 0 ? "No messages yet — send one with the form." : "No message matches the filter.";
    }
  }

  function applyFilter() {
    filterText = els.filter.value.trim().toLowerCase();
    shown = 0;
    for (const li of els.list.children) {
      const ok = matches(li);
      li.hidden = !ok;
      if (ok) shown++;
    }
    if (pinned) { pinToNewest(); startSettling(); }
    updateCount();
  }

  let filterTimer = 0;
  els.filter.addEventListener("input", () => {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(applyFilter, FILTER_DEBOUNCE_MS);
  });
  els.filter.addEventListener("keydown", (e) => {
    if (e.key === "Enter") { clearTimeout(filterTimer); applyFilter(); }
  });
  els.filter.addEventListener("search", () => { clearTimeout(filterTimer); applyFilter(); });

  function updatePin() {
    els.pin.setAttribute("aria-pressed", String(pinned));
    els.pin.dataset.pinned = String(pinned);
    els.pin.textContent = pinned ? "Pinned to newest"
      : newWhilePaused ? `Paused · ${newWhilePaused} new` : "Paused";
    els.pin.title = pinned ? "Auto-scroll is on: click to pause it" : "Auto-scroll is paused: click to jump to the newest";
  }
  function setPinned(p) {
    pinned = p;
    if (p) { newWhilePaused = 0; pinToNewest(); startSettling(); }
    updatePin();
  }
  els.pin.addEventListener("click", () => setPinned(!pinned));
  // The reader scrolling away from the newest pauses auto-scroll (so the list stops moving
  // under them); scrolling back to the newest resumes it. Only scrolls that follow the
  // reader's own input count: the page's own scrolling and entries settling in size don't.
  let userScrollAt = -1e9;
  const markUserScroll = () => { userScrollAt = performance.now(); };
  for (const type of ["wheel", "touchstart", "touchmove", "pointerdown", "keydown"]) {
    els.list.addEventListener(type, markUserScroll, { passive: true });
  }
  els.list.addEventListener("scroll", () => {
    if (performance.now() - userScrollAt > 1000) return;
    const l = els.list;
    // column-reverse: scrollTop is 0 at the oldest end and negative towards the newest.
    const fromNewest = l.scrollHeight - l.clientHeight + l.scrollTop;
    if (pinned && fromNewest > 48) setPinned(false);
    else if (!pinned && fromNewest < 2) setPinned(true);
  }, { passive: true });

  // ---------- live connection ----------
  let conn = null;          // the current stream: {kind, ws|es, opened, openedAt, ...}
  let attempt = 0;          // failed attempts since the last time we were live
  let reconnectTimer = 0;
  let preferSse = false;    // auto mode: WebSocket failed and SSE worked, keep SSE
  let fellBack = false;     // auto mode: this round already fell back from WS to SSE

  function backoffDelay(n) {
    const base = Math.min(BACKOFF_CAP_MS, BACKOFF_START_MS * 2 ** Math.max(0, n - 1));
    return Math.round(base / 2 + Math.random() * base / 2);  // jitter: 50–100 % of base
  }

  function dropConn() {
    const c = conn;
    conn = null;
    if (!c) return;
    clearTimeout(c.openTimer);
    clearTimeout(c.silenceTimer);
    try {
      if (c.ws) c.ws.close(1000);
      if (c.es) c.es.close();
    } catch (_) { /* already closed */ }
  }

  function scheduleReconnect(why) {
    dropConn();
    clearTimeout(reconnectTimer);
    attempt++;
    const delay = backoffDelay(attempt);
    setStatus("reconnecting", `reconnecting (attempt ${attempt})`, why ? `${why}; retrying in ${delay} ms` : undefined);
    reconnectTimer = setTimeout(connect, delay);
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = 0;
    fellBack = false;
    const kind = mode === "auto" ? (preferSse ? "sse" : "ws") : mode;
    open(kind);
  }

  function open(kind) {
    dropConn();
    pipeline.connects++;
    const c = { kind, opened: false, openedAt: 0, behind: 0, behindAt: -1, attemptBefore: attempt };
    conn = c;
    c.openTimer = setTimeout(() => { if (conn === c && !c.opened) failed(c, "timed out opening"); }, OPEN_TIMEOUT_MS);
    if (kind === "ws") openWs(c); else openSse(c);
  }

  function wentLive(c) {
    c.opened = true;
    c.openedAt = Date.now();
    c.attemptBefore = attempt;
    clearTimeout(c.openTimer);
    attempt = 0;
    showNotice("");
    if (c.kind === "ws") {
      setStatus("ws", "live · WebSocket");
    } else {
      if (mode === "auto") preferSse = true;
      setStatus("sse", "live · SSE", mode === "sse" ? "Server-Sent Events (forced by ?transport=sse)"
        : "Server-Sent Events (WebSocket unavailable)");
    }
  }

  // The stream could not be opened at all.
  function failed(c, why) {
    if (conn !== c) return;
    dropConn();
    if (mode === "auto" && c.kind === "ws" && !fellBack) {
      fellBack = true;          // WebSocket did not work: try SSE at once
      open("sse");
      return;
    }
    if (mode === "auto" && c.kind === "sse") preferSse = false;  // both failed: next round tries WS first again
    scheduleReconnect(`${c.kind === "ws" ? "WebSocket" : "SSE"} ${why}`);
  }

  // An open stream ended.
  function ended(c, why) {
    if (conn !== c) return;
    if (Date.now() - c.openedAt < FLAPPING_MS) attempt = c.attemptBefore;  // don't spin on a flapping server
    scheduleReconnect(why);
  }

  function armSilence(c) {
    clearTimeout(c.silenceTimer);
    c.silenceTimer = setTimeout(() => { if (conn === c) ended(c, "no frame from the server for 45 s"); }, WS_SILENCE_MS);
  }

  function streamUrl(path) {
    return `${path}?after=${encodeURIComponent(String(pipeline.lastSeq))}`;
  }

  function openWs(c) {
    let ws;
    try {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      ws = new WebSocket(`${scheme}//${location.host}${streamUrl("/ws")}`);
    } catch (e) {
      setTimeout(() => failed(c, `could not start (${e.message})`), 0);
      return;
    }
    c.ws = ws;
    ws.onopen = () => {
      if (conn !== c) return;
      wentLive(c);
      armSilence(c);
    };
    ws.onmessage = (ev) => {
      if (conn !== c) return;
      armSilence(c);
      if (typeof ev.data !== "string") return;
      let frame;
      try { frame = parseJson(ev.data); } catch (e) { console.warn("pipeline: bad frame", e); return; }
      if (!frame || typeof frame !== "object") return;
      if (frame.event === "message") accept(frame.data);
      else if (frame.event === "ping") onPing(c, frame.data);
    };
    ws.onerror = () => { /* a close event follows */ };
    ws.onclose = (ev) => {
      if (conn !== c) return;
      if (!c.opened) { failed(c, `closed before opening (code ${ev.code})`); return; }
      const why = ev.code === 1013 ? "server said this client is too slow (1013)"
        : ev.code === 1001 ? "server going away (1001)"
        : `WebSocket closed (code ${ev.code})`;
      ended(c, why);
    };
  }

  // A ping carries the newest stored seq. Being behind it is normal for a moment;
  // behind on two pings in a row with nothing arriving in between means we missed
  // something: reconnect, and the server replays from our last seq.
  function onPing(c, data) {
    const s = data && data.seq;
    if (!Number.isSafeInteger(s) || s <= pipeline.lastSeq) { c.behind = 0; return; }
    c.behind = c.behindAt === pipeline.lastSeq ? c.behind + 1 : 1;
    c.behindAt = pipeline.lastSeq;
    if (c.behind >= 2) ended(c, `server has seq ${s}, page has ${pipeline.lastSeq}: resuming`);
  }

  function openSse(c) {
    let es;
    try {
      es = new EventSource(streamUrl("/events"));
    } catch (e) {
      setTimeout(() => failed(c, `could not start (${e.message})`), 0);
      return;
    }
    c.es = es;
    es.onopen = () => { if (conn === c) wentLive(c); };
    es.onmessage = (ev) => {
      if (conn !== c) return;
      let m;
      try { m = parseJson(ev.data); } catch (e) { console.warn("pipeline: bad event", e); return; }
      accept(m);
    };
    // EventSource would reconnect by itself from its Last-Event-ID; we reconnect
    // ourselves instead so we always resume from the last seq we rendered.
    es.onerror = () => {
      if (conn !== c) return;
      if (!c.opened) failed(c, "could not connect");
      else ended(c, "SSE stream ended");
    };
  }

  window.addEventListener("online", () => {
    if (reconnectTimer) connect();
  });

  // ---------- history, then live ----------
  let historyAttempt = 0;
  async function loadHistory() {
    try {
      const res = await fetch(`/messages?tail=${HISTORY_TAIL}`, {
        headers: { Accept: "application/json" }, cache: "no-store",
      });
      if (!res.ok) throw new Error(await describeError(res));
      const list = parseJson(await res.text());
      if (!Array.isArray(list)) throw new Error("the server did not answer with a list");
      list.sort((a, b) => (a && b ? a.seq - b.seq : 0));
      for (const m of list) accept(m);
      flush();
    } catch (e) {
      historyAttempt++;
      const delay = backoffDelay(historyAttempt);
      setStatus("reconnecting", `reconnecting (attempt ${historyAttempt})`);
      showNotice(`Could not load the stored messages: ${String(e.message).replace(/[.\s]+$/, "")}. Retrying…`);
      setTimeout(loadHistory, delay);
      return;
    }
    showNotice("");
    connect();
  }

  // ---------- send form ----------
  async function describeError(res) {
    let title = "";
    let detail = "";
    try {
      const ct = res.headers.get("content-type") || "";
      if (ct.includes("json")) {
        const p = await res.json();
        if (p && typeof p === "object") {
          if (p.title != null) title = String(p.title);
          if (p.detail != null) detail = String(p.detail);
        }
      }
    } catch (_) { /* not JSON after all */ }
    if (!title) title = res.statusText || `HTTP ${res.status}`;
    return detail ? `${title}: ${detail}` : title;
  }

  function showResult(status, ...parts) {
    els.result.dataset.status = status;
    els.result.replaceChildren(...parts);
  }

  function noteSentShown(m) {
    const p = pendingSend;
    pendingSend = null;
    if (!p || els.result.dataset.status !== "ok") return;
    els.result.append(` — on screen as #${m.seq}`);
  }

  els.body.addEventListener("input", () => {
    if (els.body.getAttribute("aria-invalid") === "true") {
      els.body.removeAttribute("aria-invalid");
      showResult("");
    }
  });
  els.body.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      els.form.requestSubmit();
    }
  });

  els.form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (els.button.disabled) return;
    const text = els.body.value;
    if (!text.trim()) {
      els.body.setAttribute("aria-invalid", "true");
      showResult("invalid", "Invalid JSON: the document is empty");
      return;
    }
    try {
      JSON.parse(text);
    } catch (err) {
      els.body.setAttribute("aria-invalid", "true");
      showResult("invalid", `Invalid JSON: ${err.message}`);
      return;
    }
    els.body.removeAttribute("aria-invalid");
    els.button.disabled = true;
    showResult("pending", "Sending…");
    try {
      const headers = { "Content-Type": "application/json", Accept: "application/json, application/problem+json" };
      const token = els.token.value.trim();
      if (token) headers.Authorization = `Bearer ${token}`;
      // Send the text as typed, so the server stores it exactly.
      const res = await fetch("/messages", { method: "POST", headers, body: text });
      if (res.ok) {
        let id = "";
        try { const r = await res.json(); if (r && r.id != null) id = String(r.id); } catch (_) { /* no body */ }
        els.result.dataset.id = id;
        showResult("ok", `Queued (${res.status}) — id `, el("code", null, id || "?"));
        pendingSend = id ? { id } : null;
        // It may already be on screen (the stream can beat the POST's answer).
        const there = id && els.list.querySelector(`.msg[data-id="${CSS.escape(id)}"]`);
        if (there) noteSentShown({ seq: Number(there.dataset.seq) });
      } else {
        const msg = await describeError(res);
        const retry = res.headers.get("retry-after");
        showResult("error", msg, el("span", "http", ` (HTTP ${res.status}${retry ? `, retry after ${retry} s` : ""})`));
      }
    } catch (err) {
      showResult("error", `Network error: ${err.message}`);
    } finally {
      els.button.disabled = false;
    }
  });

  // ---------- start ----------
  updatePin();
  updateCount();
  loadHistory();
})();

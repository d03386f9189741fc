// The list of messages and how each one is drawn. Windowed: only the entries near the visible
// part of the list are in the DOM (each absolutely placed at its offset), so 10,000 loaded
// messages cost no more to scroll or filter than a few dozen. Heights start as estimates and
// are replaced by measured ones as entries are drawn; the entry at the top of the view is the
// anchor that keeps the reader's view still while heights above it change.
// Payloads are text (textContent), never HTML.

import { curlCommand } from "./curl.js";
import { el, fmtDateTime, fmtDelay, parseTs, plural } from "./format.js";
import { indent } from "./rawjson.js";

const OVERSCAN_PX = 700;
const MAX_PAYLOAD_CHARS = 100000;  // longer payloads are cut on screen (copy still has all)
const FILTER_DEBOUNCE_MS = 60;

function estimateHeight(raw) {
  let lines = 1;
  const n = Math.min(raw.length, 2000);
  for (let i = 0; i < n; i++) {
    const c = raw.charCodeAt(i);
    if (c === 44 || c === 91 || c === 123) lines++;   // , [ {
  }
  return 62 + 18 * Math.min(lines + 1, 20);
}

/** One message as the list keeps it. `live`: it arrived over a stream (not history). */
export function makeItem(m, live, nowMs) {
  const received = parseTs(m.received_at);
  const persisted = parseTs(m.persisted_at);
  const raw = typeof m.raw === "string" ? m.raw : "";
  const id = m.id == null ? "" : String(m.id);
  return {
    seq: m.seq,
    id,
    channel: typeof m.channel === "string" ? m.channel : "",
    raw,
    receivedAt: typeof m.received_at === "string" ? m.received_at : "",
    persistedAt: typeof m.persisted_at === "string" ? m.persisted_at : "",
    received,
    storeMs: persisted - received,
    screenMs: live ? nowMs - received : null,
    search: (raw.length > MAX_PAYLOAD_CHARS ? raw.slice(0, MAX_PAYLOAD_CHARS) : raw).toLowerCase() + "\n" + id,
    pretty: null,
    showRaw: false,
    estimate: estimateHeight(raw),
    h: 0,   // measured height; 0 until the entry has been drawn (then the estimate is used)
  };
}

export class MessageList {
  /** els: {list, count, empty, emptyText, pin, filter}; opts: {showChannel, tokenRequired(), channel} */
  constructor(els, opts) {
    this.els = els;
    this.opts = opts;
    this.items = [];          // ascending seq
    this.view = [];           // the items that match the filter, ascending seq
    this.bySeq = new Map();
    this.rendered = new Map();  // item -> li
    this.remeasure = new Set();  // drawn entries whose content changed
    this.offsets = new Float64Array(1);
    this.dirty = true;
    this.filter = "";
    this.pinned = true;
    this.newWhilePaused = 0;
    this.rendering = false;
    this.scale = 1;           // measured / estimated height, learnt from the entries drawn
    this.sizer = el("li", "sizer");
    this.sizer.setAttribute("aria-hidden", "true");
    els.list.append(this.sizer);

    els.list.addEventListener("scroll", () => this.onScroll(), { passive: true });
    els.list.addEventListener("click", (e) => this.onClick(e));
    els.pin.addEventListener("click", () => this.setPinned(!this.pinned));
    let timer = 0;
    const apply = () => { clearTimeout(timer); this.setFilter(els.filter.value); };
    els.filter.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(apply, FILTER_DEBOUNCE_MS); });
    els.filter.addEventListener("keydown", (e) => { if (e.key === "Enter") apply(); });
    new ResizeObserver(() => {   // another width: the entries drawn may wrap differently
      for (const item of this.rendered.keys()) this.remeasure.add(item);
      this.render();
    }).observe(els.list);
    this.updatePin();
    this.updateCount();
  }

  get size() { return this.items.length; }
  get firstSeq() { return this.items.length ? this.items[0].seq : 0; }

  /** The item with this id among the newest few hundred (where a message just sent is). */
  findById(id) {
    for (let i = this.items.length - 1; i >= Math.max(0, this.items.length - 500); i--) {
      if (this.items[i].id === id) return this.items[i];
    }
    return null;
  }

  /** Newer messages (ascending, all above what the list holds): they go on top. */
  addNewer(items) {
    let added = 0;
    for (const item of items) {
      this.items.push(item);
      this.bySeq.set(item.seq, item);
      if (this.matches(item)) { this.view.push(item); added += this.height(item); }
    }
    this.dirty = true;
    if (!this.pinned) {
      this.newWhilePaused += items.length;
      this.els.list.scrollTop += added;  // the reader's view stays where it was
      this.updatePin();
    }
    this.render();
    this.updateCount();
  }

  /** Older messages (ascending, all below what the list holds): they go at the bottom. */
  addOlder(items) {
    for (const item of items) this.bySeq.set(item.seq, item);
    this.items = items.concat(this.items);
    this.view = items.filter((i) => this.matches(i)).concat(this.view);
    this.dirty = true;
    this.render();
    this.updateCount();
  }

  clear() {
    for (const li of this.rendered.values()) li.remove();
    this.rendered.clear();
    this.items = [];
    this.view = [];
    this.bySeq.clear();
    this.dirty = true;
    this.render();
    this.updateCount();
  }

  matches(item) {
    return !this.filter || item.search.includes(this.filter);
  }

  setFilter(text) {
    this.filter = text.trim().toLowerCase();
    this.view = this.filter ? this.items.filter((i) => this.matches(i)) : this.items.slice();
    this.dirty = true;
    if (this.pinned) this.els.list.scrollTop = 0;
    this.render();
    this.updateCount();
  }

  setPinned(p) {
    this.pinned = p;
    if (p) { this.newWhilePaused = 0; this.els.list.scrollTop = 0; this.render(); }
    this.updatePin();
  }

  onScroll() {
    if (this.rendering) return;
    const atTop = this.els.list.scrollTop <= 2;
    if (atTop !== this.pinned) {
      this.pinned = atTop;
      if (atTop) this.newWhilePaused = 0;
      this.updatePin();
    }
    this.render();
  }

  updatePin() {
    const { pin } = this.els;
    pin.setAttribute("aria-pressed", String(this.pinned));
    pin.dataset.pinned = String(this.pinned);
    pin.textContent = this.pinned ? "Pinned to newest"
      : this.newWhilePaused ? `Paused · ${this.newWhilePaused} new` : "Paused";
    pin.title = this.pinned ? "Auto-scroll is on: click to pause it" : "Auto-scroll is paused: click to jump to the newest";
  }

  updateCount() {
    const { count, empty, emptyText } = this.els;
    const total = this.items.length;
    const shown = this.view.length;
    count.textContent = `${plural(total, "message")} (${shown} shown)`;
    count.dataset.total = String(total);
    count.dataset.shown = String(shown);
    empty.hidden = shown > 0;
    empty.dataset.kind = total === 0 ? "none" : "filtered";
    if (total > 0) emptyText.textContent = "No message matches the filter.";
  }

  // ---- windowing

  height(item) {
    return item.h || item.estimate * this.scale;
  }

  computeOffsets() {
    const n = this.view.length;
    if (this.offsets.length !== n + 1) this.offsets = new Float64Array(n + 1);
    const o = this.offsets;
    o[0] = 0;
    for (let d = 0; d < n; d++) {  // display order: newest first
      const item = this.view[n - 1 - d];
      o[d + 1] = o[d] + (item.h || item.estimate * this.scale);
    }
    this.sizer.style.height = `${o[n]}px`;
    this.dirty = false;
  }

  /** The display index whose entry covers offset y. */
  indexAt(y) {
    const o = this.offsets;
    let lo = 0;
    let hi = this.view.length - 1;
    if (hi < 0) return 0;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (o[mid] <= y) lo = mid; else hi = mid - 1;
    }
    return lo;
  }

  render() {
    if (this.rendering) return;
    this.rendering = true;
    try {
      for (let pass = 0; pass < 3; pass++) {
        if (!this.renderPass()) break;
      }
    } finally {
      this.rendering = false;
    }
  }

  /** Draws the entries near the view; true if measured heights moved anything. */
  renderPass() {
    const list = this.els.list;
    if (this.dirty) this.computeOffsets();
    const n = this.view.length;
    const top = list.scrollTop;
    const wanted = new Map();
    if (n) {
      const last = this.indexAt(top + list.clientHeight + OVERSCAN_PX);
      for (let d = this.indexAt(Math.max(0, top - OVERSCAN_PX)); d <= last; d++) wanted.set(this.view[n - 1 - d], d);
    }
    for (const [item, li] of this.rendered) {
      if (!wanted.has(item)) { li.remove(); this.rendered.delete(item); }
    }
    const fresh = [];
    for (const [item, d] of wanted) {
      let li = this.rendered.get(item);
      if (!li) { li = this.drawEntry(item); this.rendered.set(item, li); fresh.push(item); }
      place(li, this.offsets[d]);
    }
    if (fresh.length) list.append(...fresh.map((item) => this.rendered.get(item)));
    const toMeasure = fresh.concat([...this.remeasure].filter((item) => wanted.has(item)));
    this.remeasure.clear();
    if (!toMeasure.length) return false;

    // The anchor: the first entry whose top is in view; it must not move on screen.
    let anchor = null;
    let anchorTop = 0;
    for (const [item, d] of wanted) {
      if (this.offsets[d] >= top) { anchor = item; anchorTop = this.offsets[d]; break; }
    }
    let changed = false;
    let measured = 0;
    let estimated = 0;
    for (const item of toMeasure) {
      const h = this.rendered.get(item).offsetHeight;   // one layout for all of them
      if (!h) continue;
      if (!item.showRaw) { measured += h; estimated += item.estimate; }
      if (Math.abs(h - this.height(item)) > 0.5) changed = true;
      item.h = h;
    }
    if (estimated) this.scale = this.scale * 0.8 + (measured / estimated) * 0.2;
    if (!changed) return false;
    this.computeOffsets();
    for (const [item, d] of wanted) place(this.rendered.get(item), this.offsets[d]);
    if (anchor && !this.pinned) {
      const shift = this.offsets[wanted.get(anchor)] - anchorTop;
      if (shift) list.scrollTop = top + shift;
    } else if (this.pinned) {
      list.scrollTop = 0;
    }
    return true;
  }

  // ---- one entry

  drawEntry(item) {
    const li = el("li", "msg");
    li.dataset.seq = String(item.seq);
    li.dataset.id = item.id;
    if (item.channel) li.dataset.channel = item.channel;

    const meta = el("div", "meta");
    meta.append(el("span", "seq", `#${item.seq}`));
    if (this.opts.showChannel && item.channel) meta.append(el("span", "chan", item.channel));
    const t = el("time", "received", fmtDateTime(item.received));
    if (item.receivedAt) {
      t.setAttribute("datetime", item.receivedAt);
      t.title = `received ${item.receivedAt} (UTC)` + (item.persistedAt ? `\nstored ${item.persistedAt} (UTC)` : "");
    }
    meta.append(t);
    const d1 = el("span", "delay store");
    d1.append(el("span", "lbl", "stored "), fmtDelay(item.storeMs));
    d1.title = "receipt → stored (persisted_at − received_at)";
    meta.append(d1);
    if (item.screenMs !== null) {
      const d2 = el("span", "delay screen");
      d2.append(el("span", "lbl", "on screen "), fmtDelay(item.screenMs));
      d2.title = "receipt → on this screen (arrived live; depends on this device's clock)";
      meta.append(d2);
      li.dataset.screenMs = item.screenMs.toFixed(3);
    }
    if (Number.isFinite(item.storeMs)) li.dataset.storeMs = item.storeMs.toFixed(3);
    meta.append(el("code", "id", item.id));
    li.append(meta);

    const actions = el("div", "actions");
    const copy = el("button", "copy", "Copy");
    copy.type = "button";
    copy.dataset.action = "copy";
    copy.title = "Copy the payload exactly as stored";
    const curl = el("button", "copy-curl", "Copy as curl");
    curl.type = "button";
    curl.dataset.action = "curl";
    curl.title = "Copy a curl command that sends this payload again";
    const raw = el("button", "view-raw");
    raw.type = "button";
    raw.dataset.action = "raw";
    actions.append(copy, curl, raw);
    li.append(actions);

    li.append(el("pre", "payload"));
    this.fillPayload(li, item);
    return li;
  }

  fillPayload(li, item) {
    const button = li.querySelector("button.view-raw");
    button.textContent = item.showRaw ? "Pretty" : "Raw";
    button.setAttribute("aria-pressed", String(item.showRaw));
    button.title = item.showRaw ? "Show the payload indented" : "Show the payload exactly as stored";
    li.dataset.view = item.showRaw ? "raw" : "pretty";
    let text = item.raw;
    if (!item.showRaw) {
      if (item.pretty === null) {
        try { item.pretty = indent(item.raw.length > MAX_PAYLOAD_CHARS ? item.raw.slice(0, MAX_PAYLOAD_CHARS) : item.raw); }
        catch (_) { item.pretty = item.raw; }
      }
      text = item.pretty;
    }
    const pre = li.querySelector("pre.payload");
    const old = li.querySelector(".truncated");
    if (old) old.remove();
    if (text.length > MAX_PAYLOAD_CHARS) {
      pre.textContent = text.slice(0, MAX_PAYLOAD_CHARS);
      const more = el("p", "truncated", `… ${item.raw.length - MAX_PAYLOAD_CHARS} more characters not shown — `);
      const a = el("a", null, "full message");
      a.href = "/messages/" + encodeURIComponent(item.id);
      more.append(a);
      pre.after(more);
    } else {
      pre.textContent = text || "(no payload)";
    }
  }

  onClick(e) {
    const button = e.target.closest("button[data-action]");
    if (!button) return;
    const li = button.closest("li.msg");
    const item = li && this.bySeq.get(Number(li.dataset.seq));
    if (!item) return;
    const action = button.dataset.action;
    if (action === "raw") {
      item.showRaw = !item.showRaw;
      this.fillPayload(li, item);
      this.remeasure.add(item);
      this.render();
    } else if (action === "copy") {
      copyText(button, item.raw, "Copy");
    } else if (action === "curl") {
      copyText(button, curlCommand(item.raw, item.channel || this.opts.channel, this.opts.tokenRequired()), "Copy as curl");
    }
  }
}

function place(li, y) {
  const t = `translateY(${y}px)`;
  if (li.style.transform !== t) li.style.transform = t;
}

/** Puts text on the clipboard and says so on the button for a moment. */
export async function copyText(button, text, label) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied ✓";
    button.dataset.copied = "true";
  } catch (err) {
    button.textContent = "Copy failed";
    button.title = `The browser refused the clipboard: ${err.message}`;
  }
  setTimeout(() => { button.textContent = label; delete button.dataset.copied; }, 1500);
}

// The live page: sign in if reads are private, load the newest stored messages, then go live;
// older ones are paged in on demand. This module wires the others together; the page's state
// lives in the one Feed made here, and each module keeps its own.

import { ChannelPicker, channelInUrl } from "./channels.js";
import { LiveChart } from "./chart.js";
import { curlCommand } from "./curl.js";
import { backoffDelay, describeError, plural } from "./format.js";
import { SendForm } from "./form.js";
import { MessageList, copyText, makeItem } from "./list.js";
import { readMessageArray } from "./rawjson.js";
import { Session } from "./session.js";
import { LiveStream } from "./stream.js";

const HISTORY_TAIL = 500;
const OLDER_PAGE = 500;
const NEAR_END_PX = 600;   // scrolled this close to the oldest loaded: load older ones

const $ = (id) => document.getElementById(id);

class Unauthorized extends Error {}

class Feed {
  constructor({ mode, channel, session }) {
    this.channel = channel;          // null: all channels
    this.session = session;
    this.lastSeq = 0;                // the newest seq on the page
    this.epoch = null;               // the database's epoch, once the server has said it
    this.reachedFirst = false;       // the oldest stored message is on the page
    this.loadingOlder = false;
    this.queue = [];                 // live messages not yet on screen
    this.flushFrame = 0;
    this.flushTimer = 0;
    this.checkingSession = false;

    this.list = new MessageList(
      { list: $("messages"), count: $("count"), empty: $("empty"), emptyText: $("empty-text"), pin: $("pin"), filter: $("filter") },
      { showChannel: channel === null, channel: channel || "default", tokenRequired: () => session.ingestTokenRequired },
    );
    this.chart = new LiveChart($("chart"), $("chart-figures"));
    this.picker = new ChannelPicker($("channel"), channel);
    this.form = new SendForm(
      { form: $("send-form"), body: $("send-body"), button: $("send-button"), result: $("send-result"), token: $("send-token"), target: $("send-target") },
      channel || "default",
    );
    this.form.onSent = (id) => {
      const item = this.list.findById(id);
      if (item) this.form.onScreen(item);
    };
    this.stream = new LiveStream({
      mode,
      filtered: channel !== null,
      after: () => this.lastSeq,
      query: () => this.streamQuery(),
      onMessage: (m) => this.accept(m),
      onGap: (d) => this.onGap(d),
      onReset: (d) => this.onReset(d),
      onPing: (d) => { if (typeof d.epoch === "string") this.learnEpoch(d.epoch); },
      onStatus: (state, text, title) => setStatus(state, text, title),
      onTrouble: (attempt) => { if (attempt >= 2) this.checkSession(); },
    });

    $("older").addEventListener("click", () => this.loadOlder());
    $("messages").addEventListener("scroll", () => {
      const l = $("messages");
      if (l.scrollTop + l.clientHeight > l.scrollHeight - NEAR_END_PX) this.loadOlder();
    }, { passive: true });
    $("gap-dismiss").addEventListener("click", () => { $("gap").hidden = true; });
    const emptyCurl = $("empty-curl");
    emptyCurl.textContent = curlCommand('{"hello": "world"}', channel || "default", session.ingestTokenRequired);
    $("empty-copy").addEventListener("click", (e) => copyText(e.currentTarget, emptyCurl.textContent, "Copy"));
    this.updateOlder();
  }

  streamQuery() {
    const q = [];
    if (this.channel) q.push(["channel", this.channel]);
    if (this.epoch) q.push(["epoch", this.epoch]);
    return q;
  }

  readUrl(params) {
    const q = new URLSearchParams(params);
    if (this.channel) q.set("channel", this.channel);
    return `/messages?${q}`;
  }

  /** Stored messages and the database's epoch (null if the server does not say). */
  async read(params) {
    const res = await fetch(this.readUrl(params), { headers: { Accept: "application/json" }, cache: "no-store" });
    if (res.status === 401) throw new Unauthorized(await describeError(res));
    if (!res.ok) throw new Error(await describeError(res));
    const messages = readMessageArray(await res.text()).filter((m) => Number.isSafeInteger(m.seq) && m.seq > 0);
    return { messages, epoch: res.headers.get("pipeline-epoch") };
  }

  learnEpoch(epoch) {
    if (this.epoch && epoch !== this.epoch) { this.onReset({ epoch }); return; }
    this.epoch = epoch;
  }

  /** The newest stored messages, then live; retried with back-off while the server is away. */
  async start() {
    for (let attempt = 1; ; attempt++) {
      try {
        const { messages, epoch } = await this.read({ tail: String(HISTORY_TAIL) });
        if (epoch) this.epoch = epoch;   // the list is empty here: whatever it says is the truth
        this.reachedFirst = messages.length < HISTORY_TAIL;
        const fresh = messages.filter((m) => m.seq > this.lastSeq);
        if (fresh.length) {
          this.lastSeq = fresh[fresh.length - 1].seq;
          this.list.addNewer(fresh.map((m) => makeItem(m, false, 0)));
          for (const m of fresh) this.picker.learn(m.channel);
        }
        break;
      } catch (e) {
        if (e instanceof Unauthorized) { this.signInAgain(); return; }
        setStatus("reconnecting", `reconnecting (attempt ${attempt})`);
        showNotice(`Could not load the stored messages: ${String(e.message).replace(/[.\s]+$/, "")}. Retrying…`);
        await new Promise((resolve) => setTimeout(resolve, backoffDelay(attempt, 250, 10000)));
      }
    }
    showNotice("");
    this.updateOlder();
    this.stream.start();
  }

  /** The OLDER_PAGE messages just below the oldest on the page. */
  async loadOlder() {
    if (this.loadingOlder || this.reachedFirst) return;
    const first = this.list.firstSeq;
    if (!first) { this.reachedFirst = true; this.updateOlder(); return; }
    this.loadingOlder = true;
    this.updateOlder();
    try {
      const { messages, epoch } = await this.read({ before: String(first), limit: String(OLDER_PAGE) });
      if (epoch && this.epoch && epoch !== this.epoch) { this.onReset({ epoch }); return; }
      const older = messages.filter((m) => m.seq < first);
      if (older.length !== messages.length) throw new Error("this server cannot page back (no ?before=)");
      this.list.addOlder(older.map((m) => makeItem(m, false, 0)));
      for (const m of older) this.picker.learn(m.channel);
      if (older.length < OLDER_PAGE) this.reachedFirst = true;
      $("older-status").textContent = "";
    } catch (e) {
      if (e instanceof Unauthorized) { this.signInAgain(); return; }
      $("older-status").textContent = `Could not load older messages: ${e.message}`;
    } finally {
      this.loadingOlder = false;
      this.updateOlder();
    }
  }

  updateOlder() {
    const button = $("older");
    button.hidden = this.reachedFirst;
    button.disabled = this.loadingOlder;
    button.textContent = this.loadingOlder ? "Loading…" : `Load ${OLDER_PAGE} older messages`;
    const first = this.list.firstSeq;
    $("older-status").dataset.reachedFirst = String(this.reachedFirst);
    if (this.reachedFirst && !$("older-status").textContent.startsWith("Could not")) {
      $("older-status").textContent = first
        ? `All stored messages are here: the oldest is #${first}.` : "";
    }
  }

  // ---- live

  accept(m) {
    if (!m || !Number.isSafeInteger(m.seq) || m.seq <= 0) { console.warn("pipeline: ignoring a malformed message", m); return; }
    if (m.seq <= this.lastSeq) return;   // already on the page (streams overlapping)
    this.lastSeq = m.seq;
    this.queue.push(m);
    // One list update per animation frame; a timer too, as frames do not run in a hidden tab.
    if (!this.flushFrame) this.flushFrame = requestAnimationFrame(() => this.flush());
    if (!this.flushTimer) this.flushTimer = setTimeout(() => this.flush(), 1000);
  }

  flush() {
    cancelAnimationFrame(this.flushFrame);
    clearTimeout(this.flushTimer);
    this.flushFrame = 0;
    this.flushTimer = 0;
    if (!this.queue.length) return;
    const batch = this.queue;
    this.queue = [];
    const now = Date.now();
    const items = batch.map((m) => makeItem(m, true, now));
    this.list.addNewer(items);
    this.chart.record(now, items.map((i) => i.screenMs));
    for (const item of items) {
      this.picker.learn(item.channel);
      this.form.onScreen(item);
    }
  }

  onGap(data) {
    const after = data && data.after;
    const next = data && data.next_seq;
    const missed = Number.isSafeInteger(after) && Number.isSafeInteger(next) ? next - after - 1 : null;
    const what = missed === null || missed <= 0 ? "some messages"
      : this.channel ? `up to ${plural(missed, "message")}` : plural(missed, "message");
    const box = $("gap");
    box.dataset.missed = missed === null ? "" : String(missed);
    $("gap-text").textContent = `Missed ${what}: removed by the retention policy before this page received them.`;
    box.hidden = false;
  }

  onReset(data) {
    if (data && typeof data.epoch === "string") this.epoch = data.epoch;
    this.stream.stop();
    this.queue = [];
    this.lastSeq = 0;
    this.list.clear();
    const box = $("gap");
    box.dataset.missed = "";
    $("gap-text").textContent = "The stored history was reset (the database was replaced): reloaded from the start.";
    box.hidden = false;
    this.start();
  }

  // ---- private reads

  async checkSession() {
    if (this.checkingSession) return;
    this.checkingSession = true;
    try {
      await this.session.check();
      if (this.session.needsSignIn) this.signInAgain();
    } finally {
      this.checkingSession = false;
    }
  }

  signInAgain() {
    this.stream.stop();
    setStatus("signed-out", "signed out");
    this.session.signIn("Your session has ended: sign in again.").then(() => location.reload());
  }
}

function setStatus(state, text, title) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
  if (title) status.title = title; else status.removeAttribute("title");
}

function showNotice(text) {
  const notice = $("notice");
  notice.textContent = text;
  notice.hidden = !text;
}

async function main() {
  const wanted = new URLSearchParams(location.search).get("transport");
  const mode = wanted === "ws" || wanted === "sse" ? wanted : "auto";
  let channel = channelInUrl();
  if (channel === undefined) {
    showNotice("The channel in the address is not a valid name (1–64 of A–Z a–z 0–9 . _ -): showing all channels.");
    channel = null;
  }
  const session = new Session({
    panel: $("signin"), form: $("signin-form"), token: $("signin-token"), result: $("signin-result"),
    signout: $("signout"), main: $("main"),
  });
  await session.check();
  if (session.needsSignIn) {
    setStatus("signed-out", "sign in to read");
    await session.signIn("");
  }
  const feed = new Feed({ mode, channel, session });
  feed.picker.load();
  await feed.start();
}

main();

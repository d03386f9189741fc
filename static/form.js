// The form that sends a test message to the channel shown. The text is sent exactly as typed
// (so the server stores it as typed); an ingest token, when one is given, goes in the
// Authorization header and is kept only in this tab's sessionStorage, never in a URL.

import { writePath } from "./curl.js";
import { describeError, el } from "./format.js";

const TOKEN_KEY = "pipeline.ingestToken";

export class SendForm {
  /** els: {form, body, button, result, token, target}; channel: the channel written to. */
  constructor(els, channel) {
    this.els = els;
    this.channel = channel;
    this.pending = null;   // the id of the last message sent, until it is on screen
    els.target.textContent = writePath(channel);
    try { els.token.value = sessionStorage.getItem(TOKEN_KEY) || ""; } catch (_) { /* storage off */ }
    els.token.addEventListener("change", () => {
      try {
        if (els.token.value.trim()) sessionStorage.setItem(TOKEN_KEY, els.token.value.trim());
        else sessionStorage.removeItem(TOKEN_KEY);
      } catch (_) { /* storage off: the token stays in the field */ }
    });
    els.body.addEventListener("input", () => {
      if (els.body.getAttribute("aria-invalid") === "true") {
        els.body.removeAttribute("aria-invalid");
        this.show("");
      }
    });
    els.body.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        els.form.requestSubmit();
      }
    });
    els.form.addEventListener("submit", (e) => { e.preventDefault(); this.submit(); });
  }

  show(status, ...parts) {
    this.els.result.dataset.status = status;
    this.els.result.replaceChildren(...parts);
  }

  /** Called with each message put on screen: notes when the one just sent is there. */
  onScreen(m) {
    if (!this.pending || m.id !== this.pending) return;
    this.pending = null;
    if (this.els.result.dataset.status === "ok") this.els.result.append(` — on screen as #${m.seq}`);
  }

  async submit() {
    const { body, button, result, token } = this.els;
    if (button.disabled) return;
    const text = body.value;
    if (!text.trim()) {
      body.setAttribute("aria-invalid", "true");
      this.show("invalid", "Invalid JSON: the document is empty");
      return;
    }
    try {
      JSON.parse(text);
    } catch (err) {
      body.setAttribute("aria-invalid", "true");
      this.show("invalid", `Invalid JSON: ${err.message}`);
      return;
    }
    body.removeAttribute("aria-invalid");
    button.disabled = true;
    this.show("pending", "Sending…");
    try {
      const headers = { "Content-Type": "application/json", Accept: "application/json, application/problem+json" };
      const bearer = token.value.trim();
      if (bearer) headers.Authorization = `Bearer ${bearer}`;
      const res = await fetch(writePath(this.channel), { method: "POST", headers, body: text });
      if (res.ok) {
        let id = "";
        try { const r = await res.json(); if (r && r.id != null) id = String(r.id); } catch (_) { /* no body */ }
        result.dataset.id = id;
        this.show("ok", `Queued (${res.status}) — id `, el("code", null, id || "?"));
        this.pending = id || null;
        if (id && this.onSent) this.onSent(id);
      } else {
        const msg = await describeError(res);
        const retry = res.headers.get("retry-after");
        this.show("error", msg, el("span", "http", ` (HTTP ${res.status}${retry ? `, retry after ${retry} s` : ""})`));
      }
    } catch (err) {
      this.show("error", `Network error: ${err.message}`);
    } finally {
      button.disabled = false;
    }
  }
}

// Sign-in (SPEC §8): when reads need READ_TOKEN the page asks for it once, and POST /session
// turns it into an HttpOnly cookie that every read (REST and both streams) then carries.
// The token is sent in the request body only, never put in a URL or kept by the page.

import { describeError } from "./format.js";

export class Session {
  /** els: {panel, form, token, result, signout, main} */
  constructor(els) {
    this.els = els;
    this.info = { signed_in: false, read_token_required: false, ingest_token_required: false, known: false };
    els.signout.addEventListener("click", () => this.signOut());
  }

  get ingestTokenRequired() { return Boolean(this.info.ingest_token_required); }

  /** GET /session; a server without sessions counts as open. */
  async check() {
    try {
      const res = await fetch("/session", { headers: { Accept: "application/json" }, cache: "no-store" });
      if (res.ok) this.info = { ...(await res.json()), known: true };
    } catch (_) { /* unreachable now: the reads will say so */ }
    this.els.signout.hidden = !(this.info.read_token_required && this.info.signed_in);
    return this.info;
  }

  get needsSignIn() { return Boolean(this.info.read_token_required && !this.info.signed_in); }

  /** Shows the sign-in form; resolves once signed in. */
  signIn(why) {
    const { panel, form, token, result, main } = this.els;
    panel.hidden = false;
    main.hidden = true;
    result.textContent = why || "";
    token.focus();
    return new Promise((resolve) => {
      const submit = async (e) => {
        e.preventDefault();
        const value = token.value.trim();
        if (!value) { result.textContent = "Enter the read token."; return; }
        result.textContent = "Signing in…";
        let res;
        try {
          res = await fetch("/session", {
            method: "POST",
            headers: { "Content-Type": "application/json", Accept: "application/json, application/problem+json" },
            body: JSON.stringify({ token: value }),
          });
        } catch (err) {
          result.textContent = `Network error: ${err.message}`;
          return;
        }
        if (!res.ok) {
          result.textContent = res.status === 401 ? "That token was not accepted." : await describeError(res);
          token.select();
          return;
        }
        token.value = "";
        result.textContent = "";
        form.removeEventListener("submit", submit);
        panel.hidden = true;
        main.hidden = false;
        await this.check();
        resolve();
      };
      form.addEventListener("submit", submit);
    });
  }

  async signOut() {
    try { await fetch("/session", { method: "DELETE" }); } catch (_) { /* reload shows the state */ }
    location.reload();
  }
}

// The channel picker (SPEC §9): all channels or one, named in the URL (/?channel=orders) so a
// view can be bookmarked; choosing another loads that view. It learns channels from
// GET /channels and from the messages that arrive.

import { el } from "./format.js";

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** The channel the URL asks for: a name, null for all channels, or undefined if not a valid name. */
export function channelInUrl() {
  const wanted = new URLSearchParams(location.search).get("channel");
  if (wanted === null || wanted === "") return null;
  return NAME.test(wanted) ? wanted : undefined;
}

export class ChannelPicker {
  constructor(select, current) {
    this.select = select;
    this.current = current;
    this.known = new Set();
    select.replaceChildren(el("option", null, "All channels"));
    select.firstChild.value = "";
    if (current) this.learn(current);
    select.value = current || "";
    select.addEventListener("change", () => {
      const params = new URLSearchParams(location.search);
      if (select.value) params.set("channel", select.value); else params.delete("channel");
      const query = params.toString();
      location.assign(`${location.pathname}${query ? `?${query}` : ""}`);
    });
  }

  /** GET /channels (a server without channels answers 404: then only what arrives is known). */
  async load() {
    try {
      const res = await fetch("/channels", { headers: { Accept: "application/json" }, cache: "no-store" });
      if (!res.ok) return res.status;
      const list = await res.json();
      if (Array.isArray(list)) for (const c of list) if (c && typeof c.name === "string") this.learn(c.name);
      return res.status;
    } catch (_) {
      return 0;
    }
  }

  learn(name) {
    if (!name || this.known.has(name) || !NAME.test(name)) return;
    this.known.add(name);
    const option = el("option", null, name);
    option.value = name;
    // keep them sorted after "All channels"
    let before = null;
    for (const o of this.select.options) if (o.value && o.value > name) { before = o; break; }
    this.select.insertBefore(option, before);
  }
}

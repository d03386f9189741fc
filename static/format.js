// Small text helpers: times, delays, counts, DOM elements made with textContent only.

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** ISO 8601 with up to microseconds -> epoch milliseconds (fractional); NaN if unreadable. */
export function parseTs(s) {
  if (typeof s !== "string") return NaN;
  const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:[.,](\d+))?(Z|z|[+-]\d\d:?\d\d)?$/.exec(s.trim());
  if (!m) return Date.parse(s);
  let zone = m[3] || "Z";
  if (/^[+-]\d{4}$/.test(zone)) zone = zone.slice(0, 3) + ":" + zone.slice(3);
  const base = Date.parse(m[1] + zone.toUpperCase());
  return m[2] ? base + Number("0." + m[2]) * 1000 : base;
}

/** Local date and time to the millisecond: 2026-11-30 21:04:05.123. */
export function fmtDateTime(ms) {
  if (!Number.isFinite(ms)) return "?";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function fmtDelay(ms) {
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

/** "1 message", "2 messages". */
export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** Back-off with jitter: 50–100 % of start·2^(n−1), capped. */
export function backoffDelay(n, startMs, capMs) {
  const base = Math.min(capMs, startMs * 2 ** Math.max(0, n - 1));
  return Math.round(base / 2 + (Math.random() * base) / 2);
}

/** A problem+json answer (RFC 9457) in a sentence. */
export async function describeError(res) {
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

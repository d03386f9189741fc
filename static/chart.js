// A small live chart drawn on a canvas: messages per second over the last three minutes
// (bars) and the receipt → screen delay of live messages (p50 and p99 per 5 s, lines).

import { fmtDelay, plural } from "./format.js";

const SECONDS = 180;
const DELAY_BUCKET_S = 5;

function quantile(sorted, q) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

export class LiveChart {
  constructor(canvas, caption) {
    this.canvas = canvas;
    this.caption = caption;
    this.counts = new Map();   // whole second -> messages that arrived live in it
    this.delays = [];          // [arrivedAtMs, delayMs], the last SECONDS
    this.pending = false;
    setInterval(() => this.draw(), 1000);
    this.draw();
  }

  /** Live messages put on screen at `nowMs`, with their receipt → screen delays. */
  record(nowMs, delaysMs) {
    const s = Math.floor(nowMs / 1000);
    this.counts.set(s, (this.counts.get(s) || 0) + delaysMs.length);
    for (const d of delaysMs) if (Number.isFinite(d)) this.delays.push([nowMs, d]);
    if (!this.pending) {   // at most one drawing per frame however fast messages come
      this.pending = true;
      requestAnimationFrame(() => { this.pending = false; this.draw(); });
    }
  }

  draw() {
    const now = Date.now();
    const nowS = Math.floor(now / 1000);
    const firstS = nowS - SECONDS + 1;
    for (const s of this.counts.keys()) if (s < firstS) this.counts.delete(s);
    let drop = 0;
    while (drop < this.delays.length && this.delays[drop][0] < firstS * 1000) drop++;
    if (drop) this.delays.splice(0, drop);

    const rates = [];
    for (let s = firstS; s <= nowS; s++) rates.push(this.counts.get(s) || 0);
    const lastMinute = rates.slice(-60).reduce((a, b) => a + b, 0);
    const rate = rates[rates.length - 2] || 0;   // the last whole second
    const recent = this.delays.filter(([t]) => t >= now - 60000).map(([, d]) => d).sort((a, b) => a - b);
    const p50 = quantile(recent, 0.5);
    const p99 = quantile(recent, 0.99);

    const fig = this.caption;
    fig.dataset.rate = String(rate);
    fig.dataset.lastMinute = String(lastMinute);
    fig.dataset.p50Ms = Number.isFinite(p50) ? p50.toFixed(1) : "";
    fig.dataset.p99Ms = Number.isFinite(p99) ? p99.toFixed(1) : "";
    fig.textContent = `${rate} msg/s · ${plural(lastMinute, "message")} in the last minute · receipt → screen `
      + (recent.length ? `p50 ${fmtDelay(p50)}, p99 ${fmtDelay(p99)}` : "p50 —, p99 —");

    // p50 / p99 per DELAY_BUCKET_S seconds
    const buckets = [];
    for (let b = 0; b < SECONDS / DELAY_BUCKET_S; b++) buckets.push([]);
    for (const [t, d] of this.delays) {
      const b = Math.floor((Math.floor(t / 1000) - firstS) / DELAY_BUCKET_S);
      if (b >= 0 && b < buckets.length) buckets[b].push(d);
    }
    const lines = buckets.map((b) => { b.sort((x, y) => x - y); return [quantile(b, 0.5), quantile(b, 0.99)]; });
    this.paint(rates, lines);
  }

  paint(rates, lines) {
    const c = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(c.clientWidth * ratio));
    const h = Math.max(1, Math.round(c.clientHeight * ratio));
    if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
    const g = c.getContext("2d");
    const css = getComputedStyle(c);
    g.clearRect(0, 0, w, h);
    const maxRate = Math.max(1, ...rates);
    const barW = w / rates.length;
    g.fillStyle = css.getPropertyValue("--chart-bar").trim() || "#2f74e0";
    rates.forEach((r, i) => {
      if (!r) return;
      const bh = Math.max(1 * ratio, (r / maxRate) * (h - 2 * ratio));
      g.fillRect(i * barW, h - bh, Math.max(1, barW - ratio * 0.5), bh);
    });
    const maxDelay = Math.max(1, ...lines.flat().filter(Number.isFinite));
    const step = w / lines.length;
    const stroke = (which, color) => {
      g.strokeStyle = color;
      g.lineWidth = 1.5 * ratio;
      g.beginPath();
      let drawing = false;
      lines.forEach((pair, i) => {
        const v = pair[which];
        if (!Number.isFinite(v)) { drawing = false; return; }
        const x = i * step + step / 2;
        const y = h - (v / maxDelay) * (h - 4 * ratio) - 2 * ratio;
        if (drawing) g.lineTo(x, y); else g.moveTo(x, y);
        drawing = true;
      });
      g.stroke();
      g.fillStyle = color;   // a dot per point: a lone bucket has no line to draw
      lines.forEach((pair, i) => {
        const v = pair[which];
        if (!Number.isFinite(v)) return;
        g.beginPath();
        g.arc(i * step + step / 2, h - (v / maxDelay) * (h - 4 * ratio) - 2 * ratio, 2 * ratio, 0, 2 * Math.PI);
        g.fill();
      });
    };
    stroke(0, css.getPropertyValue("--chart-p50").trim() || "#1e9e4a");
    stroke(1, css.getPropertyValue("--chart-p99").trim() || "#e09a12");
  }
}

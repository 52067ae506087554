// Spate's live monitor page: reads /api/overview every second and draws
// the checkpoint timeline, per-subtask figures, throughput, backpressure and
// watermark lag as SVG. No library, nothing loaded from elsewhere; text from
// the job is set with textContent only.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#4aa3df", "#3fb68b", "#d9a441", "#c678dd", "#e5534b", "#56b6c2", "#98c379", "#e5c07b"];
let selected = null; // the checkpoint chosen on the timeline (id), or the latest
let lastOverview = null;

function reportError(message) {
  document.body.dataset.scriptError = message;
  const banner = document.getElementById("script-error");
  banner.hidden = false;
  banner.textContent = "Page error: " + message;
}
window.onerror = (message, source, line) => { reportError(message + " (" + source + ":" + line + ")"); };
window.addEventListener("unhandledrejection", (e) => reportError(String(e.reason)));

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}
function text(parent, x, y, content, anchor) {
  const t = el("text", { x, y, "text-anchor": anchor || "start" }, parent);
  t.textContent = content;
  return t;
}
function clear(svg) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const box = svg.getBoundingClientRect();
  const w = Math.max(box.width, 200), h = Math.max(box.height, 80);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  return { w, h };
}
function set(id, value) { document.getElementById(id).textContent = value; }

function bytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}
function ms(n) {
  if (n == null) return "–";
  return n >= 1000 ? (n / 1000).toFixed(2) + " s" : Math.round(n) + " ms";
}
function us(n) { return n >= 1000 ? ms(n / 1000) : Math.round(n) + " µs"; }
function si(n) {
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + "k";
  return (Math.round(n * 10) / 10).toString();
}
function pct(x) { return x == null ? "–" : (x * 100).toFixed(1) + "%"; }

function drawKpis(o) {
  const job = o.job, c = o.checkpoints;
  set("job-name", job.name);
  const status = document.getElementById("status");
  status.textContent = job.status;
  status.className = "badge " + job.status;
  set("job-facts", `parallelism ${job.parallelism} · attempt ${job.attempt} · up ${ms(job.duration_ms)}` +
    (job.config.checkpoints ? ` · ${job.config.checkpoints.mode} every ${ms(job.config.checkpoints.interval_ms)}` : " · no checkpoints"));
  set("updated", "updated " + new Date().toLocaleTimeString());
  set("k-completed", c.counts.completed);
  set("k-failed", c.counts.failed);
  set("k-in-progress", c.counts.in_progress);
  set("k-restored", c.counts.restored);
  set("k-success", pct(c.rates.success_rate));
  set("k-restore", ms(c.rates.mean_restore_duration_ms));
  set("k-restarts", job.restarts.count);
  const last = c.latest.completed;
  set("k-last", last ? ms(last.end_to_end_duration_ms) : "–");
  set("k-last-size", last ? "last · " + bytes(last.state_size_bytes) : "last checkpoint");
  const failure = job.restarts.last_failure || (c.latest.failed && c.latest.failed.failure_message);
  set("k-failure", failure || "none");
}

function drawTimeline(history) {
  const svg = document.getElementById("timeline");
  const { w, h } = clear(svg);
  svg.dataset.checkpoints = String(history.length);
  svg.dataset.completed = String(history.filter((c) => c.status === "COMPLETED").length);
  const left = 44, right = 54, top = 8, bottom = 18;
  const pw = w - left - right, ph = h - top - bottom;
  el("line", { x1: left, y1: top + ph, x2: left + pw, y2: top + ph, class: "axis" }, svg);
  if (history.length === 0) { text(svg, left + 8, top + 16, "no checkpoint yet"); return; }
  const maxD = Math.max(1, ...history.map((c) => c.end_to_end_duration_ms));
  const maxS = Math.max(1, ...history.map((c) => c.state_size_bytes));
  const step = pw / history.length, bw = Math.max(1, Math.min(24, step * 0.7));
  text(svg, left - 4, top + 8, ms(maxD), "end");
  text(svg, left + pw + 4, top + 8, bytes(maxS));
  history.forEach((c, i) => {
    const x = left + i * step + (step - bw) / 2;
    const bh = c.status === "FAILED" ? ph : Math.max(1, (c.end_to_end_duration_ms / maxD) * ph);
    const bar = el("rect", { x, y: top + ph - bh, width: bw, height: bh,
      class: "cp " + c.status + (c.id === selected ? " selected" : ""),
      "data-id": c.id, "data-status": c.status, opacity: c.status === "FAILED" ? 0.55 : 1 }, svg);
    const tip = el("title", {}, bar);
    tip.textContent = `#${c.id} ${c.status} ${ms(c.end_to_end_duration_ms)} ${bytes(c.state_size_bytes)}` +
      (c.failure_message ? " — " + c.failure_message : "");
    bar.addEventListener("click", () => { selected = c.id; draw(lastOverview); });
    if (c.status === "COMPLETED") {
      el("circle", { cx: x + bw / 2, cy: top + ph - (c.state_size_bytes / maxS) * ph, r: 2.5, class: "size" }, svg);
    }
  });
  const every = Math.ceil(history.length / 12);
  history.forEach((c, i) => {
    if (i % every === 0) text(svg, left + i * step + step / 2, h - 4, "#" + c.id, "middle");
  });
}

function drawSubtasks(history) {
  const svg = document.getElementById("subtasks");
  const { w, h } = clear(svg);
  const done = history.filter((c) => c.status === "COMPLETED");
  const c = history.find((x) => x.id === selected) || done[done.length - 1];
  set("selected-id", c ? "#" + c.id : "–");
  if (!c || c.subtasks.length === 0) { text(svg, 8, 20, c ? "no subtask acknowledged" : "no checkpoint yet"); return; }
  const parts = [["sync_pause_us", "pause", COLORS[0]], ["alignment_duration_us", "alignment", COLORS[2]], ["async_duration_us", "async", COLORS[1]]];
  const max = Math.max(1, ...c.subtasks.flatMap((s) => parts.map((p) => s[p[0]])));
  const left = 30, top = 14, rowH = Math.min(36, (h - top - 4) / c.subtasks.length);
  parts.forEach(([, name, color], i) => {
    el("rect", { x: left + i * 80, y: 2, width: 8, height: 8, fill: color }, svg);
    text(svg, left + i * 80 + 11, 10, name);
  });
  c.subtasks.forEach((s, r) => {
    const y = top + r * rowH;
    text(svg, left - 4, y + rowH / 2 + 3, String(s.subtask), "end");
    parts.forEach(([key, , color], i) => {
      const bh = Math.max(2, rowH / 3 - 2);
      const bw = Math.max(1, (s[key] / max) * (w - left - 70));
      el("rect", { x: left, y: y + i * (rowH / 3), width: bw, height: bh, fill: color }, svg);
      text(svg, left + bw + 3, y + i * (rowH / 3) + bh, us(s[key]));
    });
  });
}

function drawSeries(id, series, format, maxFloor) {
  const svg = document.getElementById(id);
  const { w, h } = clear(svg);
  const names = Object.keys(series || {});
  const left = 44, top = 14 + 12 * Math.max(0, Math.ceil(names.length / 3) - 1), bottom = 14;
  const ph = h - top - bottom, pw = w - left - 6;
  el("line", { x1: left, y1: top + ph, x2: left + pw, y2: top + ph, class: "axis" }, svg);
  const points = names.flatMap((n) => series[n]);
  if (points.length === 0) { text(svg, left + 8, top + 16, "no data yet"); return; }
  const t0 = Math.min(...points.map((p) => p.t)), t1 = Math.max(...points.map((p) => p.t), t0 + 1);
  const max = Math.max(maxFloor, ...points.map((p) => p.v));
  text(svg, left - 4, top + 6, format(max), "end");
  text(svg, left - 4, top + ph, "0", "end");
  names.forEach((name, i) => {
    const color = COLORS[i % COLORS.length];
    const d = series[name].map((p, j) =>
      (j ? "L" : "M") + (left + ((p.t - t0) / (t1 - t0)) * pw).toFixed(1) + "," + (top + ph - (p.v / max) * ph).toFixed(1)).join(" ");
    el("path", { d, fill: "none", stroke: color, "stroke-width": 1.5 }, svg);
    const last = series[name][series[name].length - 1];
    const row = 12 * Math.floor(i / 3);
    el("rect", { x: left + 4 + (i % 3) * (pw / 3), y: 2 + row, width: 8, height: 8, fill: color }, svg);
    text(svg, left + 15 + (i % 3) * (pw / 3), 10 + row, `${name} ${format(last.v)}`);
  });
}

function draw(o) {
  if (!o) return;
  drawKpis(o);
  drawTimeline(o.checkpoints.history);
  drawSubtasks(o.checkpoints.history);
  drawSeries("throughput", o.operators.series.throughput, si, 1);
  drawSeries("backpressure", o.operators.series.backpressure, pct, 0.01);
  drawSeries("lag", o.operators.series.watermark_lag_seconds, (v) => v.toFixed(1) + " s", 1);
}

async function refresh() {
  try {
    const response = await fetch("/api/overview", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    lastOverview = await response.json();
    document.getElementById("disconnected").hidden = true;
    draw(lastOverview);
    document.body.dataset.state = "live";
  } catch (e) {
    if (e instanceof TypeError && e.message.includes("fetch")) {
      document.getElementById("disconnected").hidden = false;
      document.body.dataset.state = "disconnected";
    } else if (!(e instanceof Error && e.message.startsWith("HTTP"))) {
      reportError(String(e && e.stack || e));
    }
  } finally {
    setTimeout(refresh, 1000);
  }
}

window.addEventListener("resize", () => draw(lastOverview));
refresh();

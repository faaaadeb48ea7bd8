// Draws /dashboard from the snapshot in the page, then from /dashboard/data every POLL_MS (Chart.js, vendored).
"use strict";

const POLL_MS = 2000;
const RATE_POINTS = 90;  // three minutes of requests/s
const COLORS = ["#3366cc", "#dc7633", "#2e9e5b", "#9b59b6", "#c0392b", "#17a2b8", "#7f8c8d", "#d4ac0d"];
const LABEL_CHARS = 26;  // longer names (a route's description) are cut on the axis, whole in the tooltip
const charts = {};
const rate = { labels: [], values: [], last: null };

function el(id) { return document.getElementById(id); }

function fmt(x, digits = 1) {
  if (x === null || x === undefined) return "-";
  return Number(x).toLocaleString(undefined, { maximumFractionDigits: digits });
}

function pct(x) { return x === null || x === undefined ? "-" : `${fmt(100 * x)}%`; }

function duration(s) {
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${fmt(s / 3600)} h`;
}

function chart(id, type, options = {}) {
  if (!charts[id]) {
    charts[id] = new Chart(el(id), {
      type, data: { labels: [], datasets: [] },
      options: { animation: false, responsive: true, maintainAspectRatio: false,
                 plugins: { legend: { display: false } }, ...options },
    });
  }
  return charts[id];
}

function short(label) {
  return label.length > LABEL_CHARS ? `${label.slice(0, LABEL_CHARS - 1)}\u2026` : label;
}

const shortNames = { ticks: { callback(value) { return short(String(this.getLabelForValue(value))); } } };

function bars(id, counts, label, options = {}) {
  const c = chart(id, "bar", { indexAxis: "y", scales: { y: shortNames }, ...options });
  c.data.labels = counts.map((x) => x.name);
  c.data.datasets = [{ label, data: counts.map((x) => x.value), backgroundColor: COLORS[0] }];
  c.update("none");
}

function table(id, head, rows, empty) {
  const t = el(id);
  t.replaceChildren();
  if (!rows.length) {
    const cell = t.insertRow().insertCell();
    cell.className = "off";
    cell.textContent = empty;
    return;
  }
  const h = t.createTHead().insertRow();
  for (const name of head) {
    const th = document.createElement("th");
    th.textContent = name;
    h.appendChild(th);
  }
  const body = t.createTBody();
  for (const row of rows) {
    const r = body.insertRow();
    for (const value of row) {
      const cell = r.insertCell();
      cell.textContent = typeof value === "number" ? fmt(value, 3) : value;
      if (typeof value === "number") cell.className = "num";
    }
  }
}

function metricRows(rows) {
  return rows.map((r) => [r.metric, Object.entries(r.labels).map(([k, v]) => `${k}=${v}`).join(" "), r.value]);
}

function drawRate(d) {
  if (rate.last) {
    const seconds = d.generated_at - rate.last.generated_at;
    const perSecond = seconds > 0 ? Math.max(0, d.requests_total - rate.last.requests_total) / seconds : 0;
    rate.labels.push(new Date(d.generated_at * 1000).toLocaleTimeString());
    rate.values.push(perSecond);
    if (rate.values.length > RATE_POINTS) { rate.labels.shift(); rate.values.shift(); }
    el("request-rate").textContent = fmt(perSecond, 2);
  }
  rate.last = d;
  const c = chart("chart-rate", "line", { scales: { y: { beginAtZero: true } } });
  c.data.labels = rate.labels;
  c.data.datasets = [{ label: "requests/s", data: rate.values, borderColor: COLORS[0], pointRadius: 2, tension: 0.2 }];
  c.update("none");
}

function drawLatency(stages) {
  const c = chart("chart-latency", "bar", { scales: { y: { type: "logarithmic" } },
                                            plugins: { legend: { display: true } } });
  c.data.labels = stages.map((s) => s.stage);
  c.data.datasets = ["p50", "p90", "p99"].map((p, i) => ({
    label: p, data: stages.map((s) => s[`${p}_ms`]), backgroundColor: COLORS[i] }));
  c.update("none");
  table("latency", ["stage", "n", "mean ms", "p50 ms", "p90 ms", "p99 ms"],
        stages.map((s) => [s.stage, s.count, s.mean_ms, s.p50_ms, s.p90_ms, s.p99_ms]), "no requests yet");
}

function drawConfidence(bins) {
  const c = chart("chart-confidence", "bar", { scales: { x: { title: { display: true, text: "confidence up to" } } } });
  c.data.labels = bins.map((b) => fmt(b.upper));
  c.data.datasets = [{ label: "decisions", data: bins.map((b) => b.count), backgroundColor: COLORS[1] }];
  c.update("none");
}

function drawFeedback(feedback) {
  el("feedback-empty").hidden = feedback.length > 0;
  const c = chart("chart-feedback", "bar", { indexAxis: "y", scales: { x: { min: 0, max: 1 }, y: shortNames } });
  c.data.labels = feedback.map((f) => `${f.expert} (${f.count})`);
  c.data.datasets = [{ label: "mean score", data: feedback.map((f) => f.mean_score), backgroundColor: COLORS[2] }];
  c.update("none");
}

function draw(d) {
  el("router").textContent = d.router ?? "starting";
  el("registry-version").textContent = d.registry_version ?? "-";
  el("uptime").textContent = duration(d.uptime_s);
  el("requests-total").textContent = fmt(d.requests_total, 0);
  el("decisions-total").textContent = fmt(d.decisions_total, 0);
  el("fallback-share").textContent = pct(d.fallback_share);
  el("queue-depth").textContent = fmt(d.queue_depth, 0);
  const embed = d.caches.find((c) => c.cache === "embed_cache");
  el("cache-hit-rate").textContent = embed ? pct(embed.hit_rate) : "not enabled";
  drawRate(d);
  bars("chart-endpoints", d.requests_by_endpoint, "requests");
  bars("chart-routes", d.decisions_by_route, "decisions");
  bars("chart-experts", d.routed_by_expert, "queries");
  drawConfidence(d.confidence);
  drawLatency(d.stage_latency);
  drawFeedback(d.feedback);
  table("devices", ["device", "workers", "resident", "asleep", "cold"],
        d.devices.map((x) => [x.device, x.workers, x.resident.join(", ") || (x.workers ? "in worker processes" : "-"),
                              x.asleep.join(", "), x.cold.join(", ")]), "no devices");
  table("caches", ["cache", "hits", "misses", "hit rate"],
        d.caches.map((c) => [c.cache, c.hits, c.misses, pct(c.hit_rate)]), "not enabled");
  table("budgets", ["metric", "labels", "value"], d.budgets ? metricRows(d.budgets) : [],
        d.budgets ? "no budget use yet" : "not enabled");
  table("bandit", ["metric", "labels", "value"], d.bandit ? metricRows(d.bandit) : [],
        d.bandit ? "no bandit data yet" : "not enabled");
}

async function poll() {
  try {
    const response = await fetch(new URL("/dashboard/data", location.origin), { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    draw(await response.json());
    el("status").textContent = "live";
    el("status").classList.remove("stale");
  } catch (err) {
    el("status").textContent = `stale (${err.message})`;
    el("status").classList.add("stale");
  }
  setTimeout(poll, POLL_MS);
}

draw(JSON.parse(el("first-data").textContent));
setTimeout(poll, POLL_MS);

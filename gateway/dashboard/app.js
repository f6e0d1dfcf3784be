// tickmesh live dashboard: polls /v1/stats/global and /v1/vwap once a second and draws
// every region's figures with chart.js (served by the binary itself, see gateway/build.rs).
"use strict";

const POLL_MS = 1000;
const KEEP_POINTS = 120;
const PALETTE = ["#0969da", "#1a7f37", "#bf3989", "#bc4c00", "#8250df", "#1b7c83", "#cf222e", "#4d2d00"];
const colorOf = new Map();
const latencySeries = new Map(); // region -> [{x, y}]
const lagSeries = new Map(); // "region ← source" -> [{x, y}]
const dash = { polls: 0, errors: 0, last: null, vwap: null, charts: {} };
window.tickmeshDashboard = dash;

function color(label) {
  if (!colorOf.has(label)) colorOf.set(label, PALETTE[colorOf.size % PALETTE.length]);
  return colorOf.get(label);
}

function num(v, digits = 0) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return Number(v).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function bytes(v) {
  if (v === null || v === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function uptime(s) {
  if (s === undefined) return "–";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
  return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(sec).padStart(2, "0")}s` : `${sec}s`;
}

// A table cell; `value` (when given) is kept raw in data-value for scripts and tests.
function cell(text, field, value) {
  const td = document.createElement("td");
  if (text instanceof Node) td.appendChild(text); else td.textContent = text;
  if (field) td.dataset.field = field;
  if (value !== undefined && value !== null) td.dataset.value = String(value);
  return td;
}

function badge(state) {
  const s = document.createElement("span");
  s.className = `state ${state}`;
  s.textContent = state;
  return s;
}

function fill(tbodySel, rows) {
  document.querySelector(tbodySel).replaceChildren(...rows);
}

function lineChart(id, yTitle) {
  return new Chart(document.getElementById(id), {
    type: "line",
    data: { datasets: [] },
    options: {
      animation: false,
      parsing: false,
      normalized: true,
      maintainAspectRatio: false,
      elements: { point: { radius: 0 }, line: { borderWidth: 2, tension: 0.2 } },
      scales: {
        x: { type: "linear", ticks: { maxTicksLimit: 6, callback: (v) => new Date(v).toLocaleTimeString() } },
        y: { beginAtZero: true, title: { display: true, text: yTitle } },
      },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
    },
  });
}

function setLines(chart, series) {
  if (!chart) return;
  chart.data.datasets = [...series.entries()].sort().map(([label, data]) => ({
    label, data, borderColor: color(label), backgroundColor: color(label),
  }));
  chart.update("none");
}

function setupCharts() {
  if (typeof window.Chart === "undefined") {
    const n = document.getElementById("notice");
    n.textContent = window.TICKMESH_CHART_MISSING ||
      "chart.js did not load; the tables below are live. Run `cd gateway/dashboard && npm ci` and rebuild.";
    n.hidden = false;
    return;
  }
  dash.charts.records = lineChart("chart-records", "records/s");
  dash.charts.messages = lineChart("chart-messages", "messages/s");
  dash.charts.latency = lineChart("chart-latency", "ms");
  dash.charts.lag = lineChart("chart-lag", "ms");
  dash.charts.volume = new Chart(document.getElementById("chart-volume"), {
    type: "bar",
    data: { labels: [], datasets: [{ label: "volume", data: [], backgroundColor: "#0969da" }] },
    options: { animation: false, maintainAspectRatio: false, indexAxis: "y", plugins: { legend: { display: false } } },
  });
}

function push(map, key, point) {
  let s = map.get(key);
  if (!s) { s = []; map.set(key, s); }
  if (s.length && s[s.length - 1].x >= point.x) return;
  s.push(point);
  if (s.length > KEEP_POINTS) s.splice(0, s.length - KEEP_POINTS);
}

function renderRegions(g) {
  fill("#regions tbody", g.regions.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.region = r.region;
    tr.dataset.state = r.state;
    const s = r.stats;
    if (!s) {
      tr.append(cell(r.region), cell(badge(r.state), "state", r.state), cell("–"));
      const why = cell(r.error || "no answer");
      why.colSpan = 11;
      why.style.textAlign = "left";
      tr.append(why);
      return tr;
    }
    const lat = s.latency.ingest_to_send;
    tr.append(
      cell(r.region),
      cell(badge(r.state), "state", r.state),
      cell(s.ready ? "yes" : "no", "ready", s.ready),
      cell(num(s.records_in_per_s.total), "records_in_per_s", s.records_in_per_s.total),
      cell(num(s.records_in_per_s.home), "home_per_s", s.records_in_per_s.home),
      cell(num(s.records_in_per_s.replicated), "replicated_per_s", s.records_in_per_s.replicated),
      cell(num(s.messages_out_per_s), "messages_out_per_s", s.messages_out_per_s),
      cell(`${bytes(s.bytes_out_per_s)}/s`, "bytes_out_per_s", s.bytes_out_per_s),
      cell(num(s.connections), "connections", s.connections),
      cell(num(s.slow_consumer_events_total), "slow_consumer_events_total", s.slow_consumer_events_total),
      cell(num(lat.p50_ms, 3), "p50_ms", lat.p50_ms),
      cell(num(lat.p99_ms, 3), "p99_ms", lat.p99_ms),
      cell(num(s.records_in_total), "records_in_total", s.records_in_total),
      cell(uptime(s.uptime_s), "uptime_s", s.uptime_s),
    );
    if (s.reasons && s.reasons.length) tr.title = s.reasons.join("\n");
    return tr;
  }));
}

function renderCharts(g) {
  const records = new Map(), messages = new Map();
  for (const r of g.regions) {
    const s = r.stats;
    if (!s) continue;
    records.set(r.region, s.history.map((h) => ({ x: h.t_ms, y: h.home_per_s + h.replicated_per_s })));
    messages.set(r.region, s.history.map((h) => ({ x: h.t_ms, y: h.messages_out_per_s })));
    const p99 = s.latency.ingest_to_send.p99_ms;
    if (p99 !== null) push(latencySeries, r.region, { x: s.at_ms, y: p99 });
  }
  document.getElementById("latency-note").textContent =
    latencySeries.size ? "" : "(no ingest→send samples recorded yet)";
  for (const l of g.lag) {
    if (l.delay_ms !== null) push(lagSeries, `${l.region} ← ${l.source}`, { x: g.at_ms, y: l.delay_ms });
  }
  setLines(dash.charts.records, records);
  setLines(dash.charts.messages, messages);
  setLines(dash.charts.latency, latencySeries);
  setLines(dash.charts.lag, lagSeries);
}

function renderLag(g) {
  fill("#lag tbody", g.lag.map((l) => {
    const tr = document.createElement("tr");
    tr.append(cell(l.region), cell(l.source), cell(l.from || "–"),
      cell(num(l.records_behind), "records_behind", l.records_behind),
      cell(num(l.delay_ms, 2), "delay_ms", l.delay_ms), cell(num(l.age_ms, 0), "age_ms", l.age_ms));
    return tr;
  }));
}

function renderSources(g) {
  const me = g.regions.find((r) => r.region === g.region);
  if (!me || !me.stats) return;
  fill("#sources tbody", me.stats.sources.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.source = s.source;
    tr.append(cell(s.source), cell(s.origin), cell(num(s.records), "records", s.records),
      cell(num(s.records_per_s), "records_per_s", s.records_per_s), cell(num(s.last_seq), "last_seq", s.last_seq),
      cell(num(s.journal_seq), "journal_seq", s.journal_seq), cell(num(s.delay_ms, 2), "delay_ms", s.delay_ms),
      cell(num(s.age_ms, 0), "age_ms", s.age_ms));
    return tr;
  }));
}

function renderVwap(rows) {
  fill("#vwap tbody", rows.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.symbol = r.symbol;
    tr.append(cell(r.symbol), cell(r.volume, "volume", r.volume), cell(r.vwap, "vwap", r.vwap),
      cell(num(r.trades), "trades", r.trades), cell(r.sources.join(", "), "sources"));
    return tr;
  }));
  const c = dash.charts.volume;
  if (c) {
    c.data.labels = rows.map((r) => r.symbol);
    c.data.datasets[0].data = rows.map((r) => Number(r.volume));
    c.update("none");
  }
}

async function getJson(path) {
  const res = await fetch(path, { cache: "no-store" });
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return res.json();
}

async function poll() {
  const st = document.getElementById("status");
  try {
    const [g, v] = await Promise.all([getJson("/v1/stats/global"), getJson("/v1/vwap?limit=10")]);
    document.getElementById("region").textContent = g.region;
    renderRegions(g);
    renderCharts(g);
    renderLag(g);
    renderSources(g);
    renderVwap(v);
    dash.last = g;
    dash.vwap = v;
    dash.polls++;
    const up = g.regions.filter((r) => r.state !== "down").length;
    st.textContent = `live: ${up} of ${g.regions.length} regions up`;
    st.className = up === g.regions.length ? "status ok" : "status bad";
    document.getElementById("updated").textContent = new Date().toLocaleTimeString();
  } catch (e) {
    dash.errors++;
    st.textContent = `cannot reach this region's node (${e.message}); retrying`;
    st.className = "status bad";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

setupCharts();
poll();

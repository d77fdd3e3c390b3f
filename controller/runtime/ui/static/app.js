// PharmaTwin operator view: fills the page from /api/meta and the Server-Sent Events of
// /api/events. Charts are Plotly's (served from the installed plotly package).
"use strict";
const rows = [];
let meta = null;
let status = {};
const $ = (id) => document.getElementById(id);
const fmt = (v) => (v === null || v === undefined ? "–" : Number(v).toPrecision(4));

function table(id, head, body) {
  const el = $(id);
  el.replaceChildren();
  const tr = el.insertRow();
  head.forEach((h) => { const th = document.createElement("th"); th.textContent = h; tr.appendChild(th); });
  body.forEach((cells) => {
    const r = el.insertRow();
    cells.forEach((c) => { const td = r.insertCell(); if (c instanceof Node) td.appendChild(c); else td.textContent = c; });
  });
}

function limitShapes(limits) {
  if (!limits) return [[], []];
  const shapes = limits.map((y) => ({ type: "line", xref: "paper", x0: 0, x1: 1, y0: y, y1: y,
    line: { color: "#c0392b", dash: "dash", width: 1 } }));
  const notes = limits.map((y, i) => ({ xref: "paper", x: 1, y: y, xanchor: "right",
    text: (i === 0 ? "low limit " : "high limit ") + y, showarrow: false, font: { size: 10, color: "#c0392b" } }));
  return [shapes, notes];
}

function drawTrend(tr) {
  const t = rows.map((r) => r.t);
  const traces = [];
  if (tr.kind === "CV") {
    traces.push({ x: t, y: rows.map((r) => r.values[tr.tag]), name: "measured", mode: "lines" });
  } else {
    if (tr.pv) traces.push({ x: t, y: rows.map((r) => r.values[tr.pv]), name: "applied by PLC", mode: "lines" });
    traces.push({ x: t, y: rows.map((r) => r.written[tr.tag] ?? r.written[tr.var] ?? null), name: "written", mode: "markers", marker: { size: 4 } });
    traces.push({ x: t, y: rows.map((r) => r.recommended[tr.var] ?? null),
      name: meta.mode === "shadow" ? "recommended (shadow)" : "MPC after safety", mode: "lines", line: { dash: "dot" } });
  }
  // the plan is keyed by model state or input; a measured output "X_meas" plots state "X"
  const series = status.plan && status.plan.series ? status.plan.series : {};
  const plan = series[tr.var] || series[tr.var.replace(/_meas$/, "")] || null;
  if (plan) traces.push({ x: plan.t, y: plan.v, name: "MPC plan", mode: "lines", line: { dash: "dot", color: "#7d3c98" } });
  const [shapes, annotations] = limitShapes(tr.limits);
  Plotly.react("trend-" + tr.tag, traces, {
    title: { text: `${tr.kind} ${tr.var} (${tr.tag}) [${tr.unit}]`, font: { size: 12 } },
    margin: { l: 50, r: 10, t: 30, b: 30 }, height: 230, shapes, annotations,
    xaxis: { title: { text: meta.time_unit } }, legend: { orientation: "h", font: { size: 9 } },
  }, { displaylogo: false, responsive: true });
}

function button(text, onclick) { const b = document.createElement("button"); b.textContent = text; b.onclick = onclick; return b; }

async function post(url, body) {
  const resp = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body), credentials: "same-origin" });
  const data = await resp.json();
  $("message").textContent = resp.ok ? "" : `refused (${resp.status}): ${data.error}`;
  return resp.ok ? data : null;
}

function render() {
  const s = status;
  $("state").textContent = s.state || "…";
  $("state").className = "state " + (s.state || "");
  $("why").textContent = s.why || "";
  $("cycle").textContent = s.cycle ?? "–";
  $("time").textContent = fmt(s.t);
  $("problems").textContent = (s.problems || []).join("; ");
  table("handshake", ["signal", "value"], Object.entries(s.handshake || {}).map(([k, v]) => [k, fmt(v)]));
  table("parameters", ["parameter", "estimate", "±1σ"], Object.entries(s.parameters || {}).map(([k, v]) => [k, fmt(v[0]), fmt(v[1])]));
  table("maintenance", ["figure", "value"], Object.entries(s.maintenance || {}).map(([k, v]) => [k, fmt(v)]));
  table("alarms", ["alarm", "message", "acknowledged", ""], (s.alarms || []).map((a) => [a.key, a.message, a.acked_by || "no",
    button("acknowledge", () => post("/api/alarms/ack", { key: a.key, reason: $("reason").value }))]));
  table("audit", ["id", "UTC", "who", "action", "target", "old", "new", "reason"], (s.audit || []).map((r) =>
    [r.id, r.ts_utc, r.actor, r.action, r.target, r.old_value ?? "", r.new_value ?? "", r.reason]));
  meta.trends.forEach(drawTrend);
  const names = new Set();
  rows.forEach((r) => Object.keys(r.drift || {}).forEach((k) => names.add(k)));
  Plotly.react("drift", [...names].map((k) => ({ x: rows.map((r) => r.t), y: rows.map((r) => (r.drift || {})[k] ?? null), name: k, mode: "lines" })),
    { margin: { l: 40, r: 10, t: 10, b: 30 }, height: 210, legend: { font: { size: 9 } } }, { displaylogo: false });
  document.body.dataset.cycle = s.cycle ?? "";
}

async function runForecast() {
  $("forecast").disabled = true;
  $("forecast-note").textContent = "computing…";
  try {
    const resp = await fetch("/api/forecast", { method: "POST" });
    const data = await resp.json();
    if (!resp.ok) { $("forecast-note").textContent = `refused (${resp.status}): ${data.error}`; return; }
    const names = data.cqas.map((c) => c.name);
    $("forecast-note").textContent = `from t = ${fmt(data.start_t)} ${data.time_unit}`;
    table("forecast-table", ["plan", ...names, "end time", "finished", "status"], data.rows.map((r) =>
      [r.plan, ...names.map((n) => fmt(r[n])), fmt(r.end_time), r.finished ? "yes" : "no", r.status]));
  } finally {
    $("forecast").disabled = false;
  }
}

async function whoami() {
  const w = await (await fetch("/api/whoami")).json();
  $("who").textContent = w.user ? `${w.user} (${w.roles.join(", ")})` : "read-only";
}

async function main() {
  meta = await (await fetch("/api/meta")).json();
  $("site").textContent = meta.site; $("mode").textContent = meta.mode; $("unit").textContent = meta.time_unit;
  meta.trends.forEach((tr) => { const d = document.createElement("div"); d.id = "trend-" + tr.tag; d.className = "trend"; $("trends").appendChild(d); });
  $("login").onclick = async () => { await post("/api/login", { user: $("user").value, password: $("password").value }); whoami(); };
  $("request").onclick = () => post("/api/control", { action: "request", reason: $("reason").value });
  $("release").onclick = () => post("/api/control", { action: "release", reason: $("reason").value });
  $("forecast").onclick = runForecast;
  whoami();
  const source = new EventSource("/api/events");
  source.onmessage = (ev) => {
    const data = JSON.parse(ev.data);
    rows.push(...data.rows);
    if (rows.length > 2000) rows.splice(0, rows.length - 2000);
    status = data.status;
    render();
    if (data.live) showLive(data.live);
  };
  source.addEventListener("live", (ev) => showLive(JSON.parse(ev.data)));
}

// A loop that stopped cycling must not keep showing its last state as if live.
function showLive(live) {
  const el = $("stale");
  const stalled = !!live.stalled;
  el.hidden = !stalled;
  el.textContent = stalled
    ? `NO NEW CYCLE for ${fmt(live.age_s)} s (one is due every ${fmt(meta.cycle_period_s)} s): ` +
      `the control loop may be stalled; what is shown is from cycle ${status.cycle ?? "–"}`
    : "";
  $("state").classList.toggle("STALE", stalled);
  document.body.dataset.stale = stalled ? "1" : "0";
}
main();

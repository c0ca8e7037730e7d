// medlake operator console: polls /console/api/overview and draws the panels.
// No inline script (the Content-Security-Policy forbids it); data goes into the page only as
// text nodes, never as HTML.
"use strict";

const CONSOLE = {
  pollMs: 3000, // how often the panels are fetched
};

const SVG = "http://www.w3.org/2000/svg";
let csrf = "";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function show(value) {
  if (value === null || value === undefined) return "";
  return String(value);
}

function when(text) {
  if (!text) return "";
  const d = new Date(text);
  return isNaN(d) ? text : d.toISOString().replace("T", " ").slice(0, 19);
}

function table(rows, columns, rowClass) {
  if (!rows.length) return el("p", { class: "muted" }, "nothing to show");
  const head = el("tr", {}, ...columns.map(([, label]) => el("th", {}, label)));
  const body = rows.map((r) => {
    const tr = el("tr", {}, ...columns.map(([key, , fmt]) => el("td", {}, (fmt || show)(r[key], r))));
    if (rowClass) tr.className = rowClass(r);
    return tr;
  });
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body));
}

function unavailable(panel) {
  return el("p", { class: "muted" }, panel.reason === "not granted" ? "not granted to you" : "not available");
}

function nodeState(v) {
  if (v.status === "failed") return "failed";
  if (v.staleness && v.staleness.startsWith("stale")) return "stale";
  return "fresh";
}

// Layered layout: a node's layer is one more than its deepest input's.
function layers(names, inputsOf) {
  const depth = new Map();
  const visit = (n, seen) => {
    if (depth.has(n)) return depth.get(n);
    if (seen.has(n)) return 0;
    seen.add(n);
    const ins = inputsOf.get(n) || [];
    const d = ins.length ? 1 + Math.max(...ins.map((i) => visit(i, seen))) : 0;
    depth.set(n, d);
    return d;
  };
  names.forEach((n) => visit(n, new Set()));
  return depth;
}

function drawDag(panel) {
  const box = document.getElementById("dag");
  box.replaceChildren();
  if (!panel.available) return box.append(unavailable(panel));
  const views = new Map(panel.rows.map((v) => [`${v.schema}.${v.name}`, v]));
  const inputsOf = new Map();
  const names = new Set(views.keys());
  for (const e of panel.edges || []) {
    if (!views.has(e.view)) continue;
    names.add(e.input);
    if (!inputsOf.has(e.view)) inputsOf.set(e.view, []);
    inputsOf.get(e.view).push(e.input);
  }
  if (!names.size) return box.append(el("p", { class: "muted" }, "no materialized views"));
  const depth = layers([...names].sort(), inputsOf);
  const columns = [];
  for (const n of [...names].sort()) {
    const d = depth.get(n) || 0;
    (columns[d] = columns[d] || []).push(n);
  }
  const W = 190, H = 40, GX = 70, GY = 16;
  const pos = new Map();
  columns.forEach((col, c) => col.forEach((n, r) => pos.set(n, { x: 10 + c * (W + GX), y: 10 + r * (H + GY) })));
  const tallest = Math.max(...columns.map((c) => (c ? c.length : 0)));
  const root = svg("svg", { width: 20 + columns.length * (W + GX) - GX, height: 20 + tallest * (H + GY) - GY, role: "img", "aria-label": "view lineage" });
  for (const [view, ins] of inputsOf) {
    const to = pos.get(view);
    for (const i of ins) {
      const from = pos.get(i);
      const x1 = from.x + W, y1 = from.y + H / 2, x2 = to.x, y2 = to.y + H / 2;
      root.append(svg("path", { class: "edge", d: `M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}` }));
    }
  }
  for (const [n, p] of pos) {
    const v = views.get(n);
    const state = v ? nodeState(v) : "table";
    const g = svg("g", { class: `node ${state}`, "data-node": n, "data-state": state, transform: `translate(${p.x},${p.y})` });
    const tip = v ? `${n}\nstatus: ${v.status}\n${v.staleness}\nlast refresh: ${when(v.last_refresh)}\nschedule: ${show(v.schedule) || "manual"}` : `${n} (table)`;
    g.append(svg("title", {}, tip));
    g.append(svg("rect", { width: W, height: H, rx: 6 }));
    g.append(svg("text", { x: 8, y: 16, class: "name" }, n.length > 28 ? n.slice(0, 27) + "…" : n));
    g.append(svg("text", { x: 8, y: 32, class: "sub" }, v ? `${v.status} · ${when(v.last_refresh).slice(5, 16)}` : "table"));
    root.append(g);
  }
  box.append(root);
}

function drawTimeline(panel) {
  const box = document.getElementById("timeline");
  box.replaceChildren();
  if (!panel.available) return box.append(unavailable(panel));
  const rows = panel.rows.filter((r) => r.started);
  if (!rows.length) return box.append(el("p", { class: "muted" }, "no refreshes yet"));
  const lanes = [...new Set(rows.map((r) => r.view))].sort();
  const times = rows.flatMap((r) => [Date.parse(r.started), Date.parse(r.finished || r.started)]);
  const t0 = Math.min(...times), t1 = Math.max(...times, t0 + 1000);
  const L = 200, W = 760, LH = 22;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - 10);
  const root = svg("svg", { width: L + W, height: lanes.length * LH + 24, role: "img", "aria-label": "refresh timeline" });
  lanes.forEach((lane, i) => {
    root.append(svg("text", { x: 4, y: i * LH + 15, class: "lane" }, lane));
    root.append(svg("line", { x1: L, x2: L + W - 10, y1: i * LH + 11, y2: i * LH + 11, class: "lane-line" }));
  });
  for (const r of rows) {
    const s = Date.parse(r.started), f = Date.parse(r.finished || r.started);
    const mark = svg("rect", { x: x(s), y: lanes.indexOf(r.view) * LH + 4, width: Math.max(4, x(f) - x(s)), height: 14, rx: 2, class: `mark ${r.status}` });
    mark.append(svg("title", {}, `${r.view} ${r.status} (${r.trigger}, ${r.mode})\n${when(r.started)} · ${show(r.rows_written)} rows${r.error ? "\n" + r.error : ""}`));
    root.append(mark);
  }
  const y = lanes.length * LH + 18;
  root.append(svg("text", { x: L, y, class: "axis" }, when(new Date(t0).toISOString())));
  root.append(svg("text", { x: L + W - 10, y, class: "axis", "text-anchor": "end" }, when(new Date(t1).toISOString())));
  box.append(root);
}

// An alert's key (a JSON object) as `a=1, b=2`.
function key(text) {
  try {
    const parsed = JSON.parse(text);
    if (parsed && typeof parsed === "object") {
      return Object.entries(parsed).map(([k, v]) => `${k}=${typeof v === "string" ? when(v) || v : JSON.stringify(v)}`).join(", ");
    }
  } catch (e) { /* not JSON: shown as it is */ }
  return show(text);
}

function drawAlerts(panel) {
  const box = document.getElementById("alerts");
  box.replaceChildren(panel.available ? table(panel.rows, [
    ["alert", "Alert"], ["view", "View"], ["severity", "Severity"], ["key", "Key", key],
    ["fired_at", "Fired", when], ["status", "Delivery"], ["acknowledged_by", "Acknowledged by"],
  ], (r) => `severity-${show(r.severity)}${r.acknowledged_by ? " acknowledged" : ""}`) : unavailable(panel));
}

function drawQuarantine(panel) {
  const box = document.getElementById("quarantine");
  box.replaceChildren();
  if (!panel.available) return box.append(unavailable(panel));
  box.append(table(panel.rows, [
    ["view", "View"], ["expectation", "Rule"], ["on_violation", "On violation"],
    ["violations", "Violations"], ["rows_checked", "Checked"], ["last", "Last", when],
  ], (r) => (r.violations > 0 ? "violated" : "")));
  for (const [view, sample] of Object.entries(panel.samples || {})) {
    if (!sample.length) continue;
    // The view's own columns first, medlake's bookkeeping (_medlake_*) after them.
    const keys = Object.keys(sample[0]);
    const ordered = keys.filter((k) => !k.startsWith("_medlake")).concat(keys.filter((k) => k.startsWith("_medlake_rules")));
    const cols = ordered.slice(0, 8).map((k) => [k, k === "_medlake_rules" ? "broke" : k]);
    box.append(el("h3", {}, `${view}_quarantine (sample)`), table(sample, cols));
  }
}

function drawWard(panel) {
  const section = document.getElementById("ward-panel");
  const box = document.getElementById("ward");
  section.hidden = !panel.available && panel.reason === "missing";
  box.replaceChildren();
  if (!panel.available) return box.append(unavailable(panel));
  const arrows = { up: "▲ up", down: "▼ down", same: "▶ same", new: "• new" };
  const wards = new Map();
  for (const r of panel.rows) {
    const w = show(r.ward) || "(no ward)";
    if (!wards.has(w)) wards.set(w, []);
    wards.get(w).push(r);
  }
  if (!wards.size) return box.append(el("p", { class: "muted" }, "no scores yet"));
  const grid = el("div", { class: "wards" });
  for (const [ward, rows] of wards) {
    grid.append(el("div", { class: "ward" }, el("h3", {}, ward), table(rows, [
      ["bed", "Bed"], ["patient_id", "Patient"], ["score", "NEWS2"], ["risk", "Risk"],
      ["trend", "Trend", (t) => arrows[t] || show(t)], ["hour", "Hour", (h) => when(h).slice(5, 16)],
    ], (r) => `risk-${show(r.risk)} trend-${show(r.trend)}`)));
  }
  box.append(grid);
}

function drawSources(panel) {
  const section = document.getElementById("sources-panel");
  section.hidden = !panel.available;
  if (!panel.available) return;
  const rows = panel.rows;
  const first = ["view", "sources", "freshness", "last_success", "lag_seconds", "rows",
    "consecutive_failures", "last_status", "last_error"];
  const keys = rows.length ? Object.keys(rows[0]) : [];
  const ordered = first.filter((k) => keys.includes(k)).concat(keys.filter((k) => !first.includes(k)));
  const fmt = (k) => (k === "last_success" ? when : undefined);
  const cols = ordered.map((k) => [k, k.replace(/_/g, " "), fmt(k)]);
  document.getElementById("sources").replaceChildren(table(rows, cols, (r) => `freshness-${show(r.freshness)}`));
}

async function api(path, options) {
  const response = await fetch(`/console/api/${path}`, { credentials: "same-origin", ...options });
  if (response.status === 401) {
    window.location.href = "/console/login";
    throw new Error("not logged in");
  }
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const all = await api("overview");
    drawDag(all.dag);
    drawTimeline(all.refreshes);
    drawAlerts(all.alerts);
    drawQuarantine(all.quarantine);
    drawWard(all.ward);
    drawSources(all.sources);
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.className = "muted";
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  } catch (e) {
    status.textContent = `not updated: ${e.message}`;
    status.className = "error";
  } finally {
    setTimeout(poll, CONSOLE.pollMs);
  }
}

async function logout() {
  await fetch("/console/logout", { method: "POST", credentials: "same-origin", headers: { "x-csrf-token": csrf } });
  window.location.href = "/console/login";
}

async function start() {
  try {
    const me = await api("session");
    csrf = me.csrf;
    document.getElementById("user").textContent = me.user;
  } catch (e) {
    return;
  }
  document.getElementById("logout").addEventListener("click", logout);
  poll();
}

document.addEventListener("DOMContentLoaded", start);

// berth's dashboard: reads the controller's API with a bearer token and redraws every two
// seconds. No framework, no CDN, no innerHTML: every value is set as text, so app names,
// commit messages and error texts can never inject markup.
"use strict";

const POLL_MS = 2000;
const EVENTS_MS = 5000;
const MAX_POINTS = 300; // 10 minutes at one point per poll
const series = new Map(); // app -> [{t, ready, desired, rps}]
let token = null;
let timer = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function age(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 120) return s + "s ago";
  if (s < 7200) return Math.round(s / 60) + "m ago";
  return Math.round(s / 3600) + "h ago";
}

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
  if (r.status === 401 || r.status === 403) throw Object.assign(new Error("the token was refused"), { auth: true });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r;
}

function showLogin(message) {
  clearTimeout(timer);
  document.getElementById("view").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("sync").textContent = "not signed in";
}

// Hosts report their proxies' request counters every few seconds: the rate is the change
// of the sum over the time since it last changed (kept between changes).
const counters = new Map(); // app -> {t, total, rps}

function rate(app) {
  if (typeof app.requests_total !== "number") return undefined;
  const now = Date.now();
  const c = counters.get(app.name);
  if (!c || app.requests_total < c.total) {
    counters.set(app.name, { t: now, total: app.requests_total, rps: c ? c.rps : undefined });
    return c ? c.rps : undefined;
  }
  if (app.requests_total > c.total) {
    c.rps = (app.requests_total - c.total) / Math.max(0.001, (now - c.t) / 1000);
    c.t = now;
    c.total = app.requests_total;
  } else if (now - c.t > 30000) {
    c.rps = 0; // no change for 30 s: idle
  }
  return c.rps;
}

function record(app) {
  let s = series.get(app.name);
  if (!s) { s = []; series.set(app.name, s); }
  s.push({ t: Date.now(), ready: app.ready, desired: app.desired, rps: rate(app) });
  if (s.length > MAX_POINTS) s.shift();
  return s;
}

function chart(points) {
  const w = 320, h = 48, pad = 3;
  const box = svg("svg", { class: "chart", width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img" });
  const maxReplicas = Math.max(1, ...points.map(p => Math.max(p.ready, p.desired)));
  const rpsPoints = points.filter(p => typeof p.rps === "number");
  const maxRps = Math.max(1, ...rpsPoints.map(p => p.rps));
  const x = i => pad + (points.length < 2 ? 0 : (i * (w - 2 * pad)) / (points.length - 1));
  const y = (v, max) => h - pad - (v * (h - 2 * pad)) / max;
  const line = (key, max, cls) => {
    const pts = points.map((p, i) => typeof p[key] === "number" ? `${x(i).toFixed(1)},${y(p[key], max).toFixed(1)}` : null)
      .filter(Boolean).join(" ");
    if (pts) box.append(svg("polyline", { class: cls, points: pts }));
  };
  line("desired", maxReplicas, "desired");
  line("ready", maxReplicas, "ready");
  if (rpsPoints.length) line("rps", maxRps, "rps");
  const last = points[points.length - 1];
  box.setAttribute("aria-label", `ready ${last.ready} of ${last.desired}`);
  const legend = el("div", { class: "legend" },
    `ready (green) / desired (dashed), max ${maxReplicas}`,
    rpsPoints.length ? ` · requests/s (blue), max ${maxRps.toFixed(1)}` : " · no request rate reported");
  return el("div", {}, box, legend);
}

function renderApps(apps) {
  const body = document.querySelector("#apps tbody");
  body.replaceChildren();
  document.getElementById("no-apps").hidden = apps.length > 0;
  for (const app of apps) {
    const points = record(app);
    const revision = el("td", { class: "num" }, String(app.revision));
    if (app.pinned) {
      revision.append(" ", el("span", { class: "pill warn", title: "pinned by berth rollback" }, "pinned"));
      if (app.head && app.head !== app.revision) revision.append(el("div", { class: "muted" }, "git head: revision " + app.head));
    }
    const healthy = app.ready >= app.desired;
    let state;
    if (app.last_error) state = el("td", { class: "bad" }, app.last_error);
    else if (healthy) state = el("td", { class: "ok" }, app.desired === 0 ? "scaled to zero" : "serving");
    else state = el("td", { class: "warn" }, "starting or rolling out");
    body.append(el("tr", { "data-app": app.name },
      el("td", {}, el("strong", {}, app.name)),
      revision,
      el("td", { class: "num " + (healthy ? "ok" : "warn") }, `${app.ready}/${app.desired}`),
      state,
      el("td", {}, chart(points))));
  }
  for (const name of [...series.keys()]) if (!apps.some(a => a.name === name)) series.delete(name);
}

function renderHosts(hosts) {
  const body = document.querySelector("#hosts tbody");
  body.replaceChildren();
  for (const h of hosts) {
    const labels = Object.entries(h.labels || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    body.append(el("tr", { "data-host": h.name },
      el("td", {}, el("strong", {}, h.name)),
      el("td", {}, el("span", { class: "pill " + (h.ready ? "ok" : "bad") }, h.ready ? "ready" : "down")),
      el("td", { class: "muted" }, labels || "—"),
      el("td", { class: "muted" }, age(h.last_seen_ms))));
  }
  if (!hosts.length) body.append(el("tr", {}, el("td", { colspan: 4, class: "muted" }, "No host has registered yet.")));
}

function renderSync(sync) {
  const commit = sync.commit ? sync.commit.slice(0, 12) : "no commit yet";
  document.getElementById("sync").textContent =
    `${sync.repo} · ${sync.branch} @ ${commit} · fetched ${age(sync.fetched_at_ms)}`;
  const banner = document.getElementById("errors");
  banner.hidden = !(sync.errors && sync.errors.length);
  banner.textContent = banner.hidden ? "" : "The last commit was refused; the previous one stays applied:\n" + sync.errors.join("\n");
}

async function refresh() {
  try {
    const status = await (await api("/v1/status")).json();
    document.getElementById("login").hidden = true;
    document.getElementById("view").hidden = false;
    renderSync(status.sync);
    renderApps(status.apps);
    renderHosts(status.hosts);
  } catch (e) {
    if (e.auth) { sessionStorage.removeItem("berth-token"); return showLogin(e.message); }
    document.getElementById("sync").textContent = "controller unreachable: " + e.message;
  }
  timer = setTimeout(refresh, POLL_MS);
}

async function refreshEvents() {
  try {
    const text = await (await api("/v1/events")).text();
    const events = text.split("\n").filter(Boolean).map(l => JSON.parse(l)).slice(-20).reverse();
    const list = document.getElementById("events");
    list.replaceChildren(...events.map(e => el("li", {},
      el("time", { datetime: new Date(e.time_ms).toISOString() }, new Date(e.time_ms).toLocaleTimeString()),
      el("span", { class: "reason" }, e.reason),
      el("span", { class: "muted" }, e.object + ": "),
      e.message)));
    if (!events.length) list.append(el("li", { class: "muted" }, "No events yet."));
  } catch (e) { /* the status poll reports trouble */ }
  if (token) setTimeout(refreshEvents, EVENTS_MS);
}

function start() {
  refresh();
  refreshEvents();
}

document.addEventListener("DOMContentLoaded", () => {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("berth-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  token = sessionStorage.getItem("berth-token");
  document.getElementById("login").addEventListener("submit", ev => {
    ev.preventDefault();
    token = document.getElementById("token").value.trim();
    if (!token) return;
    sessionStorage.setItem("berth-token", token);
    start();
  });
  if (token) start(); else showLogin();
});

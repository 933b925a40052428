// Quartermaster's dashboard: a token in sessionStorage, one server-sent-event stream of
// snapshots (read with fetch, so the token travels in a header), pages drawn from the latest
// snapshot. No framework, no build step.
"use strict";
const $ = (s) => document.querySelector(s);
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
const gpus = (m) => (m / 1000).toFixed(m % 1000 ? 1 : 0);
let snap = null;
let stream = null;

function token() { return sessionStorage.getItem("qm-token"); }

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + token() } });
  if (r.status === 401) { signOut("Your token is no longer valid."); throw new Error("unauthorized"); }
  if (!r.ok) throw new Error((await r.json()).message);
  return r.json();
}

function signOut(message) {
  sessionStorage.removeItem("qm-token");
  if (stream) stream.abort();
  snap = null;
  $("#view").innerHTML = "";
  $("#nav").hidden = true;
  $("#signin").hidden = false;
  $("#signin-error").textContent = message || "";
}

async function signIn(t) {
  const r = await fetch("/api/v1/nodes", { headers: { Authorization: "Bearer " + t } });
  if (!r.ok) { $("#signin-error").textContent = "That token was refused (" + r.status + ")."; return; }
  sessionStorage.setItem("qm-token", t);
  start();
}

function start() {
  $("#signin").hidden = true;
  $("#nav").hidden = false;
  if (!location.hash) location.hash = "#/overview";
  connect();
  render();
}

async function connect() {
  stream = new AbortController();
  try {
    const r = await fetch("/api/v1/stream", { headers: { Authorization: "Bearer " + token() }, signal: stream.signal });
    if (r.status === 401) return signOut("Your token is no longer valid.");
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    $("#live").textContent = "live";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i); buf = buf.slice(i + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (data) { snap = JSON.parse(data); render(); }
      }
    }
  } catch (e) { if (e.name === "AbortError") return; }
  $("#live").textContent = "reconnecting…";
  if (token()) setTimeout(connect, 1000);
}

function page() { return (location.hash || "#/overview").slice(2).split("/"); }

// How long each render took, in ms (read by `qm bench dashboard --browser`).
window.qmRenders = [];
function render() {
  const t0 = performance.now();
  renderPage();
  window.qmRenders.push(performance.now() - t0);
}

function renderPage() {
  const [p, arg] = page();
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.getAttribute("href") === "#/" + p));
  if (p === "jobs" && arg) return renderJob(arg);
  if (p === "report") {
    // Live snapshots come twice a second; the report is read again at most every 30 s.
    const key = arg || "7d";
    if (reportShown.key === key && performance.now() - reportShown.at < 30000 && ($("#report") || reportInflight)) return;
    reportShown = { key, at: performance.now() };
    return renderReport(key);
  }
  if (!snap) { $("#view").innerHTML = "<p>Waiting for data…</p>"; return; }
  const f = { overview, teams, queue, nodes, jobs }[p] || overview;
  const focused = document.activeElement && document.activeElement.id === "queue-filter";
  $("#view").innerHTML = f();
  if (p === "nodes") drawNodes();
  if (p === "queue") {
    const box = $("#queue-filter");
    box.addEventListener("input", () => { queueFilter = box.value; render(); });
    if (focused) { box.focus(); box.setSelectionRange(box.value.length, box.value.length); }
  }
}

function overview() {
  const o = snap.overview;
  const card = (t, v, id) => `<div class="card" id="${id}">${t}<b>${v}</b></div>`;
  return `<h1>Cluster</h1><div class="cards">
    ${card("GPUs", gpus(o.gpus_milli), "c-gpus")}${card("allocated", gpus(o.allocated_milli), "c-allocated")}
    ${card("borrowed", gpus(o.borrowed_milli), "c-borrowed")}${card("allocated but idle", gpus(o.idle_milli), "c-idle")}
    ${card("free", gpus(o.free_milli), "c-free")}${card("running jobs", o.running, "c-running")}${card("pending jobs", o.pending, "c-pending")}
  </div>${chart(snap.history, o.gpus_milli)}`;
}

function chart(h, total) {
  if (h.length < 2) return "<p>The chart fills in as samples arrive (every 5 s).</p>";
  const W = 800, H = 200, t0 = h[0][0], t1 = h[h.length - 1][0], max = Math.max(total, 1);
  const x = (t) => ((t - t0) / Math.max(t1 - t0, 1)) * W, y = (v) => H - (v / max) * H;
  const line = (k, c) => `<polyline fill="none" stroke="${c}" stroke-width="2" points="${h.map((s) => x(s[0]) + "," + y(s[k])).join(" ")}"/>`;
  const free = `<polyline fill="none" stroke="#999" stroke-dasharray="4" points="${h.map((s) => x(s[0]) + "," + y(total - s[1])).join(" ")}"/>`;
  return `<p class="legend"><span style="background:#2f6fdf"></span>allocated<span style="background:#e08a1e"></span>borrowed<span style="background:#c23"></span>idle<span style="background:#999"></span>free</p>
  <svg width="${W}" height="${H}" style="background:#fff">${line(1, "#2f6fdf")}${line(2, "#e08a1e")}${line(3, "#c23")}${free}</svg>`;
}

function teams() {
  const rows = snap.teams.map((t) => {
    const g = Math.max(t.guaranteed_milli, t.used_milli, 1);
    // Fair-share standing: decayed usage over entitlement; lower is served first.
    const share = t.standing && typeof t.standing.standing === "number" ? t.standing.standing.toFixed(2) : "";
    return `<tr><td>${esc(t.name)}</td><td>${gpus(t.guaranteed_milli)}</td><td>${gpus(t.used_milli)}</td><td>${gpus(t.borrowed_milli)}</td>
      <td>${gpus(t.idle_milli)}</td><td>${t.idle_gpu_hours.toFixed(2)}</td>
      <td><div class="bar"><span style="left:0;width:${(100 * Math.min(t.used_milli, t.guaranteed_milli)) / g}%;background:#2f6fdf"></span>
      <span style="left:${(100 * Math.min(t.used_milli, t.guaranteed_milli)) / g}%;width:${(100 * t.borrowed_milli) / g}%;background:#e08a1e"></span></div></td>
      <td>${esc(share)}</td><td>${idleJobs(t.idle_jobs || [])}</td></tr>`;
  });
  return `<h1>Teams</h1><table id="teams"><tr><th>team</th><th>guaranteed</th><th>used</th><th>borrowed</th><th>idle now</th><th>idle GPU-h charged</th><th>use of guarantee</th><th>fair-share standing (lower goes first)</th><th>idle jobs: what the team's idle policy does next</th></tr>${rows.join("")}</table>`;
}

// One line per idle job: flagged when, yielding (any job that needs its GPUs may preempt it),
// released when.
function idleJobs(list) {
  return list.map((i) => {
    let what;
    if (!i.flagged) what = `flagged in ${when(i.flagged_at_s)}`;
    else if (i.yielding) what = "yielding";
    else what = "flagged";
    if (i.release_at_s != null) what += `, released in ${when(i.release_at_s)}`;
    return `<div><a href="#/jobs/${i.job}">job ${i.job}</a>: ${esc(what)} (${esc(i.policy)})</div>`;
  }).join("");
}

function when(s) { if (s == null) return "—"; const d = s - snap.now; return d <= 0 ? "now" : d < 120 ? d + " s" : d < 7200 ? Math.round(d / 60) + " min" : Math.round(d / 3600) + " h"; }

// The queue, filtered by the words in the box (team, job, reason), an array's pending jobs
// on one row: those that wait for the same reason are the same row.
let queueFilter = "";
function queue() {
  const q = snap.queue;
  const words = queueFilter.toLowerCase().split(/\s+/).filter((w) => w);
  const shown = q.jobs.filter((j) => words.every((w) => (j.team + " " + j.id + " " + j.reason + " " + j.ask).toLowerCase().includes(w)));
  const rows = [];
  const arrays = {};
  for (const j of shown) {
    if (j.array) {
      const key = j.array[0];
      if (arrays[key]) { arrays[key].n += 1; arrays[key].lo = Math.min(arrays[key].lo, j.array[1]); arrays[key].hi = Math.max(arrays[key].hi, j.array[1]); continue; }
      arrays[key] = { n: 1, lo: j.array[1], hi: j.array[1], row: rows.length, j };
      rows.push(null);
      continue;
    }
    rows.push(`<tr><td><a href="#/jobs/${j.id}">${j.id}</a></td><td>${esc(j.team)}</td><td>${esc(j.ask)}</td><td>${esc(j.reason)}</td><td>${when(j.eta_s)}</td><td>${fmtWait(j.wait_s)}</td></tr>`);
  }
  for (const [id, a] of Object.entries(arrays)) {
    const j = a.j;
    rows[a.row] = `<tr class="array" id="array-${id}"><td><a href="#/jobs/${j.id}">${id}_[${a.lo}-${a.hi}]</a></td><td>${esc(j.team)}</td><td>${esc(j.ask)} × ${a.n} pending</td><td>${esc(j.reason)}</td><td>${when(j.eta_s)}</td><td>${fmtWait(j.wait_s)}</td></tr>`;
  }
  const resv = q.reservations.map((r) => `<li>job <a href="#/jobs/${r.id}">${r.id}</a> on ${esc(r.nodes.join(", "))} by ${when(r.start_s)}</li>`);
  return `<h1>Queue (${q.total} pending${q.total > q.jobs.length ? ", first " + q.jobs.length + " shown" : ""})</h1>
    <p><input id="queue-filter" placeholder="filter: team, job, reason" value="${esc(queueFilter)}"></p>
    <table id="queue"><tr><th>job</th><th>team</th><th>asks</th><th>why it waits</th><th>estimated start</th><th>waiting</th></tr>${rows.join("")}</table>
    <h1>Reservations</h1><ul id="reservations">${resv.join("") || "<li>none</li>"}</ul>`;
}

function fmtWait(s) { return s < 120 ? s + " s" : s < 7200 ? Math.round(s / 60) + " min" : (s / 3600).toFixed(1) + " h"; }

function nodes() {
  return `<h1>Nodes (${snap.nodes.length})</h1><p class="legend">blue: allocated share of each GPU; green dot: its utilisation; grey: down or draining</p><canvas id="heat"></canvas>`;
}

function drawNodes() {
  const racks = {};
  for (const n of snap.nodes) (racks[n.rack] = racks[n.rack] || []).push(n);
  const cell = 9, gap = 2, perRow = Math.max(1, Math.floor((window.innerWidth - 80) / (8 * cell + 6)));
  const names = Object.keys(racks).sort();
  let rows = 0; for (const r of names) rows += Math.ceil(racks[r].length / perRow);
  const c = $("#heat"); c.width = perRow * (8 * cell + 6) + 60; c.height = rows * (cell + gap) + names.length * 16 + 10;
  const g = c.getContext("2d"); let y = 4;
  for (const r of names) {
    g.fillStyle = "#555"; g.font = "11px sans-serif"; g.fillText(r || "(no rack)", 2, y + 10); y += 14;
    racks[r].forEach((n, i) => {
      const x0 = 60 + (i % perRow) * (8 * cell + 6), y0 = y + Math.floor(i / perRow) * (cell + gap);
      n.gpus.forEach(([m, u], k) => {
        g.fillStyle = n.state !== "ready" ? "#bbb" : `rgba(47,111,223,${0.12 + 0.88 * (m / 1000)})`;
        g.fillRect(x0 + k * cell, y0, cell - 1, cell - 1);
        if (m > 0 && u > 0) { g.fillStyle = `rgba(27,160,60,${u / 100})`; g.fillRect(x0 + k * cell + 2, y0 + 2, cell - 5, cell - 5); }
      });
    });
    y += Math.ceil(racks[r].length / perRow) * (cell + gap) + 2;
  }
}

function jobs() {
  const rows = snap.jobs.map((j) => `<tr id="job-${j.id}"><td><a href="#/jobs/${j.id}">${j.id}</a></td><td>${esc(j.team)}</td><td class="state-${j.state}">${j.state}</td><td>${esc(j.ask)}</td><td>${esc(j.admission || "")}</td><td>${j.preemptions}</td><td>${esc(j.name)}</td></tr>`);
  return `<h1>Recent jobs</h1><table id="jobs"><tr><th>job</th><th>team</th><th>state</th><th>asks</th><th>admission</th><th>preemptions</th><th>name</th></tr>${rows.join("")}</table>`;
}

let jobSeq = 0;
async function renderJob(id) {
  const seq = ++jobSeq;
  try {
    const j = await api("/api/v1/jobs/" + id);
    const tasks = j.placement.map((t) => `<tr><td>${t.index}</td><td>${esc(t.node)}</td><td>${t.gpus.join(", ")}</td><td>${t.exit_code ?? ""}</td></tr>`);
    const events = j.events.map((e) => `<tr><td>${new Date(e.at_s * 1000).toLocaleTimeString()}</td><td>${esc(e.what)}</td><td>${esc(e.detail)}</td></tr>`);
    let log = "";
    try { log = (await api(`/api/v1/jobs/${id}/logs?task=0&tail=4096`)).data; } catch (e) { log = ""; }
    if (seq !== jobSeq) return;
    $("#view").innerHTML = `<h1>Job ${j.id} <span class="state-${j.state}" id="job-state">${j.state}</span></h1>
      <p>team ${esc(j.team)} · ${j.tasks} × ${j.gpus ? j.gpus + " GPU" : j.gpu_milli ? j.gpu_milli + " mGPU" : "CPU only"} · attempt ${j.attempt} · preemptions ${j.preemptions}
      ${j.admission ? " · " + esc(j.admission) : ""}${j.util_pct != null ? " · utilisation " + j.util_pct + " %" : ""}</p>
      <p><code>${esc(j.command.join(" "))}</code></p>
      <h1>Tasks</h1><table><tr><th>task</th><th>node</th><th>GPUs</th><th>exit</th></tr>${tasks.join("") || "<tr><td colspan=4>not placed</td></tr>"}</table>
      <h1>Events</h1><table id="events"><tr><th>time</th><th>what</th><th>detail</th></tr>${events.join("")}</table>
      <h1>Log (task 0, tail)</h1><pre class="log">${esc(log)}</pre>`;
  } catch (e) { if (seq === jobSeq) $("#view").innerHTML = `<p class="error">${esc(e.message)}</p>`; }
}

// The report: each team's GPU-hours over a window (#/report/1d, 7d, 30d), from the usage
// samples the server keeps in its store, with each team's use over time.
const WINDOWS = { "1d": 86400, "7d": 7 * 86400, "30d": 30 * 86400 };
let reportShown = { key: null, at: 0 };
let reportInflight = false;
let reportSeq = 0;
async function renderReport(win) {
  const seq = ++reportSeq;
  const w = WINDOWS[win] ? win : "7d";
  reportInflight = true;
  try {
    const r = await api(`/api/v1/report?window_s=${WINDOWS[w]}&series=true`);
    reportInflight = false;
    if (seq !== reportSeq) return;
    const h = (x) => x.toFixed(1);
    const span = (s) => s == null ? "—" : fmtWait(s);
    const rows = r.teams.map((t) => `<tr id="report-${esc(t.team)}"><td>${esc(t.team)}</td><td>${h(t.guaranteed_gpu_hours)}</td><td>${h(t.used_gpu_hours)}</td>
      <td>${h(t.borrowed_gpu_hours)}</td><td>${h(t.lent_gpu_hours)}</td><td>${h(t.idle_gpu_hours)}</td><td>${t.jobs}</td>
      <td>${span(t.wait_p50_s)}</td><td>${span(t.wait_p99_s)}</td><td>${t.preemptions_suffered}</td><td>${t.preemptions_caused}</td></tr>`);
    const links = Object.keys(WINDOWS).map((k) => k === w ? `<b>${k}</b>` : `<a href="#/report/${k}">${k}</a>`).join(" · ");
    const byTeam = {};
    for (const s of r.series) (byTeam[s.team] = byTeam[s.team] || []).push(s);
    const charts = Object.keys(byTeam).sort().map((t) => `<div class="team-chart" id="chart-${esc(t)}"><h2>${esc(t)}</h2>${teamChart(byTeam[t], r.since_s, r.until_s)}</div>`);
    $("#view").innerHTML = `<h1>Report: the last ${w}</h1><p>${links} · ${r.samples} usage samples, one every ${span(r.sample_every_s)}; GPU-hours; waits from submission to first start</p>
      <table id="report"><tr><th>team</th><th>guaranteed</th><th>used</th><th>borrowed</th><th>lent</th><th>idle</th><th>jobs</th><th>wait p50</th><th>wait p99</th><th>preempted</th><th>caused</th></tr>${rows.join("")}</table>
      <h1>Use over time (GPUs)</h1><p class="legend"><span style="background:#2f6fdf"></span>used<span style="background:#e08a1e"></span>borrowed<span style="background:#1b9a3c"></span>lent<span style="background:#c23"></span>idle<span style="background:#999"></span>guaranteed</p>
      <div id="report-charts">${charts.join("") || "<p>No samples in this window yet.</p>"}</div>`;
  } catch (e) {
    reportInflight = false;
    // Shown until the next try (at most every 30 s), not asked again at every snapshot.
    if (seq === reportSeq) $("#view").innerHTML = `<p class="error" id="report">${esc(e.message)}</p>`;
  }
}

// One team's use over time: a line per measure, a time axis in local time, GPUs on the
// other, and each sample's values on hover.
function teamChart(pts, t0, t1) {
  const W = 720, H = 140, L = 40, B = 20;
  const max = Math.max(1000, ...pts.map((p) => Math.max(p.guaranteed_milli, p.used_milli)));
  const x = (t) => L + ((t - t0) / Math.max(t1 - t0, 1)) * (W - L - 4), y = (v) => H - B - (v / max) * (H - B - 6);
  const line = (k, c, dash) => `<polyline fill="none" stroke="${c}" stroke-width="1.5"${dash ? ' stroke-dasharray="4"' : ""} points="${pts.map((p) => x(p.at_s) + "," + y(p[k])).join(" ")}"/>`;
  const time = (t) => new Date(t * 1000).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  const ticks = [t0, (t0 + t1) / 2, t1].map((t, i) => `<text x="${x(t)}" y="${H - 4}" font-size="10" text-anchor="${["start", "middle", "end"][i]}">${time(t)}</text>`).join("");
  const yAxis = `<text x="2" y="12" font-size="10">${gpus(max)}</text><text x="2" y="${H - B}" font-size="10">0</text>`;
  const hover = pts.map((p) => `<circle cx="${x(p.at_s)}" cy="${y(p.used_milli)}" r="3" fill="transparent"><title>${time(p.at_s)}: used ${gpus(p.used_milli)}, borrowed ${gpus(p.borrowed_milli)}, lent ${gpus(p.lent_milli)}, idle ${gpus(p.idle_milli)} of ${gpus(p.guaranteed_milli)} guaranteed GPUs</title></circle>`).join("");
  return `<svg width="${W}" height="${H}" style="background:#fff">${yAxis}${ticks}${line("guaranteed_milli", "#999", true)}${line("used_milli", "#2f6fdf")}${line("borrowed_milli", "#e08a1e")}${line("lent_milli", "#1b9a3c")}${line("idle_milli", "#c23")}${hover}</svg>`;
}

window.addEventListener("hashchange", render);
$("#signin").addEventListener("submit", (e) => { e.preventDefault(); signIn($("#token").value.trim()); });
$("#signout").addEventListener("click", () => signOut(""));
if (token()) start(); else signOut("");

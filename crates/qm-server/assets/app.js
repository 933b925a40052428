// Quartermaster's dashboard: a token in sessionStorage, one server-sent-event stream of
// snapshots (read with fetch, so the token travels in a header), pages drawn from the latest
// snapshot. No framework, no build step.
"use strict";
const $ = (s) => document.querySelector(s);
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
const gpus = (m) => (m / 1000).toFixed(m % 1000 ? 1 : 0);
let snap = null;
let stream = null;
// Who is signed in (GET /api/v1/whoami): a member's teams come first on the pages that list
// teams.
let me = null;
// Snapshots received so far (a page read from the API is read again after a new one).
let snapSeq = 0;

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
  me = null;
  queueRead = { key: null, seq: -1, page: null, inflight: false };
  heatMouse = null;
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
  // The report is cached for 30 s: draw it again with the member's teams first.
  api("/api/v1/whoami").then((m) => { me = m; reportShown.key = null; render(); }).catch(() => {});
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
        if (data) { snap = JSON.parse(data); snapSeq += 1; render(); }
      }
    }
  } catch (e) { if (e.name === "AbortError") return; }
  $("#live").textContent = "reconnecting…";
  if (token()) setTimeout(connect, 1000);
}

// A page's URL is its hash: #/PAGE/ARG?q=WORDS&page=N, so any view can be shared.
function page() { return (location.hash || "#/overview").slice(2).split("?")[0].split("/"); }
function param(k) { return new URLSearchParams((location.hash.split("?")[1]) || "").get(k) || ""; }
function withParams(p, kv) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(kv)) if (v) q.set(k, v);
  const t = q.toString();
  return "#/" + p + (t ? "?" + t : "");
}
// Changes the URL without a new history entry per keystroke, and draws the page again.
function setParams(p, kv) { history.replaceState(null, "", withParams(p, kv)); render(); }
function mine(team) { return !!(me && me.teams.includes(team)); }
// A member's own teams first, then the rest, each group in the order given.
function mineFirst(list, team) { return [...list.filter((x) => mine(team(x))), ...list.filter((x) => !mine(team(x)))]; }

// How long each render took, in ms (read by `qm bench dashboard --browser`).
window.qmRenders = [];
function render() {
  const t0 = performance.now();
  renderPage();
  window.qmRenders.push(performance.now() - t0);
}

function renderPage() {
  const [p, arg] = page();
  if (p !== "nodes") heatMouse = null;
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
  const focused = document.activeElement && document.activeElement.id;
  $("#view").innerHTML = f();
  if (p === "nodes") drawNodes();
  // The search boxes keep their focus and caret while the page is drawn again.
  for (const [id, pg] of [["queue-filter", "queue"], ["node-search", "nodes"]]) {
    const box = document.getElementById(id);
    if (!box) continue;
    box.addEventListener("input", () => setParams(pg, { q: box.value }));
    if (focused === id) { box.focus(); box.setSelectionRange(box.value.length, box.value.length); }
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

// The last hour of the cluster: allocated, borrowed, idle and free GPUs, with a time axis
// and each sample's values on hover.
function chart(h, total) {
  if (h.length < 2) return "<p>The chart fills in as samples arrive (every 5 s).</p>";
  const pts = h.map((s) => ({ at_s: s[0], allocated: s[1], borrowed: s[2], idle: s[3], free: Math.max(total - s[1], 0) }));
  return timeChart(pts, [["allocated", "#2f6fdf"], ["borrowed", "#e08a1e"], ["idle", "#c23"], ["free", "#999", true]],
    h[0][0], h[h.length - 1][0], Math.max(total, 1000), 800, 200, "time", (p) => `allocated ${gpus(p.allocated)}, borrowed ${gpus(p.borrowed)}, idle ${gpus(p.idle)}, free ${gpus(p.free)} of ${gpus(total)} GPUs`) +
    `<p class="legend"><span style="background:#2f6fdf"></span>allocated<span style="background:#e08a1e"></span>borrowed<span style="background:#c23"></span>idle<span style="background:#999"></span>free (GPUs)</p>`;
}

// A chart over time: a line per series ([key, colour, dashed]), a time axis in local time,
// GPUs on the other axis, and each point's values (`tell`) on hover.
function timeChart(pts, series, t0, t1, max, W, H, fmt, tell) {
  const L = 44, B = 20;
  const x = (t) => L + ((t - t0) / Math.max(t1 - t0, 1)) * (W - L - 4), y = (v) => H - B - (v / max) * (H - B - 6);
  const line = ([k, c, dash]) => `<polyline fill="none" stroke="${c}" stroke-width="1.5"${dash ? ' stroke-dasharray="4"' : ""} points="${pts.map((p) => x(p.at_s) + "," + y(p[k])).join(" ")}"/>`;
  const time = (t) => new Date(t * 1000).toLocaleString([], fmt === "time" ? { hour: "2-digit", minute: "2-digit", second: "2-digit" } : { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  const ticks = [t0, (t0 + t1) / 2, t1].map((t, i) => `<text x="${x(t)}" y="${H - 4}" font-size="10" text-anchor="${["start", "middle", "end"][i]}">${time(t)}</text>`).join("");
  const yAxis = `<text x="2" y="12" font-size="10">${gpus(max)} GPUs</text><text x="2" y="${H - B}" font-size="10">0</text><line x1="${L}" y1="${H - B}" x2="${W - 4}" y2="${H - B}" stroke="#ccc"/>`;
  const hover = pts.map((p) => `<circle cx="${x(p.at_s)}" cy="${y(p[series[0][0]])}" r="3" fill="transparent"><title>${time(p.at_s)}: ${tell(p)}</title></circle>`).join("");
  return `<svg width="${W}" height="${H}" style="background:#fff">${yAxis}${ticks}${series.map(line).join("")}${hover}</svg>`;
}

function teams() {
  const rows = mineFirst(snap.teams, (t) => t.name).map((t) => {
    const g = Math.max(t.guaranteed_milli, t.used_milli, 1);
    // Fair-share standing: decayed usage over entitlement; lower is served first.
    const share = t.standing && typeof t.standing.standing === "number" ? t.standing.standing.toFixed(2) : "";
    return `<tr id="team-${esc(t.name)}"${mine(t.name) ? ' class="mine"' : ""}><td>${esc(t.name)}${mine(t.name) ? " <small>(yours)</small>" : ""}</td><td>${gpus(t.guaranteed_milli)}</td><td>${gpus(t.used_milli)}</td><td>${gpus(t.borrowed_milli)}</td>
      <td>${gpus(t.idle_milli)}</td><td>${t.idle_gpu_hours_7d.toFixed(2)}</td><td>${t.idle_gpu_hours.toFixed(2)}</td>
      <td><div class="bar"><span style="left:0;width:${(100 * Math.min(t.used_milli, t.guaranteed_milli)) / g}%;background:#2f6fdf"></span>
      <span style="left:${(100 * Math.min(t.used_milli, t.guaranteed_milli)) / g}%;width:${(100 * t.borrowed_milli) / g}%;background:#e08a1e"></span></div></td>
      <td>${esc(share)}</td><td>${idleJobs(t.idle_jobs || [])}</td></tr>`;
  });
  return `<h1>Teams</h1><table id="teams"><tr><th>team</th><th>guaranteed</th><th>used</th><th>borrowed</th><th>idle now</th><th>idle GPU-h, last 7 days</th><th>idle GPU-h charged in all</th><th>use of guarantee</th><th>fair-share standing (lower goes first)</th><th>idle jobs: what the team's idle policy does next</th></tr>${rows.join("")}</table>`;
}

// One line per idle job: flagged when, yielding (any job that needs its GPUs may preempt it),
// released when.
function idleJobs(list) {
  const SHOWN = 3;
  const more = list.length > SHOWN ? `<div>and ${list.length - SHOWN} more idle jobs</div>` : "";
  return list.slice(0, SHOWN).map((i) => {
    let what;
    if (!i.flagged) what = `flagged in ${when(i.flagged_at_s)}`;
    else if (i.yielding) what = "yielding";
    else what = "flagged";
    if (i.release_at_s != null) what += `, released in ${when(i.release_at_s)}`;
    return `<div><a href="#/jobs/${i.job}">job ${i.job}</a>: ${esc(what)} (${esc(i.policy)})</div>`;
  }).join("") + more;
}

function when(s) { if (s == null) return "—"; const d = s - snap.now; return d <= 0 ? "now" : d < 120 ? d + " s" : d < 7200 ? Math.round(d / 60) + " min" : Math.round(d / 3600) + " h"; }

// The queue in plan order, a page of QUEUE_PAGE at a time, filtered by the words in the box
// (team, job, ask, reason); an array's pending jobs on one row. The first page unfiltered
// comes with every snapshot; other pages and filters are read from GET /api/v1/queue (again
// with each snapshot, one read at a time).
const QUEUE_PAGE = 100;
let queueRead = { key: null, seq: -1, page: null, inflight: false };
function queue() {
  const q = snap.queue;
  const filter = param("q"), n = Math.max(1, parseInt(param("page"), 10) || 1);
  let jobs, matched, pageOf;
  if (!filter && n === 1) {
    jobs = q.jobs.slice(0, QUEUE_PAGE); matched = q.total;
  } else {
    const key = `offset=${(n - 1) * QUEUE_PAGE}&limit=${QUEUE_PAGE}&filter=${encodeURIComponent(filter)}`;
    if (!queueRead.inflight && (queueRead.key !== key || queueRead.seq !== snapSeq)) {
      const seq = snapSeq;
      queueRead.inflight = true;
      // An answer for a session signed out since is dropped.
      const tok = token();
      const done = (got) => { if (token() !== tok) return; queueRead = { key, seq, page: got, inflight: false }; if (page()[0] === "queue") render(); };
      api("/api/v1/queue?" + key).then((r) => done(r)).catch((e) => done({ error: e.message }));
    }
    pageOf = queueRead.key === key ? queueRead.page : null;
    // While a page is read, the count last read stands.
    const known = queueRead.page && queueRead.page.matched != null ? queueRead.page.matched : null;
    if (!pageOf) return queueFrame(filter, n, known, "<tr><td colspan=6>reading…</td></tr>", q);
    if (pageOf.error) return queueFrame(filter, n, known, `<tr><td colspan=6 class="error">${esc(pageOf.error)}</td></tr>`, q);
    jobs = pageOf.jobs; matched = pageOf.matched;
  }
  const rows = [];
  const arrays = {};
  for (const j of jobs) {
    if (j.array) {
      const key = j.array[0];
      if (arrays[key]) { arrays[key].n += 1; arrays[key].lo = Math.min(arrays[key].lo, j.array[1]); arrays[key].hi = Math.max(arrays[key].hi, j.array[1]); continue; }
      arrays[key] = { n: 1, lo: j.array[1], hi: j.array[1], row: rows.length, j };
      rows.push(null);
      continue;
    }
    rows.push(`<tr id="pending-${j.id}"><td><a href="#/jobs/${j.id}">${j.id}</a></td><td>${esc(j.team)}</td><td>${esc(j.ask)}</td><td>${esc(j.reason)}</td><td>${when(j.eta_s)}</td><td>${fmtWait(j.wait_s)}</td></tr>`);
  }
  for (const [id, a] of Object.entries(arrays)) {
    const j = a.j;
    rows[a.row] = `<tr class="array" id="array-${id}"><td><a href="#/jobs/${j.id}">${id}_[${a.lo}-${a.hi}]</a></td><td>${esc(j.team)}</td><td>${esc(j.ask)} × ${a.n} pending</td><td>${esc(j.reason)}</td><td>${when(j.eta_s)}</td><td>${fmtWait(j.wait_s)}</td></tr>`;
  }
  return queueFrame(filter, n, matched, rows.join("") || "<tr><td colspan=6>no pending job matches</td></tr>", q);
}

// The page around the rows: a count of matches (null while unknown) and a pager.
function queueFrame(filter, n, matched, rows, q) {
  const link = (k, text, id) => `<a id="${id}" href="${withParams("queue", { q: filter, page: k > 1 ? String(k) : "" })}">${text}</a>`;
  let pager;
  if (matched == null) pager = `<p id="pager">page ${n}</p>`;
  else {
    const pages = Math.max(1, Math.ceil(matched / QUEUE_PAGE));
    const back = n > pages ? link(pages, "‹ last page", "queue-prev") : n > 1 ? link(n - 1, "‹ previous", "queue-prev") : "";
    pager = `<p id="pager">${back ? back + " · " : ""}page ${n} of ${pages}${n < pages ? " · " + link(n + 1, "next ›", "queue-next") : ""}</p>`;
  }
  const nodesOf = (r) => r.nodes.length > 8 ? r.nodes.slice(0, 8).join(", ") + ` and ${r.nodes.length - 8} more nodes` : r.nodes.join(", ");
  const resv = q.reservations.map((r) => `<li>job <a href="#/jobs/${r.id}">${r.id}</a> on ${esc(nodesOf(r))} by ${when(r.start_s)}</li>`);
  return `<h1>Queue (${q.total} pending${filter && matched != null ? ", " + matched + " match" : ""})</h1>
    <p><input id="queue-filter" size="40" placeholder="filter: team, job, ask, reason" value="${esc(filter)}"></p>
    <table id="queue"><tr><th>job</th><th>team</th><th>asks</th><th>why it waits</th><th>estimated start</th><th>waiting</th></tr>${rows}</table>${pager}
    <h1>Reservations</h1><ul id="reservations">${resv.join("") || "<li>none</li>"}</ul>`;
}

function fmtWait(s) { return s < 120 ? s + " s" : s < 7200 ? Math.round(s / 60) + " min" : (s / 3600).toFixed(1) + " h"; }

// The heat map: a cell per GPU, racks in rows; hovering a cell tells its node, GPU, job,
// team and utilisation; the search box (node, rack, model, team, or a job's id) outlines the
// GPUs that match and dims the rest.
function nodes() {
  const q = param("q");
  const hits = q ? nodeHits(q) : null;
  const found = hits ? `<span id="node-hits">${hits.nodes} nodes, ${hits.gpus} GPUs match</span>` : "";
  return `<h1>Nodes (${snap.nodes.length})</h1>
    <p><input id="node-search" size="40" placeholder="search: node, rack, team or job id" value="${esc(q)}"> ${found}</p>
    <p class="legend">blue: allocated share of each GPU; green dot: its utilisation; grey: down or draining; orange outline: matches the search</p>
    <div class="heat-wrap"><canvas id="heat"></canvas><div id="heat-tip" hidden></div></div>`;
}

// The tasks on a node's GPU.
function gpuTasks(n, k) { return (n.tasks || []).filter((t) => t.gpus.includes(k)); }

// Does GPU k of node n match every word? A word of digits is a job id; any other word is
// found in the node's name, rack, model or state, or the team of a job on the GPU.
function gpuMatches(n, k, words) {
  const ts = gpuTasks(n, k);
  const text = [n.name, n.rack, n.model, n.state, ...ts.map((t) => t.team)].join(" ").toLowerCase();
  return words.every((w) => /^\d+$/.test(w) ? ts.some((t) => String(t.job) === w) : text.includes(w));
}

function searchWords(q) { return q.toLowerCase().split(/\s+/).filter((w) => w); }

function nodeHits(q) {
  const words = searchWords(q);
  let nodes = 0, gpus = 0;
  for (const n of snap.nodes) {
    const g = n.gpus.filter((_, k) => gpuMatches(n, k, words)).length;
    if (g) { nodes += 1; gpus += g; }
  }
  return { nodes, gpus };
}

let heatCells = [];
let heatMouse = null;
function drawNodes() {
  const racks = {};
  for (const n of snap.nodes) (racks[n.rack] = racks[n.rack] || []).push(n);
  const cell = 9, gap = 2, perRow = Math.max(1, Math.floor((window.innerWidth - 80) / (8 * cell + 6)));
  const names = Object.keys(racks).sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  const words = searchWords(param("q"));
  let rows = 0; for (const r of names) rows += Math.ceil(racks[r].length / perRow);
  const c = $("#heat"); c.width = perRow * (8 * cell + 6) + 60; c.height = rows * (cell + gap) + names.length * 16 + 10;
  const g = c.getContext("2d"); let y = 4;
  heatCells = [];
  for (const r of names) {
    g.globalAlpha = 1; g.fillStyle = "#555"; g.font = "11px sans-serif"; g.fillText(r || "(no rack)", 2, y + 10); y += 14;
    racks[r].forEach((n, i) => {
      const x0 = 60 + (i % perRow) * (8 * cell + 6), y0 = y + Math.floor(i / perRow) * (cell + gap);
      n.gpus.forEach(([m, u], k) => {
        const hit = words.length > 0 && gpuMatches(n, k, words);
        g.globalAlpha = words.length > 0 && !hit ? 0.25 : 1;
        g.fillStyle = n.state !== "ready" ? "#bbb" : `rgba(47,111,223,${0.12 + 0.88 * (m / 1000)})`;
        g.fillRect(x0 + k * cell, y0, cell - 1, cell - 1);
        if (m > 0 && u > 0) { g.fillStyle = `rgba(27,160,60,${u / 100})`; g.fillRect(x0 + k * cell + 2, y0 + 2, cell - 5, cell - 5); }
        if (hit) { g.strokeStyle = "#e08a1e"; g.lineWidth = 2; g.strokeRect(x0 + k * cell - 0.5, y0 - 0.5, cell, cell); }
        heatCells.push({ x: x0 + k * cell, y: y0, w: cell, h: cell, n, k });
      });
    });
    y += Math.ceil(racks[r].length / perRow) * (cell + gap) + 2;
  }
  g.globalAlpha = 1;
  c.onmousemove = (e) => { const b = c.getBoundingClientRect(); heatMouse = [e.clientX - b.left, e.clientY - b.top]; heatTip(); };
  c.onmouseleave = () => { heatMouse = null; heatTip(); };
  heatTip();
}

// The hovered GPU's details, kept up to date as snapshots arrive.
function heatTip() {
  const tip = $("#heat-tip");
  if (!tip) return;
  const at = heatMouse && heatCells.find((c) => heatMouse[0] >= c.x && heatMouse[0] < c.x + c.w && heatMouse[1] >= c.y && heatMouse[1] < c.y + c.h);
  if (!at) { tip.hidden = true; return; }
  const { n, k } = at, [m, u] = n.gpus[k];
  const ts = gpuTasks(n, k).map((t) => `job ${t.job} (${esc(t.team)})`).join(", ");
  tip.innerHTML = `<b>${esc(n.name)}</b> GPU ${k}<br>${esc(n.rack || "no rack")} · ${esc(n.model)} · ${esc(n.state)}<br>` +
    (m > 0 ? `${ts || "another team's job"}, ${gpus(m)} GPU allocated, utilisation ${u} %` : "free");
  tip.style.left = at.x + 14 + "px"; tip.style.top = at.y + 14 + "px";
  tip.hidden = false;
}

// Where GPU k of a node is drawn, in the viewport (for tests).
window.qmHeatCell = (name, k) => {
  const c = heatCells.find((c) => c.n.name === name && c.k === k), canvas = $("#heat");
  if (!c || !canvas) return null;
  const b = canvas.getBoundingClientRect();
  return { x: b.left + c.x + 3, y: b.top + c.y + 3 };
};

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
    const rows = mineFirst(r.teams, (t) => t.team).map((t) => `<tr id="report-${esc(t.team)}"${mine(t.team) ? ' class="mine"' : ""}><td>${esc(t.team)}${mine(t.team) ? " <small>(yours)</small>" : ""}</td><td>${h(t.guaranteed_gpu_hours)}</td><td>${h(t.used_gpu_hours)}</td>
      <td>${h(t.borrowed_gpu_hours)}</td><td>${h(t.lent_gpu_hours)}</td><td>${h(t.idle_gpu_hours)}</td><td>${t.jobs}</td>
      <td>${span(t.wait_p50_s)}</td><td>${span(t.wait_p99_s)}</td><td>${t.preemptions_suffered}</td><td>${t.preemptions_caused}</td></tr>`);
    const links = Object.keys(WINDOWS).map((k) => k === w ? `<b>${k}</b>` : `<a href="#/report/${k}">${k}</a>`).join(" · ");
    const byTeam = {};
    for (const s of r.series) (byTeam[s.team] = byTeam[s.team] || []).push(s);
    const charts = mineFirst(Object.keys(byTeam).sort(), (t) => t).map((t) => `<div class="team-chart" id="chart-${esc(t)}"><h2>${esc(t)}</h2>${teamChart(byTeam[t], r.since_s, r.until_s)}</div>`);
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
  const max = Math.max(1000, ...pts.map((p) => Math.max(p.guaranteed_milli, p.used_milli)));
  return timeChart(pts, [["used_milli", "#2f6fdf"], ["guaranteed_milli", "#999", true], ["borrowed_milli", "#e08a1e"], ["lent_milli", "#1b9a3c"], ["idle_milli", "#c23"]],
    t0, t1, max, 600, 140, "date", (p) => `used ${gpus(p.used_milli)}, borrowed ${gpus(p.borrowed_milli)}, lent ${gpus(p.lent_milli)}, idle ${gpus(p.idle_milli)} of ${gpus(p.guaranteed_milli)} guaranteed GPUs`);
}

window.addEventListener("hashchange", render);
$("#signin").addEventListener("submit", (e) => { e.preventDefault(); signIn($("#token").value.trim()); });
$("#signout").addEventListener("click", () => signOut(""));
if (token()) start(); else signOut("");

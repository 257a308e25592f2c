// edge-xmr gallery: talks to /api/* and shows thumbnails by photo id. Every string from the
// server is set with textContent (never innerHTML).
"use strict";

const $ = (id) => document.getElementById(id);
let statusTimer = null;
// Every search or "more like this" gets a number; only the latest one may draw. Changing a filter
// fires a search while the user is still typing, so answers can come back out of order.
let latestRequest = 0;
let inflight = null;

function el(tag, props = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") e.textContent = v;
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.appendChild(c);
  return e;
}

async function getJSON(url, signal) {
  const r = await fetch(url, { headers: { Accept: "application/json" }, signal });
  let body;
  try { body = await r.json(); } catch (_) { body = { error: `The server answered ${r.status} without JSON.` }; }
  if (!r.ok) throw new Error(body.error || `Request failed (${r.status}).`);
  return body;
}

function showMessage(text, info = false) {
  const m = $("message");
  m.textContent = text || "";
  m.className = info ? "info" : "";
  m.hidden = !text;
}

function filterParams() {
  const p = new URLSearchParams();
  for (const id of ["after", "until", "folder"]) if ($(id).value) p.set(id, $(id).value);
  return p;
}

function fmt(x, digits) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }

function timingText(t) {
  if (!t) return "";
  if (t.embed_ms === undefined) return `${fmt(t.total_ms, 1)} ms`;
  return `embed ${fmt(t.embed_ms, 1)} ms · KNN ${fmt(t.knn_ms, 1)} ms · rerank ${fmt(t.rerank_ms, 1)} ms` +
    ` (${t.candidates} candidates) · total ${fmt(t.total_ms, 1)} ms`;
}

function card(r) {
  const img = el("img", { src: `/thumb/${r.id}`, alt: r.name, loading: "lazy", width: "320", height: "240" });
  const link = el("a", { href: `/photo/${r.id}`, target: "_blank", rel: "noopener", title: "Open the photo" }, [img]);
  const scores = r.cross === null
    ? `#${r.rank} · similarity ${fmt(r.bi, 3)}`
    : `#${r.rank} · cross ${fmt(r.cross, 2)} · bi ${fmt(r.bi, 3)}`;
  const more = el("button", { type: "button", class: "secondary more", text: "More like this" });
  more.addEventListener("click", () => similar(r.id, r.name));
  const cap = el("figcaption", {}, [
    el("span", { class: "name", text: r.name, title: `${r.folder}/${r.name}` }),
    el("span", { class: "scores", text: scores }),
    el("span", { class: "taken", text: `${r.taken.replace("T", " ")} · ${r.folder}` }),
    more,
  ]);
  return el("figure", { class: "result", "data-id": String(r.id) }, [link, cap]);
}

// Start a request that replaces any earlier one: returns its number and abort signal.
function nextRequest() {
  if (inflight) inflight.abort();
  inflight = new AbortController();
  latestRequest += 1;
  return { id: latestRequest, signal: inflight.signal };
}

function isStale(req) { return req.id !== latestRequest; }

function render(title, data) {
  $("title").textContent = title;
  $("timings").textContent = timingText(data.timings);
  $("summary").hidden = false;
  const box = $("results");
  box.replaceChildren(...data.results.map(card));
  showMessage(data.note || "", true);
}

async function search(ev) {
  if (ev) ev.preventDefault();
  const q = $("q").value;
  const p = filterParams();
  p.set("q", q);
  p.set("rerank", $("rerank").value);
  const req = nextRequest();
  try {
    const data = await getJSON(`/api/search?${p}`, req.signal);
    if (isStale(req)) return;
    render(`“${data.query}”: ${data.results.length} photos`, data);
  } catch (e) {
    if (isStale(req)) return;
    $("results").replaceChildren();
    $("summary").hidden = true;
    showMessage(e.message);
  }
}

async function similar(id, name) {
  const p = filterParams();
  p.set("id", String(id));
  const req = nextRequest();
  try {
    const data = await getJSON(`/api/similar?${p}`, req.signal);
    if (isStale(req)) return;
    render(`More like ${name}: ${data.results.length} photos`, data);
    window.scrollTo(0, 0);
  } catch (e) {
    if (isStale(req)) return;
    showMessage(e.message);
  }
}

async function loadFolders() {
  try {
    const data = await getJSON("/api/folders");
    const sel = $("folder");
    const keep = sel.value;
    sel.replaceChildren(el("option", { value: "", text: "all folders" }),
      ...data.folders.map((f) => el("option", { value: String(f.id), text: `${f.name} (${f.photos})` })));
    sel.value = keep;
  } catch (_) { /* no index yet: the status line says so */ }
}

async function refreshStatus() {
  let s;
  try { s = await getJSON("/api/status"); } catch (e) { $("status").textContent = e.message; return; }
  const parts = [];
  if (s.message) parts.push(s.message);
  else parts.push(`${s.photos} photos indexed${s.model ? ` · model ${s.model}` : ""}`);
  if (!s.search) parts.push("Search is off (no model bundle).");
  $("status").textContent = parts.join(" ");
  $("status").className = s.indexing.running || !s.ready ? "busy" : "";
  clearTimeout(statusTimer);
  if (s.indexing.running || !s.ready) {
    statusTimer = setTimeout(() => { refreshStatus(); loadFolders(); }, 2000);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("search").addEventListener("submit", search);
  for (const id of ["after", "until", "folder", "rerank"]) {
    $(id).addEventListener("change", () => { if ($("q").value.trim()) search(); });
  }
  refreshStatus();
  loadFolders();
});

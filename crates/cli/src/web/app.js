// The page watching `tvix-oci-build serve`: the list of builds from
// /api/builds, refreshed every second, and the log of the build selected
// (#build=ID, or the newest running one) from /api/builds/ID/events.
//
// Build logs are untrusted: every text goes in with textContent, never
// as HTML. The page keeps at most MAX_LINES lines of log.
"use strict";

const MAX_LINES = 5000;
const REFRESH_MS = 1000;

let watched = null; // { id, source, ended }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function millis(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms < 1000 ? ms + " ms" : (ms / 1000).toFixed(1) + " s";
}

function phase(b) {
  if (b.outcome) return b.outcome.ok ? "built" : "failed";
  return b.queue_position ? "queued (#" + b.queue_position + ")" : b.phase;
}

function outcome(b) {
  if (!b.outcome) return "";
  const o = b.outcome;
  const parts = [o.summary];
  if (o.fault) parts.push("(" + o.fault + "'s fault)");
  return parts.join(" ");
}

function row(b) {
  const tr = el("tr");
  tr.dataset.build = String(b.id);
  if (b.outcome && !b.outcome.ok) tr.classList.add("failed");
  if (watched && watched.id === b.id) tr.classList.add("selected");
  const cells = [
    b.id, b.build_id || "–", b.peer, phase(b), millis(b.wall_ms), millis(b.cpu_ms),
    bytes(b.peak_memory_bytes), bytes(b.input_bytes_fetched), b.log_lines,
  ];
  for (const c of cells) tr.appendChild(el("td", c));
  tr.appendChild(el("td", outcome(b), "outcome"));
  tr.addEventListener("click", () => { location.hash = "build=" + b.id; });
  return tr;
}

function fill(id, builds) {
  document.getElementById(id).replaceChildren(...builds.map(row));
  document.getElementById(id + "-empty").classList.toggle("hidden", builds.length > 0);
}

async function refresh() {
  try {
    const r = await fetch("/api/builds", { cache: "no-store" });
    if (!r.ok) throw new Error(r.status + " " + (await r.text()));
    const list = await r.json();
    fill("running", list.running);
    fill("recent", list.recent);
    document.getElementById("recent-kept").textContent =
      "(the last " + list.recent_kept + " are kept)";
    document.getElementById("status").textContent =
      "updated " + new Date().toLocaleTimeString();
    if (!selected() && !watched && list.running.length > 0) watch(list.running[0].id);
  } catch (e) {
    document.getElementById("status").textContent = "cannot reach the server: " + e.message;
  }
}

function logLine(text, cls) {
  const log = document.getElementById("log");
  const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.appendChild(el("div", text, cls));
  while (log.childElementCount > MAX_LINES) log.firstElementChild.remove();
  if (stick) log.scrollTop = log.scrollHeight;
}

function selected() {
  const m = /^#build=(\d+)$/.exec(location.hash);
  return m ? Number(m[1]) : null;
}

function watch(id) {
  if (watched) watched.source.close();
  const source = new EventSource("/api/builds/" + id + "/events");
  watched = { id, source, ended: false };
  document.getElementById("watching").textContent = "of build " + id;
  // A reconnection starts over with the lines kept: no line twice.
  source.onopen = () => document.getElementById("log").replaceChildren();
  source.addEventListener("log", (m) => {
    const l = JSON.parse(m.data);
    logLine(l.text, "line " + l.stream);
  });
  source.addEventListener("dropped", (m) => {
    const d = JSON.parse(m.data);
    logLine(d.forgotten
      ? "… " + d.lines + " earlier lines not kept by the server"
      : "… " + d.lines + " events dropped: this page read too slowly", "note");
  });
  source.addEventListener("end", (m) => {
    const b = JSON.parse(m.data);
    watched.ended = true;
    source.close();
    logLine("— " + outcome(b), b.outcome && b.outcome.ok ? "end" : "end failed");
  });
  source.onerror = () => {
    if (!watched.ended && source.readyState === EventSource.CLOSED) {
      logLine("— the server ended the log (is build " + id + " still kept?)", "note");
    }
  };
  for (const tr of document.querySelectorAll("tr[data-build]")) {
    tr.classList.toggle("selected", tr.dataset.build === String(id));
  }
}

window.addEventListener("hashchange", () => { const id = selected(); if (id !== null) watch(id); });
document.addEventListener("DOMContentLoaded", () => {
  const id = selected();
  if (id !== null) watch(id);
  refresh();
  setInterval(refresh, REFRESH_MS);
});

// The dashboard: polls the front end's JSON every 2 s and redraws. User text (prompts, errors, URLs) only
// ever goes into the page through textContent or element properties, never as HTML.

import { COLORS, drawChart, drawLegend } from "/ui/static/chart.js";

const POLL_MS = 2000;
const GB = 1024 ** 3;
const MB = 1024 ** 2;

const $ = (id) => document.getElementById(id);

function el(tag, { className, text, title } = {}, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (title) node.title = title;
  node.append(...children);
  return node;
}

function bytes(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "—";
  if (value >= GB) return `${(value / GB).toFixed(2)} GB`;
  if (value >= MB) return `${(value / MB).toFixed(0)} MB`;
  return `${(value / 1024).toFixed(0)} KB`;
}

function axisBytes(value) {
  if (value === 0) return "0";
  return value >= GB ? `${+(value / GB).toFixed(2)} GB` : `${+(value / MB).toFixed(1)} MB`;
}

const byteUnit = (top) => (top >= 2 * GB ? GB : MB);

function num(value, digits = 2) {
  return value === null || value === undefined || !Number.isFinite(value) ? "—" : value.toFixed(digits);
}

function badge(text, kind) {
  return el("span", { className: `badge ${kind}`, text });
}

function timeOf(epochSeconds) {
  return new Date(epochSeconds * 1000).toLocaleTimeString();
}

async function getJSON(path) {
  const response = await fetch(path, { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

// Workers, queue, outcomes.

function renderWorkers(summary) {
  const rows = summary.workers.map((w) => {
    const gpu = w.gpu && w.gpu.total_bytes
      ? `${bytes(w.gpu.reserved_bytes ?? w.gpu.allocated_bytes)} / ${bytes(w.gpu.total_bytes)}`
      : "—";
    const status = badge(w.status, w.healthy ? "ok" : "bad");
    const tr = el("tr", {},
      el("td", { text: w.url }),
      el("td", {}, status),
      el("td", { text: w.busy ? "busy" : "idle" }),
      el("td", { className: "num", text: w.generations }),
      el("td", { className: "num", text: w.failures }),
      el("td", { className: "num", text: bytes(w.rss_bytes) }),
      el("td", { className: "num", text: gpu }),
      el("td", { className: "muted", text: w.last_error ?? "" }),
    );
    return tr;
  });
  $("workers").tBodies[0].replaceChildren(...rows);
  const healthy = summary.workers.filter((w) => w.healthy).length;
  $("queue").textContent = `${healthy} of ${summary.workers.length} healthy · queue ${summary.queue_depth} `
    + `of ${summary.max_queue} · front end pid ${summary.front.pid}, RSS ${bytes(summary.front.rss_bytes)}`;
}

function outcomeKind(code) {
  if (code === "ok") return "ok";
  if (["memory_pressure", "overloaded", "timeout", "client_gone"].includes(code)) return "warn";
  return "bad";
}

function renderOutcomes(outcomes) {
  const entries = Object.entries(outcomes).sort((a, b) => b[1] - a[1]);
  const items = entries.map(([code, count]) => {
    const li = el("li", {}, badge(code, outcomeKind(code)));
    li.dataset.outcome = code;
    li.append(el("span", { className: "count", text: count }));
    return li;
  });
  if (items.length === 0) items.push(el("li", { className: "muted", text: "no request yet" }));
  $("outcomes").replaceChildren(...items);
}

// Memory chart.

let lastMemory = null;
let lastThresholds = null;

function renderMemory() {
  if (!lastMemory || !lastThresholds) return;
  const memory = lastMemory;
  const fitData = $("fit-data").checked;
  const series = memory.processes.map((p, i) => ({
    label: p.kind === "front" ? `front end (pid ${lastFrontPid ?? "?"})` : `worker ${p.name}`,
    color: COLORS[i % COLORS.length],
    values: p.rss,
  }));
  // The same limits apply to the front end's RSS and to each worker's.
  const thresholds = [
    { label: "cleanup", kind: "cleanup", value: lastThresholds.memory_cleanup_bytes },
    { label: "refuse", kind: "refuse", value: lastThresholds.memory_refuse_bytes },
  ];
  drawChart($("memory-chart"), {
    times: memory.times, series, thresholds, format: axisBytes, unit: byteUnit, fitData,
  });
  drawLegend($("memory-legend"), series, bytes);

  const gpuSeries = memory.processes
    .map((p, i) => ({ p, color: COLORS[i % COLORS.length] }))
    .filter(({ p }) => p.gpu && p.gpu_total)
    .map(({ p, color }) => ({
      label: `GPU of ${p.name}`,
      color,
      values: p.gpu.map((v) => (v === null ? null : v / p.gpu_total)),
    }));
  $("gpu-block").hidden = gpuSeries.length === 0;
  if (gpuSeries.length) {
    const percent = (v) => `${Math.round(v * 100)}%`;
    drawChart($("gpu-chart"), {
      times: memory.times,
      series: gpuSeries,
      thresholds: [
        { label: "cleanup", kind: "cleanup", value: lastThresholds.gpu_cleanup_fraction },
        { label: "refuse", kind: "refuse", value: lastThresholds.gpu_refuse_fraction },
      ],
      format: percent,
      unit: () => 0.01,
      yMax: fitData ? null : 1,
      fitData,
    });
    drawLegend($("gpu-legend"), gpuSeries, percent);
  }
}

let lastFrontPid = null;

// Generations table: one row per generation, kept across polls so images are fetched once.

const rows = new Map();
let records = new Map();

function beforeAfter(before, after, fixed) {
  if (fixed && after !== null && after !== undefined) return `${num(before)} → ${num(after)}`;
  return num(before ?? after);
}

function promptCell(g) {
  const td = el("td", { className: "prompt" });
  if (g.kind === "image") {
    if (g.thumbnail) {
      const img = el("img");
      img.alt = "prompt image";
      img.src = `/ui/generations/${g.id}/thumbnail.png`;
      td.append(img);
    }
    td.append(document.createTextNode(`image${g.image_format ? ` (${g.image_format})` : ""}`));
  } else {
    td.textContent = g.prompt ?? "";
    td.title = g.prompt ?? "";
  }
  return td;
}

function previewCell(g) {
  const td = el("td", { className: "preview" });
  td.dataset.state = g.preview;
  if (g.preview === "ready") {
    const img = el("img", { className: "preview-img" });
    img.alt = `preview of generation ${g.id}`;
    img.src = `/ui/generations/${g.id}/preview.png`;
    td.append(img);
  } else {
    const words = { pending: "rendering…", skipped: "skipped (busy)", failed: "failed", evicted: "evicted" };
    td.append(el("span", { className: "preview-state", text: words[g.preview] ?? "—" }));
  }
  return td;
}

function gatesCell(g) {
  const failures = g.gates ?? [];
  if (failures.length === 0) return el("td", {}, badge("pass", "ok"));
  return el("td", {}, ...failures.map((f) => badge(f.code ?? String(f), "bad")));
}

function buildRow(g) {
  const tr = el("tr");
  tr.dataset.id = String(g.id);
  tr.append(
    el("td", { className: "num", text: g.id }),
    el("td", { text: timeOf(g.time), title: new Date(g.time * 1000).toString() }),
    promptCell(g),
    el("td", { className: "num", text: (g.gaussians ?? 0).toLocaleString() }),
    el("td", { className: "num", text: beforeAfter(g.opacity_mean_before, g.opacity_mean_after, g.fixed) }),
    el("td", { className: "num", text: beforeAfter(g.opacity_std_before, g.opacity_std_after, g.fixed) }),
    el("td", {}, g.fixed ? badge("fixed", "warn") : badge("no", "plain")),
    gatesCell(g),
    el("td", { className: "num", text: num(g.seconds) }),
    previewCell(g),
  );
  tr.classList.toggle("no-ply", !g.ply);
  tr.title = g.ply ? "open the 3D view" : g.not_kept || "the PLY is no longer kept";
  tr.addEventListener("click", () => {
    const current = records.get(g.id);
    if (current && current.ply) openViewer(current);
  });
  return tr;
}

function renderGenerations(summary) {
  const body = $("generations").tBodies[0];
  records = new Map(summary.generations.map((g) => [g.id, g]));
  const wanted = [];
  for (const g of summary.generations) {
    const key = `${g.id}@${g.time}`;
    let row = rows.get(key);
    if (!row) {
      row = buildRow(g);
      rows.set(key, row);
    } else {
      const cell = row.querySelector("td.preview");
      if (cell.dataset.state !== g.preview) cell.replaceWith(previewCell(g));
      row.classList.toggle("no-ply", !g.ply);
    }
    wanted.push(row);
  }
  const keep = new Set(wanted);
  for (const [key, row] of rows) if (!keep.has(row)) rows.delete(key);
  body.replaceChildren(...wanted);
  $("no-generations").hidden = wanted.length > 0;
  const h = summary.history;
  $("history-usage").textContent = `${h.count} of the last ${h.size} kept · ${bytes(h.bytes)} of `
    + `${bytes(h.max_bytes)} ${h.on_disk ? "on disk" : "in memory"}`
    + (h.previews_skipped ? ` · ${h.previews_skipped} previews skipped` : "");
}

// The 3D viewer, loaded on first use so the page itself stays light.

let viewer = null;
let viewerToken = 0;

function fact(list, name, value) {
  list.append(el("dt", { text: name }), el("dd", { text: value }));
}

async function openViewer(g) {
  const box = $("viewer");
  const token = ++viewerToken;
  box.hidden = false;
  box.dataset.state = "loading";
  box.dataset.id = String(g.id);
  $("viewer-title").textContent = g.kind === "image" ? `#${g.id} · image prompt` : `#${g.id} · ${g.prompt ?? ""}`;
  $("viewer-title").title = g.prompt ?? "";
  $("viewer-download").href = `/ui/generations/${g.id}.ply`;
  $("viewer-download").download = `generation-${g.id}.ply`;
  $("viewer-status").textContent = `loading ${(g.gaussians ?? 0).toLocaleString()} gaussians…`;
  const facts = $("viewer-facts");
  facts.replaceChildren();
  fact(facts, "time", new Date(g.time * 1000).toLocaleString());
  fact(facts, "endpoint", g.endpoint ?? "—");
  fact(facts, "seed", g.seed ?? "—");
  fact(facts, "gaussians", (g.gaussians ?? 0).toLocaleString());
  fact(facts, "PLY", bytes(g.ply_bytes));
  fact(facts, "opacity mean", beforeAfter(g.opacity_mean_before, g.opacity_mean_after, g.fixed));
  fact(facts, "opacity std", beforeAfter(g.opacity_std_before, g.opacity_std_after, g.fixed));
  fact(facts, "fixed", g.fixed ? "yes" : "no");
  fact(facts, "seconds", num(g.seconds));
  fact(facts, "worker", g.worker ?? "—");
  const preview = $("viewer-preview");
  preview.hidden = g.preview !== "ready";
  if (g.preview === "ready") preview.src = `/ui/generations/${g.id}/preview.png`;
  try {
    if (!viewer) {
      const { SplatViewer } = await import("/ui/static/viewer.js");
      viewer = new SplatViewer($("viewer-stage"));
    }
    const count = await viewer.show(`/ui/generations/${g.id}.ply`);
    if (token !== viewerToken) return;
    $("viewer-status").textContent = `${count.toLocaleString()} splats loaded`;
    box.dataset.state = "ready";
  } catch (error) {
    if (token !== viewerToken) return;
    $("viewer-status").textContent = `could not show this splat: ${error?.message ?? error}`;
    box.dataset.state = "error";
  }
}

function closeViewer() {
  viewerToken++;
  if (viewer) viewer.stop();
  $("viewer").hidden = true;
  $("viewer").dataset.state = "closed";
}

// Polling.

async function poll() {
  try {
    const [summary, memory] = await Promise.all([getJSON("/ui/api/summary"), getJSON("/ui/api/memory")]);
    lastFrontPid = summary.front.pid;
    lastThresholds = summary.thresholds;
    lastMemory = memory;
    renderWorkers(summary);
    renderOutcomes(summary.outcomes);
    renderGenerations(summary);
    renderMemory();
    const connection = $("connection");
    connection.textContent = `updated ${new Date().toLocaleTimeString()}`;
    connection.classList.remove("lost");
    document.body.dataset.polls = String(Number(document.body.dataset.polls ?? 0) + 1);
  } catch (error) {
    const connection = $("connection");
    connection.textContent = `front end unreachable (${error?.message ?? error}); retrying`;
    connection.classList.add("lost");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

$("viewer-close").addEventListener("click", closeViewer);
$("viewer").addEventListener("click", (event) => {
  if (event.target === $("viewer")) closeViewer();
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !$("viewer").hidden) closeViewer();
});
$("fit-data").addEventListener("change", renderMemory);
poll();

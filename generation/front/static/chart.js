// A small line chart in inline SVG: one line per process, dashed threshold lines, time along the bottom.
// Every label is set with textContent.

const SVG_NS = "http://www.w3.org/2000/svg";
const PAD = { left: 64, right: 120, top: 14, bottom: 28 };
export const COLORS = ["#2f5fd0", "#1a9a8a", "#8a4fd0", "#d04f8a", "#5a8a1a", "#d0802f", "#4f8ad0"];

function svgEl(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

function niceStep(range, ticks) {
  const raw = range / Math.max(ticks, 1);
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= raw) return m * power;
  return 10 * power;
}

function agoLabel(seconds, span) {
  if (seconds < 0.05) return "now";
  if (span < 20) return `-${seconds.toFixed(1)} s`;
  if (seconds < 90) return `-${Math.round(seconds)} s`;
  return `-${Math.round(seconds / 60)} min`;
}

// series: [{label, color, values: [number|null]}]; thresholds: [{label, value, kind: "cleanup"|"refuse"}].
// format(value) labels the y axis, unit(top) the size ticks are round in (1 GB, 1 MB, 1%);
// fitData: scale to the data even when thresholds lie above it.
export function drawChart(svg, { times, series, thresholds = [], format, unit = () => 1, fitData = false, yMax = null }) {
  svg.replaceChildren();
  const box = svg.viewBox.baseVal;
  const width = box.width;
  const height = box.height;
  const plotW = width - PAD.left - PAD.right;
  const plotH = height - PAD.top - PAD.bottom;

  const values = series.flatMap((s) => s.values).filter((v) => v !== null && Number.isFinite(v));
  if (times.length === 0 || values.length === 0) {
    svg.append(svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" },
      "waiting for samples…"));
    return;
  }
  const dataMax = Math.max(...values);
  let top = yMax ?? Math.max(dataMax, fitData ? 0 : Math.max(0, ...thresholds.map((t) => t.value)));
  // Headroom above the highest line, unless the caller fixed the top (a share of the card tops at 100%).
  top = top > 0 ? top * (yMax === null ? 1.08 : 1) : 1;
  const scale = unit(top);
  const step = niceStep(top / scale, 5) * scale;
  top = Math.ceil(top / step) * step;

  const t0 = times[0];
  const t1 = times[times.length - 1];
  const span = Math.max(t1 - t0, 1);
  const x = (t) => PAD.left + ((t - t0) / span) * plotW;
  const y = (v) => PAD.top + plotH - (v / top) * plotH;

  for (let v = 0; v <= top + step / 2; v += step) {
    svg.append(svgEl("line", { x1: PAD.left, x2: PAD.left + plotW, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(svgEl("text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis-label" }, format(v)));
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + (span * i) / 4;
    svg.append(svgEl("text", { x: x(t), y: height - 8, "text-anchor": "middle", class: "axis-label" },
      agoLabel(t1 - t, span)));
  }

  for (const threshold of thresholds) {
    const label = `${threshold.label} ${format(threshold.value)}`;
    if (threshold.value <= top) {
      const ty = y(threshold.value);
      svg.append(svgEl("line", { x1: PAD.left, x2: PAD.left + plotW, y1: ty, y2: ty,
        class: `threshold ${threshold.kind}` }));
      svg.append(svgEl("text", { x: PAD.left + plotW + 6, y: ty + 4, class: `threshold-label ${threshold.kind}` },
        label));
    } else {
      // Off the top of a chart fitted to the data: still say where it is.
      const order = threshold.kind === "refuse" ? 0 : 1;
      svg.append(svgEl("text", { x: PAD.left + plotW + 6, y: PAD.top + 8 + order * 14,
        class: `threshold-label ${threshold.kind}` }, `${label} ↑`));
    }
  }

  for (const s of series) {
    let d = "";
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) {
        pen = false;
        return;
      }
      d += `${pen ? "L" : "M"}${x(times[i]).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    if (d) svg.append(svgEl("path", { d, class: "series", stroke: s.color }));
  }
}

export function drawLegend(list, series, format) {
  list.replaceChildren();
  for (const s of series) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = s.color;
    const last = [...s.values].reverse().find((v) => v !== null && Number.isFinite(v));
    item.append(swatch, document.createTextNode(`${s.label}: ${last === undefined ? "—" : format(last)}`));
    list.append(item);
  }
}

// Charts as SVG drawn with attributes and classes (the page's CSP allows no inline style):
// stacked bars with axes, tick labels, a legend, and a <title> per bar for hover values.
"use strict";

function niceMax(value) {
  if (value <= 5) return 5;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

// rows: [{label, title, values: {series: n}}]; series: [[key, label], ...].
function stackedBars(id, rows, series, opts) {
  const o = { width: 720, height: 220, unit: "", ...(opts || {}) };
  const left = 44, bottom = 28, top = 10, right = 8;
  const plotW = o.width - left - right, plotH = o.height - top - bottom;
  const totals = rows.map((r) => series.reduce((sum, [key]) => sum + (Number(r.values[key]) || 0), 0));
  const max = niceMax(Math.max(0, ...totals));
  const y = (v) => top + plotH - (plotH * v) / max;
  const chart = svg("svg", { viewBox: `0 0 ${o.width} ${o.height}`, class: "chart", id, role: "img",
    "aria-label": o.label || "" });
  if (o.label) chart.append(svg("title", {}, o.label));
  for (const tick of [0, max / 2, max]) {  // y axis: grid lines and labels
    chart.append(svg("line", { x1: left, x2: o.width - right, y1: y(tick), y2: y(tick), class: "grid" }),
      svg("text", { x: left - 6, y: y(tick) + 4, class: "tick", "text-anchor": "end" }, formatTick(tick) + o.unit));
  }
  chart.append(svg("line", { x1: left, x2: left, y1: top, y2: top + plotH, class: "axis" }),
    svg("line", { x1: left, x2: o.width - right, y1: top + plotH, y2: top + plotH, class: "axis" }));
  const slot = plotW / Math.max(1, rows.length);
  const every = Math.ceil(rows.length / 8);
  rows.forEach((row, i) => {
    const x = left + i * slot;
    const group = svg("g", { class: "bar" });
    let base = 0;
    const parts = [];
    for (const [key, label] of series) {
      const n = Number(row.values[key]) || 0;
      parts.push(label + " " + formatTick(n) + o.unit);
      if (!n) continue;
      group.append(svg("rect", { x: x + slot * 0.12, width: Math.max(1, slot * 0.76), y: y(base + n),
        height: Math.max(0.5, y(base) - y(base + n)), class: "s-" + key }));
      base += n;
    }
    // the whole column answers hover, even where it is empty
    group.append(svg("rect", { x, width: slot, y: top, height: plotH, class: "hover" }));
    group.append(svg("title", {}, row.title + ": " + parts.join(", ")));
    chart.append(group);
    if (i % every === 0) {
      chart.append(svg("text", { x: x + slot / 2, y: o.height - 10, class: "tick", "text-anchor": "middle" }, row.label));
    }
  });
  const legend = el("p", { class: "legend" }, series.map(([key, label]) =>
    el("span", {}, svg("svg", { viewBox: "0 0 10 10", class: "swatch" }, svg("rect", { width: 10, height: 10, class: "s-" + key })), label)));
  return el("figure", { class: "figure" }, chart, series.length > 1 ? legend : null);
}

function formatTick(n) {
  return Number.isInteger(n) ? String(n) : n.toFixed(n < 10 ? 2 : 1).replace(/\.?0+$/, "");
}

// Horizontal bars, one per row: [{label, values: {series: n}}] (per upstream, per login).
function hbars(id, rows, series) {
  if (!rows.length) return el("p", { class: "empty" }, t("none"));
  const width = 720, rowH = 22, labelW = 230;
  const max = niceMax(Math.max(1, ...rows.map((r) => series.reduce((s, [k]) => s + (Number(r.values[k]) || 0), 0))));
  const chart = svg("svg", { viewBox: `0 0 ${width} ${rows.length * rowH + 6}`, class: "chart hbars", id });
  rows.forEach((row, i) => {
    const yTop = 3 + i * rowH;
    chart.append(svg("text", { x: labelW - 6, y: yTop + 15, class: "tick", "text-anchor": "end", translate: "no" }, row.label));
    let base = 0;
    const parts = [];
    const group = svg("g", { class: "bar" });
    for (const [key, label] of series) {
      const n = Number(row.values[key]) || 0;
      parts.push(label + " " + n);
      if (!n) continue;
      const x = labelW + ((width - labelW - 40) * base) / max;
      group.append(svg("rect", { x, y: yTop + 3, height: rowH - 6, width: Math.max(1, ((width - labelW - 40) * n) / max), class: "s-" + key }));
      base += n;
    }
    group.append(svg("title", {}, row.label + ": " + parts.join(", ")));
    chart.append(group, svg("text", { x: labelW + ((width - labelW - 40) * base) / max + 4, y: yTop + 15, class: "tick" }, String(base)));
  });
  return el("figure", { class: "figure" }, chart);
}

// Charts as SVG drawn with attributes and classes (the page's CSP allows no inline style):
// stacked bars with axes, tick labels, a legend, and a <title> per bar for hover values;
// horizontal bars; a line over time (the queue depth) with a <title> per sample.
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
  axes(chart, o, max, y, { left, right, top, plotH });
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

// The y axis (grid lines and labels at 0, half and the top) and the x axis line.
function axes(chart, o, max, y, box) {
  const { left, right, top, plotH } = box;
  for (const tick of [0, max / 2, max]) {
    chart.append(svg("line", { x1: left, x2: o.width - right, y1: y(tick), y2: y(tick), class: "grid" }),
      svg("text", { x: left - 6, y: y(tick) + 4, class: "tick", "text-anchor": "end" }, formatTick(tick) + o.unit));
  }
  chart.append(svg("line", { x1: left, x2: left, y1: top, y2: top + plotH, class: "axis" }),
    svg("line", { x1: left, x2: o.width - right, y1: top + plotH, y2: top + plotH, class: "axis" }));
}

// A line over time with the area under it: points [{time (ms), value, title}], each the
// start of a step of opts.step ms, drawn from opts.start to opts.end (ms) with a label every
// opts.tickEvery ms (opts.tickLabel(ms)).  Samples more than 2.5 steps apart are not joined
// (nothing was sampled between them); a point alone is a dot.  Every step with a sample
// answers hover with its <title>.
function lineChart(id, points, opts) {
  const o = { width: 720, height: 220, unit: "", ...(opts || {}) };
  const left = 44, bottom = 28, top = 10, right = 8;
  const plotW = o.width - left - right, plotH = o.height - top - bottom;
  const max = niceMax(Math.max(0, ...points.map((p) => Number(p.value) || 0)));
  const span = Math.max(1, o.end - o.start);
  const x = (ms) => left + (plotW * Math.min(Math.max(ms - o.start, 0), span)) / span;
  const y = (v) => top + plotH - (plotH * v) / max;
  const chart = svg("svg", { viewBox: `0 0 ${o.width} ${o.height}`, class: "chart line-chart", id, role: "img",
    "aria-label": o.label || "" });
  if (o.label) chart.append(svg("title", {}, o.label));
  axes(chart, o, max, y, { left, right, top, plotH });
  for (let ms = o.start; ms < o.end; ms += o.tickEvery) {
    chart.append(svg("line", { x1: x(ms), x2: x(ms), y1: top + plotH, y2: top + plotH + 4, class: "axis" }),
      svg("text", { x: x(ms), y: o.height - 10, class: "tick", "text-anchor": "middle" }, o.tickLabel(ms)));
  }
  const mid = (p) => x(p.time + o.step / 2);
  const segments = [];
  points.forEach((p, i) => {
    if (i === 0 || p.time - points[i - 1].time > 2.5 * o.step) segments.push([]);
    segments[segments.length - 1].push(p);
  });
  for (const segment of segments) {
    const coords = segment.map((p) => `${mid(p).toFixed(1)} ${y(Number(p.value) || 0).toFixed(1)}`);
    if (segment.length === 1) {
      chart.append(svg("circle", { cx: mid(segment[0]), cy: y(Number(segment[0].value) || 0), r: 2.5, class: "s-depth lone" }));
      continue;
    }
    const base = y(0).toFixed(1);
    chart.append(svg("path", { d: `M ${mid(segment[0]).toFixed(1)} ${base} L ${coords.join(" L ")} L ${mid(segment[segment.length - 1]).toFixed(1)} ${base} Z`, class: "area" }),
      svg("path", { d: "M " + coords.join(" L "), class: "line" }));
  }
  for (const p of points) {
    const x0 = x(p.time), width = Math.max(2, x(p.time + o.step) - x0);
    chart.append(svg("g", { class: "bar point" },
      svg("rect", { x: x0, width, y: top, height: plotH, class: "hover" }),
      svg("circle", { cx: mid(p), cy: y(Number(p.value) || 0), r: 3.5, class: "s-depth dot" }),
      svg("title", {}, p.title)));
  }
  return el("figure", { class: "figure" }, chart);
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

// The monitor page: a project's traces, runs, error rate, latency (and tokens, feedback once the
// server has them) over 1, 7 or 30 days, drawn as plain SVG from /ui/api/monitor. Every point
// carries its value (data-value), and the numbers are in a table too.
"use strict";
(() => {
  const { api, guarded, message, el } = UI;
  const project = document.body.dataset.projectId;
  const params = new URLSearchParams(location.search);
  const days = ["1", "7", "30"].includes(params.get("days")) ? params.get("days") : "1";
  const SVG = "http://www.w3.org/2000/svg";
  const W = 560, H = 170, PAD = { l: 52, r: 12, t: 12, b: 24 };
  const COLORS = ["#1e88e5", "#43a047", "#e53935", "#fb8c00", "#8e24aa", "#00897b"];

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    for (const c of children) node.append(c);
    return node;
  }

  function label(start, step) {
    const d = new Date(start);
    return step >= 86400 ? d.toISOString().slice(5, 10) : d.toISOString().slice(5, 16).replace("T", " ");
  }

  function format(value, unit) {
    if (value === null || value === undefined) return "–";
    if (unit === "%") return (value * 100).toFixed(1) + " %";
    if (unit === "ms") return value >= 1000 ? (value / 1000).toFixed(2) + " s" : Math.round(value) + " ms";
    return Number(value).toLocaleString();
  }

  // A line chart of one or more series over the intervals; nulls leave gaps.
  function chart(title, lines, data, unit, note) {
    const box = el("section", { class: "chart", "data-chart": title });
    box.append(el("h2", { text: title }));
    if (note) { box.classList.add("chart-off"); box.append(el("p", { class: "hint", text: note })); return box; }
    const points = data.points;
    const values = lines.flatMap((l) => l.values).filter((v) => v !== null);
    const max = Math.max(unit === "%" ? 0.01 : 1, ...values);
    const x = (i) => PAD.l + (points.length < 2 ? 0 : i * (W - PAD.l - PAD.r) / (points.length - 1));
    const y = (v) => H - PAD.b - v / max * (H - PAD.t - PAD.b);
    const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "plot", role: "img", "aria-label": title });
    for (const f of [0, 0.5, 1]) {
      plot.append(svg("line", { x1: PAD.l, x2: W - PAD.r, y1: y(max * f), y2: y(max * f), class: "grid" }));
      const t = svg("text", { x: PAD.l - 6, y: y(max * f) + 4, class: "tick", "text-anchor": "end" });
      t.textContent = format(max * f, unit);
      plot.append(t);
    }
    [0, points.length - 1].forEach((i, n) => {
      const t = svg("text", { x: x(i), y: H - 6, class: "tick", "text-anchor": n ? "end" : "start" });
      t.textContent = label(points[i].start, data.step_seconds);
      plot.append(t);
    });
    lines.forEach((line, n) => {
      const color = COLORS[n % COLORS.length];
      let d = "";
      line.values.forEach((v, i) => { if (v !== null) d += (d && line.values[i - 1] !== null ? "L" : "M") + x(i) + " " + y(v); });
      const group = svg("g", { class: "series", "data-series": line.name });
      group.append(svg("path", { d, fill: "none", stroke: color, "stroke-width": 2 }));
      line.values.forEach((v, i) => {
        if (v === null) return;
        const dot = svg("circle", { cx: x(i), cy: y(v), r: 2.5, fill: color, "data-value": String(v), "data-start": points[i].start });
        dot.append(svg("title", {}, document.createTextNode(line.label + " " + label(points[i].start, data.step_seconds) + ": " + format(v, unit))));
        group.append(dot);
      });
      plot.append(group);
    });
    box.append(plot, el("div", { class: "legend" }, ...lines.map((l, n) => {
      const key = el("span", { class: "key" });
      key.style.background = COLORS[n % COLORS.length];
      return el("span", {}, key, l.label);
    })));
    return box;
  }

  function draw(data) {
    const col = (name) => data.points.map((p) => p[name]);
    const t = data.totals;
    document.getElementById("totals").replaceChildren(...[
      ["traces", "Traces", t.traces], ["runs", "Runs", t.runs],
      ["error_rate", "Error rate", t.error_rate, "%"], ["p50", "Latency p50", t.p50, "ms"],
      ["p99", "Latency p99", t.p99, "ms"], ["tokens", "Tokens", t.tokens],
    ].filter((row) => row[2] !== undefined).flatMap(([key, name, value, unit]) =>
      [el("dt", { text: name }), el("dd", { "data-total": key, "data-value": String(value), text: format(value, unit) })]));
    const has = (name) => data.series.includes(name);
    const charts = [
      chart("Traces and runs", [{ name: "traces", label: "traces", values: col("traces") }, { name: "runs", label: "runs", values: col("runs") }], data),
      chart("Error rate of traces", [{ name: "error_rate", label: "error rate", values: col("error_rate") }], data, "%"),
      chart("Latency of root runs", [{ name: "p50", label: "p50", values: col("p50") }, { name: "p99", label: "p99", values: col("p99") }], data, "ms"),
      // Lights up when the runs table has token columns (the query issue's migration).
      has("tokens") ? chart("Tokens", [{ name: "tokens", label: "total tokens", values: col("tokens") }], data)
        : chart("Tokens", [], data, "", "Shown once the server stores token usage."),
      // Lights up when the feedback table exists (the feedback issue's migration).
      data.feedback ? chart("Feedback (average score)", Object.entries(data.feedback).map(([key, slots]) =>
        ({ name: "feedback:" + key, label: key, values: slots.map((s) => (s ? s.avg : null)) })), data)
        : chart("Feedback (average score)", [], data, "", "Shown once the server stores feedback."),
    ];
    document.getElementById("charts").replaceChildren(...charts);
    const names = data.series;
    const table = document.getElementById("numbers");
    table.replaceChildren(el("thead", {}, el("tr", {}, el("th", { text: "interval start" }), ...names.map((n) => el("th", { text: n })))),
      el("tbody", {}, ...data.points.map((p) => el("tr", { "data-start": p.start }, el("td", { text: label(p.start, data.step_seconds) }),
        ...names.map((n) => el("td", { "data-series": n, text: p[n] === null ? "" : String(p[n]) }))))));
  }

  async function load() {
    for (const a of document.querySelectorAll(".windows a")) a.classList.toggle("current", a.dataset.days === days);
    const [projectInfo, data] = await Promise.all([
      api("sessions/" + project).catch(() => null),
      api("ui/api/monitor?" + new URLSearchParams({ session: project, days })),
    ]);
    if (projectInfo && projectInfo.name) {
      document.getElementById("monitor-title").textContent = "Monitor · " + projectInfo.name;
      document.title = "Monitor " + projectInfo.name + " · run-handler";
    }
    draw(data);
    message(data.totals.runs ? "" : "No runs in the last " + days + (days === "1" ? " day." : " days."));
  }

  guarded(load);
})();

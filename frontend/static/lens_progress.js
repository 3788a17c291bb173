/* The progress measures of the metrics lens: small multiples, one per measure, with phase
 * boundaries (server/lenses/metrics.py; loaded by its partial, driven by lenses.js). */
(function () {
  "use strict";

  const L = window.PhaseboardLenses;

  // One colour per head name (l0.h0, l0.h1, ...), the same in every panel and the legend.
  const HEAD_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
    "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#843c39", "#7b4173", "#3182bd", "#e6550d"];
  // What a group's own line is when it also has per-head lines (analysis.progress).
  const GROUP_LINE = { prefix_matching: "best head (max over heads)" };

  /** Small multiples, one per measure (per-head measures "a/b" share the panel of "a"); a
   *  legend names the per-head lines (one entry per head, its colour in every panel). */
  function drawProgress(progress, bs, state) {
    const el = document.getElementById("plot-progress");
    const status = document.getElementById("progress-status");
    if (!el || !window.Plotly) return;
    const groups = {};
    Object.keys(progress).forEach((name) => {
      const g = name.split("/")[0];
      (groups[g] = groups[g] || []).push(name);
    });
    const names = Object.keys(groups).sort();
    L.showCards(["card-progress"], names.length > 0);
    if (!names.length) {
      const busy = state && (state.state === "queued" || state.state === "running");
      L.setStatus(status, busy ? L.stateText(state, "")
        : "No progress measures yet (the task defines none, or no metrics job has run).", state);
      el.style.height = "0px";
      return;
    }
    const cols = window.innerWidth < 700 ? 1 : 2;
    const rows = Math.ceil(names.length / cols);
    const traces = [];
    const annotations = [];
    const shapes = [];
    const heads = Array.from(new Set(Object.keys(progress).filter((n) => n.includes("/"))
      .map((n) => n.slice(n.indexOf("/") + 1)))).sort();
    const headColor = (h) => HEAD_COLORS[heads.indexOf(h) % HEAD_COLORS.length];
    const inLegend = new Set();
    const layout = { grid: { rows, columns: cols, pattern: "independent", ygap: 0.35, xgap: 0.12 },
      margin: { l: 50, r: 10, t: 25, b: 30 }, showlegend: heads.length > 0, hovermode: "closest",
      legend: { orientation: "h", x: 0, y: -0.06, yanchor: "top", font: { size: 11 }, title: { text: "heads: " } } };
    names.forEach((g, i) => {
      const ax = i === 0 ? "" : String(i + 1);
      groups[g].sort().forEach((name) => {
        const s = progress[name];
        const own = name === g;
        const label = own ? (groups[g].length > 1 ? GROUP_LINE[g] || g : g) : name.slice(g.length + 1);
        const key = own ? "group:" + label : label;
        traces.push({ x: s.step, y: s.value, type: "scatter", mode: "lines+markers", name: label, meta: name,
          xaxis: "x" + ax, yaxis: "y" + ax, marker: { size: 4 }, legendgroup: key,
          showlegend: (!own || groups[g].length > 1) && !inLegend.has(key),
          line: { width: own ? 2.5 : 1.2, color: own ? "#111827" : headColor(label) },
          hovertemplate: L.escapeHtml(own ? g : g + " " + label) + "<br>step %{x}<br>%{y:.4g}<extra></extra>" });
        inLegend.add(key);
      });
      layout["xaxis" + ax] = { type: "log", title: i >= names.length - cols ? { text: "step (log scale)" } : undefined };
      layout["yaxis" + ax] = {};
      annotations.push({ text: "<b>" + L.escapeHtml(g) + "</b>" + (groups[g].length > 1 ? " (" + (groups[g].length - (progress[g] ? 1 : 0)) + " heads)" : ""),
        xref: "x" + ax + " domain", yref: "y" + ax + " domain", x: 0, y: 1.18, showarrow: false, xanchor: "left", font: { size: 12 } });
      bs.forEach((b) => {
        shapes.push({ type: "line", xref: "x" + ax, yref: "y" + ax + " domain", x0: b.step, x1: b.step, y0: 0, y1: 1,
          line: { color: L.sourceColor(b), width: 1.5, dash: b.manual ? "dot" : "dash" } });
      });
    });
    layout.annotations = annotations;
    layout.shapes = shapes;
    // The legend under the panels and their x titles: about four entries a row on a phone,
    // ten on a desktop; the figure grows by its rows.
    const legendRows = heads.length ? Math.ceil((heads.length + 1) / (window.innerWidth < 700 ? 4 : 10)) : 0;
    const legendPx = legendRows ? legendRows * 22 + 12 : 0;
    layout.margin.t = 40;
    layout.margin.b = 50 + legendPx;
    layout.height = rows * 190 + 70 + legendPx;
    const plotPx = layout.height - layout.margin.t - layout.margin.b;
    layout.legend.y = -48 / plotPx; // below the bottom row's tick labels and "step" title
    el.style.height = layout.height + "px";
    Plotly.react(el, traces, layout, { responsive: true, displaylogo: false });
    L.setStatus(status, Object.keys(progress).length + " series in " + names.length + " panel(s): " + names.join(", ") + ".", state);
  }

  L.register("metrics", {
    draw(ctx) { drawProgress(ctx.data.progress || {}, ctx.boundaries, ctx.state); },
  });
})();

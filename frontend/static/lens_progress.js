/* The progress measures of the metrics lens: small multiples, one per measure, with phase
 * boundaries (server/lenses/metrics.py; loaded by its partial, driven by lenses.js). */
(function () {
  "use strict";

  const L = window.PhaseboardLenses;

  /** Small multiples, one per measure (per-head measures "a/b" share the panel of "a"). */
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
    const layout = { grid: { rows, columns: cols, pattern: "independent", ygap: 0.35, xgap: 0.12 },
      margin: { l: 50, r: 10, t: 25, b: 30 }, showlegend: false, hovermode: "closest" };
    names.forEach((g, i) => {
      const ax = i === 0 ? "" : String(i + 1);
      groups[g].sort().forEach((name, k) => {
        const s = progress[name];
        const label = name === g ? g : name.slice(g.length + 1);
        traces.push({ x: s.step, y: s.value, type: "scatter", mode: "lines+markers", name: name,
          xaxis: "x" + ax, yaxis: "y" + ax, marker: { size: 4 },
          line: { width: name === g ? 2.5 : 1.2, color: name === g ? "#111827" : ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2"][k % 6] },
          hovertemplate: L.escapeHtml(label) + "<br>step %{x}<br>%{y:.4g}<extra></extra>" });
      });
      layout["xaxis" + ax] = { type: "log", title: i >= names.length - cols ? { text: "step" } : undefined };
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
    layout.height = rows * 190 + 50;
    el.style.height = layout.height + "px";
    Plotly.react(el, traces, layout, { responsive: true, displaylogo: false });
    L.setStatus(status, Object.keys(progress).length + " series in " + names.length + " panel(s): " + names.join(", ") + ".", state);
  }

  L.register("metrics", {
    draw(ctx) { drawProgress(ctx.data.progress || {}, ctx.boundaries, ctx.state); },
  });
})();

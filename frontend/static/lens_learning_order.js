/* The learning_order lens view: a histogram of learned-at steps and the per-example loss
 * heatmap (server/lenses/learning_order.py; loaded by its partial, driven by lenses.js). */
(function () {
  "use strict";

  const L = window.PhaseboardLenses;

  /** Histogram of learned-at steps in log-step bins, boundaries as dashed lines. */
  function drawLearned(lo, bs) {
    const el = document.getElementById("plot-learned");
    if (!el || !window.Plotly) return;
    const learned = lo.learned_at.filter((v) => v !== null && v > 0);
    const logs = learned.map((v) => Math.log10(v));
    const lo10 = Math.log10(Math.max(lo.steps.find((s) => s > 0) || 1, 1));
    const hi10 = Math.log10(Math.max(lo.steps[lo.steps.length - 1], 1));
    const nb = 24;
    const width = (hi10 - lo10) / nb || 0.1;
    const counts = new Array(nb).fill(0);
    logs.forEach((x) => { counts[Math.min(nb - 1, Math.max(0, Math.floor((x - lo10) / width)))] += 1; });
    const centers = counts.map((_, i) => Math.pow(10, lo10 + (i + 0.5) * width));
    const widths = counts.map((_, i) => Math.pow(10, lo10 + (i + 1) * width) - Math.pow(10, lo10 + i * width));
    const traces = [{ x: centers, y: counts, width: widths, type: "bar", name: "examples learned",
      marker: { color: "#60a5fa" }, hovertemplate: "around step %{x:.3s}: %{y} examples<extra></extra>" }];
    const shapes = bs.map((b) => ({ type: "line", xref: "x", yref: "paper", x0: b.step, x1: b.step, y0: 0, y1: 1,
      line: { color: L.sourceColor(b), width: 1.5, dash: b.manual ? "dot" : "dash" } }));
    if (bs.length) {
      traces.push({ x: bs.map((b) => b.step), y: bs.map(() => Math.max(...counts, 1)), type: "scatter", mode: "markers",
        name: "phase boundaries", marker: { symbol: "triangle-down", size: 10, color: bs.map(L.sourceColor) },
        hovertemplate: bs.map((b) => "<b>" + L.escapeHtml(b.label || b.kind) + "</b><br>step " + L.fmt(b.step) +
          "<br>source " + L.escapeHtml(b.manual ? "manual" : b.source) + "<extra></extra>") });
    }
    Plotly.react(el, traces, { margin: { l: 50, r: 10, t: 10, b: 45 }, bargap: 0.05, showlegend: false,
      xaxis: { type: "log", title: { text: "learned at step" } }, yaxis: { title: { text: "examples" } }, shapes },
    { responsive: true, displaylogo: false });
  }

  async function drawOrderHeatmap(runId) {
    const el = document.getElementById("plot-order-heatmap");
    if (!el || !window.Plotly) return;
    const resp = await fetch("/api/runs/" + runId + "/learning_order/heatmap?max_examples=200", { headers: { Accept: "application/json" } });
    if (!resp.ok) return;
    const h = await resp.json();
    const labels = h.examples.map((e, i) => i);
    Plotly.react(el, [{ z: h.z, x: h.steps.map(String), y: labels, type: "heatmap", colorscale: "Viridis", reversescale: true,
      customdata: h.examples.map((e, i) => h.steps.map(() => [e, h.learned_at[i] === null ? "never" : L.fmt(h.learned_at[i])])),
      colorbar: { title: { text: "loss" }, thickness: 12 },
      hovertemplate: "example %{customdata[0]} (learned at %{customdata[1]})<br>step %{x}<br>loss %{z:.3g}<extra></extra>" }],
    { margin: { l: 55, r: 10, t: 10, b: 45 }, xaxis: { type: "category", title: { text: "checkpoint step" }, nticks: 8 },
      yaxis: { title: { text: "examples (by learned-at)" }, autorange: "reversed", showticklabels: false } },
    { responsive: true, displaylogo: false });
  }

  L.register("learning_order", {
    draw(ctx) {
      const status = document.getElementById("order-status");
      const lo = ctx.result;
      const has = Boolean(lo && lo.learned_at);
      L.showCards(["card-learned", "card-order-heatmap"], has);
      if (!has) {
        L.setStatus(status, L.stateText(ctx.state,
          "No learning-order result yet (it needs two checkpoints and a task)."), ctx.state);
        return;
      }
      drawLearned(lo, ctx.boundaries);
      drawOrderHeatmap(ctx.runId);
      L.setStatus(status, lo.n_learned + " of " + lo.n_examples + " " + lo.split + " examples learned by step " +
        L.fmt(lo.steps[lo.steps.length - 1]) + " (threshold: loss ≤ " + L.fmt(lo.threshold) + ").", ctx.state);
    },
  });
})();

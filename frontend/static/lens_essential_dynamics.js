/* The essential_dynamics lens view: the outputs' path in PC space, with turning points and
 * phase boundaries (server/lenses/essential_dynamics.py; loaded by its partial, driven by
 * lenses.js). */
(function () {
  "use strict";

  const L = window.PhaseboardLenses;

  /** The path's position at a (fractional) step: linear in log10 step between checkpoints. */
  function positionAt(steps, comps, step) {
    const xs = steps.map((s) => Math.log10(Math.max(s, 1)));
    const x = Math.log10(Math.max(step, 1));
    if (x <= xs[0]) return comps[0];
    for (let i = 1; i < xs.length; i++) {
      if (x <= xs[i]) {
        const t = (x - xs[i - 1]) / (xs[i] - xs[i - 1] || 1);
        return comps[i].map((c, k) => comps[i - 1][k] + t * (c - comps[i - 1][k]));
      }
    }
    return comps[comps.length - 1];
  }

  function edTraces(ed, bs, j, withColorbar) {
    const steps = ed.steps;
    const comps = ed.components;
    const px = comps.map((c) => c[0]);
    const py = comps.map((c) => c[j]);
    const logStep = steps.map((s) => Math.log10(Math.max(s, 1)));
    const traces = [
      { x: px, y: py, type: "scatter", mode: "lines", line: { color: "#cbd5e1", width: 1.5 },
        hoverinfo: "skip", showlegend: false },
      { x: px, y: py, type: "scatter", mode: "markers", name: "checkpoints", showlegend: false,
        customdata: steps,
        marker: { size: 8, color: logStep, colorscale: "Viridis",
          colorbar: withColorbar ? { title: { text: "log10 step" }, thickness: 12 } : undefined,
          showscale: withColorbar },
        hovertemplate: "step %{customdata}<br>PC1 %{x:.3g}<br>PC" + (j + 1) + " %{y:.3g}<extra></extra>" },
    ];
    const turns = ed.turning_points || [];
    if (turns.length) {
      const at = turns.map((b) => positionAt(steps, comps, b.step));
      traces.push({ x: at.map((p) => p[0]), y: at.map((p) => p[j]), type: "scatter", mode: "markers",
        name: "turning points", marker: { symbol: "diamond-open", size: 14, color: L.SOURCE_COLORS.essential_dynamics, line: { width: 2 } },
        hovertemplate: turns.map((b) => "turning point (" + L.escapeHtml(b.label || "") + ")<br>step " + L.fmt(b.step) +
          "<br>score " + L.fmt(b.score) + "<extra></extra>") });
    }
    const inside = bs.filter((b) => b.step >= steps[0] && b.step <= steps[steps.length - 1]);
    if (inside.length) {
      const at = inside.map((b) => positionAt(steps, comps, b.step));
      traces.push({ x: at.map((p) => p[0]), y: at.map((p) => p[j]), type: "scatter", mode: "markers",
        name: "phase boundaries", marker: { symbol: "x-thin-open", size: 16, line: { width: 3, color: inside.map(L.sourceColor) } },
        hovertemplate: inside.map((b) => "<b>" + L.escapeHtml(b.label || b.kind) + "</b><br>step " + L.fmt(b.step) +
          "<br>source " + L.escapeHtml(b.manual ? "manual" : b.source) +
          (b.source.indexOf("+") >= 0 ? "<br>(sources agree)" : "") + "<extra></extra>") });
    }
    return traces;
  }

  function drawEd(ed, bs) {
    const ev = ed.explained_variance || [];
    const pct = (k) => (ev[k] !== undefined ? " (" + Math.round(ev[k] * 1000) / 10 + " %)" : "");
    [["ed12", 1], ["ed13", 2]].forEach(([id, j]) => {
      const el = document.getElementById("plot-" + id);
      if (!el || !window.Plotly) return;
      const layout = {
        margin: { l: 55, r: 10, t: 10, b: 75 }, hovermode: "closest",
        xaxis: { title: { text: "PC1" + pct(0) }, zeroline: false },
        yaxis: { title: { text: "PC" + (j + 1) + pct(j) }, zeroline: false },
        legend: { orientation: "h", y: -0.32 },
      };
      Plotly.react(el, edTraces(ed, bs, j, j === 1), layout, { responsive: true, displaylogo: false });
    });
  }

  L.register("essential_dynamics", {
    draw(ctx) {
      const status = document.getElementById("lenses-status");
      const ed = ctx.result;
      const has = Boolean(ed && ed.steps && ed.steps.length >= 2);
      L.showCards(["card-ed12", "card-ed13"], has);
      if (!has) {
        L.setStatus(status, L.stateText(ctx.state,
          "No essential-dynamics result yet (it needs two checkpoints and a task)."), ctx.state);
        return;
      }
      drawEd(ed, ctx.boundaries);
      const ev = (ed.explained_variance || []).slice(0, 3).map((v) => Math.round(v * 1000) / 10 + " %");
      const skipped = (ed.skipped_steps || []).length;
      L.setStatus(status, ed.steps.length + " checkpoints, " + (ed.probe_examples || "?") + " probe examples; " +
        "explained variance " + ev.join(" / ") + "; " + (ed.turning_points || []).length + " turning point(s)." +
        (skipped ? " " + skipped + " checkpoint(s) with non-finite weights left out." : ""), ctx.state);
    },
  });
})();

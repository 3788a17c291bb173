/* The step axis the influence and susceptibilities views share (loaded by both partials,
 * before their own scripts): a log step axis on which step 0 is drawn at half the first
 * positive step, and stage boundaries placed on that same axis. A boundary between step 0
 * and the first positive step (the analysis puts it at the midpoint in log(step + 1)) is
 * drawn between the two as drawn, not left of step 0. */
(function () {
  "use strict";

  if (window.PhaseboardStepAxis) return; // both partials load this file

  /** Where each step is drawn: step 0 at half the first positive step. */
  function xOf(steps) {
    const firstPos = steps.find((s) => s > 0) || 1;
    return steps.map((s) => (s > 0 ? s : firstPos / 2));
  }

  /** Where step ``s`` (a boundary, any real step) is drawn on that axis. */
  function xAt(steps, s) {
    const firstPos = steps.find((v) => v > 0) || 1;
    if (steps[0] !== 0 || s >= firstPos) return s;
    if (s <= 0) return firstPos / 2;
    // between step 0 (drawn at firstPos / 2) and firstPos, as far as log(s + 1) is
    // between log 1 and log(firstPos + 1)
    const t = Math.log(s + 1) / Math.log(firstPos + 1);
    return (firstPos / 2) * Math.pow(2, t);
  }

  /** A log step axis whose ticks are powers of ten, and "0" where step 0 is drawn. */
  function stepAxis(steps) {
    const x = xOf(steps);
    const vals = [], text = [];
    if (steps[0] === 0) { vals.push(x[0]); text.push("0"); }
    const hi = Math.max(...x), lo = Math.min(...x);
    for (let e = Math.ceil(Math.log10(Math.max(lo, 1e-9))); Math.pow(10, e) <= hi * 1.0001; e++) {
      const v = Math.pow(10, e);
      if (v > (steps[0] === 0 ? x[0] * 1.5 : 0)) { vals.push(v); text.push(v >= 1e4 ? v.toExponential(0).replace("+", "") : String(v)); }
    }
    return { type: "log", title: { text: "checkpoint step" }, tickvals: vals, ticktext: text };
  }

  /** Dashed lines at the stage boundaries inside the steps' range, coloured by source. */
  function boundaryShapes(steps, boundaries, sourceColor) {
    const lo = steps[0], hi = steps[steps.length - 1];
    return boundaries.filter((b) => b.step >= lo && b.step <= hi).map((b) => {
      const x = xAt(steps, b.step);
      return { type: "line", xref: "x", yref: "paper", x0: x, x1: x, y0: 0, y1: 1,
        line: { color: sourceColor(b), width: 1.2, dash: b.manual ? "dot" : "dash" } };
    });
  }

  /** An invisible marker at each boundary's top, so hovering names it (source and label). */
  function boundaryHover(steps, boundaries, sourceColor, escapeHtml, yTop) {
    const lo = steps[0], hi = steps[steps.length - 1];
    const bs = boundaries.filter((b) => b.step >= lo && b.step <= hi);
    if (!bs.length) return null;
    return { x: bs.map((b) => xAt(steps, b.step)), y: bs.map(() => yTop), mode: "markers", type: "scatter",
      marker: { size: 9, symbol: "triangle-down", color: bs.map(sourceColor) }, showlegend: false,
      hovertemplate: bs.map((b) => "<b>boundary</b> (" + escapeHtml(b.manual ? "manual" : b.source) + ")<br>step " +
        Math.round(b.step * 10) / 10 + (b.label ? "<br>" + escapeHtml(b.label) : "") + "<extra></extra>") };
  }

  window.PhaseboardStepAxis = { xOf, xAt, stepAxis, boundaryShapes, boundaryHover };
})();

/* The susceptibilities lens view (server/lenses/susceptibilities.py; loaded by its partial,
 * driven by lenses.js): the weight groups x data sets heatmap at the checkpoint the slider
 * picks, one cell over training, the heatmap's small multiples over training and, on token
 * tasks, the clusters of per-token susceptibility vectors. The view state (checkpoint, cell)
 * lives in the URL (sstep, scell), so a share link reproduces it. Pages never compute: the
 * numbers, clusters and projections come from the job. */
(function () {
  "use strict";

  const L = window.PhaseboardLenses;
  const P = () => window.Phaseboard;
  const CLUSTER_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
  const MAX_MULTIPLES = 12;
  let last = null; // the newest ctx, for redraws on the view's own controls
  const tokenCache = {};

  function state(key) { return P() && P().State ? P().State.get(key) : undefined; }
  function setState(changes) { if (P() && P().State) P().State.set(changes); }

  /** The slider's checkpoint index: the URL's sstep if it is one of the steps, else the last. */
  function stepIndex(sus) {
    const want = parseInt(state("sstep"), 10);
    const i = sus.steps.indexOf(want);
    return i >= 0 ? i : sus.steps.length - 1;
  }

  const A = () => window.PhaseboardStepAxis;

  /** Largest |chi| over the given checkpoints' matrices (all of them by default). */
  function maxAbs(sus, only) {
    let m = 0;
    const mats = only === undefined ? sus.matrix : [sus.matrix[only]];
    mats.forEach((g) => g.forEach((row) => row.forEach((v) => { if (v !== null) m = Math.max(m, Math.abs(v)); })));
    return m || 1;
  }

  /** Diverging colour of chi in [-m, m]: blue (serves) - white - red (competes). */
  function color(v, m) {
    if (v === null || v === undefined) return "#f3f4f6";
    const t = Math.max(-1, Math.min(1, v / m));
    const mix = (a, b, f) => Math.round(a + (b - a) * f);
    if (t < 0) return "rgb(" + mix(255, 29, -t) + "," + mix(255, 78, -t) + "," + mix(255, 216, -t) + ")";
    return "rgb(" + mix(255, 185, t) + "," + mix(255, 28, t) + "," + mix(255, 28, t) + ")";
  }

  function cell(sus) {
    const [g, p] = String(state("scell") || "").split("|");
    const gi = sus.groups.indexOf(g), pi = sus.sets.indexOf(p);
    if (gi >= 0 && pi >= 0) return [gi, pi];
    // default: the cell with the largest |chi| at the last checkpoint
    let best = [0, 0], bestV = -1;
    sus.matrix[sus.matrix.length - 1].forEach((row, i) => row.forEach((v, j) => {
      if (v !== null && Math.abs(v) > bestV) { bestV = Math.abs(v); best = [i, j]; }
    }));
    return best;
  }

  function drawHeatmap(sus, k, m) {
    const el = document.getElementById("plot-sus-heatmap");
    if (!el || !window.Plotly) return;
    const z = sus.matrix[k], se = sus.se[k];
    const text = z.map((row, i) => row.map((v, j) => {
      if (v === null) return "no estimate";
      const s = se[i][j];
      const zz = s ? " (" + (v / s).toFixed(1) + " s.e.)" : "";
      return L.fmt(v) + (s ? " ± " + L.fmt(s) : "") + zz;
    }));
    const narrow = window.innerWidth < 700;
    Plotly.react(el, [{
      z, x: sus.sets, y: sus.groups, type: "heatmap", zmin: -m, zmax: m, zmid: 0, text,
      colorscale: [[0, "#1d4ed8"], [0.5, "#ffffff"], [1, "#b91c1c"]],
      colorbar: { title: { text: "χ" }, thickness: 10 }, xgap: 1, ygap: 1,
      hovertemplate: "%{y} × %{x}<br>χ = %{text}<extra></extra>",
    }], {
      margin: { l: narrow ? 70 : 90, r: 10, t: 10, b: narrow ? 80 : 60 },
      xaxis: { type: "category", tickangle: narrow ? -40 : 0, automargin: true },
      yaxis: { type: "category", autorange: "reversed", automargin: true },
    }, { responsive: true, displaylogo: false });
    if (!el.dataset.bound) {
      el.dataset.bound = "1";
      el.on("plotly_click", (ev) => {
        const pt = ev.points && ev.points[0];
        if (!pt) return;
        setState({ scell: pt.y + "|" + pt.x });
        if (last) draw(last);
      });
    }
  }

  function drawCell(sus, k, ctx) {
    const el = document.getElementById("plot-sus-cell");
    if (!el || !window.Plotly) return;
    const [gi, pi] = cell(sus);
    document.getElementById("sus-cell-title").textContent = sus.groups[gi] + " × " + sus.sets[pi] + " over training";
    const x = A().xOf(sus.steps);
    const y = sus.matrix.map((m) => m[gi][pi]);
    const s = sus.se.map((m) => m[gi][pi]);
    const up = y.map((v, i) => (v === null || s[i] === null ? null : v + s[i]));
    const lo = y.map((v, i) => (v === null || s[i] === null ? null : v - s[i]));
    const custom = sus.steps.map((st, i) => [st, s[i] === null ? "–" : L.fmt(s[i])]);
    const shapes = A().boundaryShapes(sus.steps, ctx.boundaries, L.sourceColor);
    const top = Math.max(...up.concat(y).filter((v) => v !== null), 0);
    const marks = A().boundaryHover(sus.steps, ctx.boundaries, L.sourceColor, L.escapeHtml, top);
    shapes.push({ type: "line", xref: "paper", yref: "y", x0: 0, x1: 1, y0: 0, y1: 0, line: { color: "#9ca3af", width: 1 } });
    shapes.push({ type: "line", xref: "x", yref: "paper", x0: x[k], x1: x[k], y0: 0, y1: 1, line: { color: "#2563eb", width: 2 } });
    Plotly.react(el, [
      { x, y: up, mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false },
      { x, y: lo, mode: "lines", line: { width: 0 }, fill: "tonexty", fillcolor: "rgba(37,99,235,0.15)", hoverinfo: "skip", showlegend: false },
      { x, y, mode: "lines+markers", line: { color: "#111827", width: 1.5 }, marker: { size: 5 }, customdata: custom,
        hovertemplate: "step %{customdata[0]}<br>χ = %{y:.3g} ± %{customdata[1]}<extra></extra>", showlegend: false },
    ].concat(marks ? [marks] : []), { margin: { l: 60, r: 10, t: 10, b: 45 }, shapes,
      xaxis: A().stepAxis(sus.steps), yaxis: { title: { text: "χ" }, zeroline: false } },
    { responsive: true, displaylogo: false });
  }

  /** The small multiples share one colour scale (to compare checkpoints) unless the URL's
   * sscale is "own": then each has its own, to read the pattern of early checkpoints whose
   * |chi| is orders of magnitude below the last ones'. */
  function drawMultiples(sus, k, shared) {
    const box = document.getElementById("sus-multiples");
    if (!box) return;
    const own = state("sscale") === "own";
    const toggle = document.getElementById("sus-own-scale");
    toggle.checked = own;
    if (!toggle.dataset.bound) {
      toggle.dataset.bound = "1";
      toggle.addEventListener("change", () => { setState({ sscale: toggle.checked ? "own" : "" }); if (last) draw(last); });
    }
    document.getElementById("sus-multiples-note").textContent = (own ? "each checkpoint its own colour scale" :
      "one colour scale across checkpoints") + "; click one to show it above";
    const K = sus.steps.length;
    const pick = [];
    const n = Math.min(K, MAX_MULTIPLES);
    for (let i = 0; i < n; i++) pick.push(Math.round((i * (K - 1)) / Math.max(n - 1, 1)));
    const unique = Array.from(new Set(pick));
    const G = sus.groups.length, Pn = sus.sets.length;
    box.innerHTML = unique.map((i) => {
      const m = own ? maxAbs(sus, i) : shared;
      const cells = sus.matrix[i].map((row, gi) => row.map((v, pi) =>
        '<span style="background:' + color(v, m) + '" title="' + L.escapeHtml(sus.groups[gi] + " × " + sus.sets[pi] + ": " + L.fmt(v)) + '"></span>').join("")).join("");
      return '<button type="button" class="sus-multiple' + (i === k ? " current" : "") + '" data-index="' + i + '" aria-label="show step ' + sus.steps[i] + '">' +
        '<div class="mini-title">step ' + L.escapeHtml(String(sus.steps[i])) + "</div>" +
        '<div class="mini" style="display:grid;grid-template-columns:repeat(' + Pn + ',1fr);grid-template-rows:repeat(' + G + ',1fr);gap:1px">' + cells + "</div></button>";
    }).join("");
    box.querySelectorAll(".sus-multiple").forEach((btn) => btn.addEventListener("click", () => {
      setState({ sstep: sus.steps[parseInt(btn.dataset.index, 10)] });
      if (last) draw(last);
    }));
  }

  async function drawTokens(ctx, sus, k) {
    const card = document.getElementById("card-sus-tokens");
    if (!sus.token_level) { card.hidden = true; return; }
    card.hidden = false;
    const step = sus.steps[k];
    const key = ctx.runId + ":" + sus.result_id + ":" + step;
    let data = tokenCache[key];
    if (!data) {
      const resp = await fetch("/api/runs/" + ctx.runId + "/susceptibilities/tokens?step=" + step, { headers: { Accept: "application/json" } });
      if (!resp.ok) return;
      data = tokenCache[key] = await resp.json();
    }
    if (data.step !== sus.steps[stepIndex(sus)]) return; // the slider moved on meanwhile
    const el = document.getElementById("plot-sus-tokens");
    const items = data.items.filter((it) => it.cluster !== null && it.xy && it.xy[0] !== null);
    const info = data.clusters || {};
    document.getElementById("sus-tokens-title").textContent = "Token clusters at step " + step;
    const ev = (info.explained_variance || []).map((v) => Math.round(v * 100) + " %").join(" + ");
    document.getElementById("sus-tokens-note").textContent = items.length + " tokens, each a vector of its susceptibilities to the " +
      data.groups.length + " weight groups; k-means: " + (info.k || 0) + " clusters" +
      (info.silhouette !== null && info.silhouette !== undefined ? " (silhouette " + L.fmt(info.silhouette) + ")" : "") +
      "; axes: the first two principal components" + (ev ? " (" + ev + " of the variance)" : "") + ".";
    const byCluster = {};
    items.forEach((it) => { (byCluster[it.cluster] = byCluster[it.cluster] || []).push(it); });
    const traces = Object.keys(byCluster).sort((a, b) => a - b).map((c) => {
      const its = byCluster[c];
      return { x: its.map((it) => it.xy[0]), y: its.map((it) => it.xy[1]), mode: "markers", type: "scatter",
        name: "cluster " + c, marker: { size: 6, color: CLUSTER_COLORS[c % CLUSTER_COLORS.length], opacity: 0.8 },
        text: its.map((it) => L.escapeHtml(it.text) + "<br>" + L.escapeHtml(it.set) + ", example " + it.example + ", position " + it.position),
        hovertemplate: "%{text}<extra>cluster " + c + "</extra>" };
    });
    Plotly.react(el, traces, { margin: { l: 45, r: 10, t: 30, b: 40 }, legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
      xaxis: { title: { text: "PC1" }, zeroline: false }, yaxis: { title: { text: "PC2" }, zeroline: false } },
    { responsive: true, displaylogo: false });
  }

  function bindSlider(sus) {
    const slider = document.getElementById("sus-step");
    slider.max = String(sus.steps.length - 1);
    if (!slider.dataset.bound) {
      slider.dataset.bound = "1";
      slider.addEventListener("input", () => {
        const s = last && last.result;
        if (!s) return;
        setState({ sstep: s.steps[parseInt(slider.value, 10)] });
        draw(last);
      });
    }
  }

  function draw(ctx) {
    last = ctx;
    const sus = ctx.result;
    const status = document.getElementById("sus-status");
    const has = Boolean(sus && sus.steps && sus.steps.length);
    document.getElementById("sus-controls").hidden = !has;
    L.showCards(["card-sus-heatmap", "card-sus-cell", "card-sus-multiples"], has);
    if (!has) {
      document.getElementById("card-sus-tokens").hidden = true;
      L.setStatus(status, L.stateText(ctx.state, "No susceptibilities yet: ask for the lens (POST /api/runs/{id}/analyses {\"lenses\": [\"susceptibilities\"]})."), ctx.state);
      return;
    }
    bindSlider(sus);
    const k = stepIndex(sus);
    const slider = document.getElementById("sus-step");
    slider.value = String(k);
    slider.setAttribute("aria-valuetext", "step " + sus.steps[k]);
    document.getElementById("sus-step-label").textContent = "step " + sus.steps[k] + " (" + (k + 1) + " of " + sus.steps.length + ")";
    document.getElementById("sus-heatmap-title").textContent = "Weight groups × data sets at step " + sus.steps[k];
    // The heatmap has this checkpoint's own colour scale (|chi| grows by orders of magnitude
    // over training); the small multiples share one scale, to compare checkpoints.
    drawHeatmap(sus, k, maxAbs(sus, k));
    drawCell(sus, k, ctx);
    drawMultiples(sus, k, maxAbs(sus));
    drawTokens(ctx, sus, k);
    const verdict = (sus.verdict || [])[k];
    const flips = (sus.turning_points || []).length;
    L.setStatus(status, sus.groups.length + " weight groups × " + sus.sets.length + " data sets at " + sus.steps.length + " checkpoints" +
      (sus.token_level ? ", per token" : "") + ". The full model's LLC at this step: " + L.fmt((sus.llc[k] || [])[0]) +
      " (sampler verdict: " + (verdict || "–") + "). " + (flips ? flips + " sign-change boundar" + (flips === 1 ? "y" : "ies") + " (source: susceptibilities)." : "No sign changes beyond two standard errors."),
    ctx.state);
  }

  L.register("susceptibilities", { draw });
})();

/* Lenses on a run beside loss and LLC: essential dynamics (the outputs' path in PC space).
 *
 * Reads /api/runs/{id}/lenses (the newest result of each lens plus the run's boundaries) and
 * draws with plotly.js. Pages never compute: PCA, turning points and boundaries come from
 * the jobs. Re-reads every 15 s while the tab is visible, redrawing only on change.
 */
(function () {
  "use strict";

  const $ = (sel, root) => (root || document).querySelector(sel);
  const SOURCE_COLORS = { llc: "#d62728", loss: "#1f77b4", essential_dynamics: "#2ca02c",
    progress: "#ff7f0e", manual: "#7c3aed" };

  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
    return String(Math.round(v * 1000) / 1000);
  }

  function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }

  /** Colour of a boundary: its source family; several agreeing sources are black. */
  function sourceColor(b) {
    if (b.manual) return SOURCE_COLORS.manual;
    if (b.source.indexOf("+") >= 0) return "#111827";
    return SOURCE_COLORS[b.source.split(":")[0]] || "#6b7280";
  }

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
        name: "turning points", marker: { symbol: "diamond-open", size: 14, color: SOURCE_COLORS.essential_dynamics, line: { width: 2 } },
        hovertemplate: turns.map((b) => "turning point (" + escapeHtml(b.label || "") + ")<br>step " + fmt(b.step) +
          "<br>score " + fmt(b.score) + "<extra></extra>") });
    }
    const inside = bs.filter((b) => b.step >= steps[0] && b.step <= steps[steps.length - 1]);
    if (inside.length) {
      const at = inside.map((b) => positionAt(steps, comps, b.step));
      traces.push({ x: at.map((p) => p[0]), y: at.map((p) => p[j]), type: "scatter", mode: "markers",
        name: "phase boundaries", marker: { symbol: "x-thin-open", size: 16, line: { width: 3, color: inside.map(sourceColor) } },
        hovertemplate: inside.map((b) => "<b>" + escapeHtml(b.label || b.kind) + "</b><br>step " + fmt(b.step) +
          "<br>source " + escapeHtml(b.manual ? "manual" : b.source) +
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

  /** Small multiples, one per measure (per-head measures "a/b" share the panel of "a"). */
  function drawProgress(progress, bs) {
    const el = document.getElementById("plot-progress");
    const status = document.getElementById("progress-status");
    if (!el || !window.Plotly) return;
    const groups = {};
    Object.keys(progress).forEach((name) => {
      const g = name.split("/")[0];
      (groups[g] = groups[g] || []).push(name);
    });
    const names = Object.keys(groups).sort();
    showCards(["card-progress"], names.length > 0);
    if (!names.length) {
      status.textContent = "No progress measures yet (the task defines none, or no metrics job has run).";
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
          hovertemplate: escapeHtml(label) + "<br>step %{x}<br>%{y:.4g}<extra></extra>" });
      });
      layout["xaxis" + ax] = { type: "log", title: i >= names.length - cols ? { text: "step" } : undefined };
      layout["yaxis" + ax] = {};
      annotations.push({ text: "<b>" + escapeHtml(g) + "</b>" + (groups[g].length > 1 ? " (" + (groups[g].length - (progress[g] ? 1 : 0)) + " heads)" : ""),
        xref: "x" + ax + " domain", yref: "y" + ax + " domain", x: 0, y: 1.18, showarrow: false, xanchor: "left", font: { size: 12 } });
      bs.forEach((b) => {
        shapes.push({ type: "line", xref: "x" + ax, yref: "y" + ax + " domain", x0: b.step, x1: b.step, y0: 0, y1: 1,
          line: { color: sourceColor(b), width: 1.5, dash: b.manual ? "dot" : "dash" } });
      });
    });
    layout.annotations = annotations;
    layout.shapes = shapes;
    layout.height = rows * 190 + 50;
    el.style.height = layout.height + "px";
    Plotly.react(el, traces, layout, { responsive: true, displaylogo: false });
    status.textContent = Object.keys(progress).length + " series in " + names.length + " panel(s): " + names.join(", ") + ".";
  }

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
      line: { color: sourceColor(b), width: 1.5, dash: b.manual ? "dot" : "dash" } }));
    if (bs.length) {
      traces.push({ x: bs.map((b) => b.step), y: bs.map(() => Math.max(...counts, 1)), type: "scatter", mode: "markers",
        name: "phase boundaries", marker: { symbol: "triangle-down", size: 10, color: bs.map(sourceColor) },
        hovertemplate: bs.map((b) => "<b>" + escapeHtml(b.label || b.kind) + "</b><br>step " + fmt(b.step) +
          "<br>source " + escapeHtml(b.manual ? "manual" : b.source) + "<extra></extra>") });
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
      customdata: h.examples.map((e, i) => h.steps.map(() => [e, h.learned_at[i] === null ? "never" : fmt(h.learned_at[i])])),
      colorbar: { title: { text: "loss" }, thickness: 12 },
      hovertemplate: "example %{customdata[0]} (learned at %{customdata[1]})<br>step %{x}<br>loss %{z:.3g}<extra></extra>" }],
    { margin: { l: 55, r: 10, t: 10, b: 45 }, xaxis: { type: "category", title: { text: "checkpoint step" }, nticks: 8 },
      yaxis: { title: { text: "examples (by learned-at)" }, autorange: "reversed", showticklabels: false } },
    { responsive: true, displaylogo: false });
  }

  function drawLearningOrder(runId, lo, bs) {
    const status = document.getElementById("order-status");
    showCards(["card-learned", "card-order-heatmap"], Boolean(lo && lo.learned_at));
    if (!lo || !lo.learned_at) {
      if (status) status.textContent = "No learning-order result yet (it needs two checkpoints and a task).";
      return;
    }
    drawLearned(lo, bs);
    drawOrderHeatmap(runId);
    if (status) {
      status.textContent = lo.n_learned + " of " + lo.n_examples + " " + lo.split + " examples learned by step " +
        fmt(lo.steps[lo.steps.length - 1]) + " (threshold: loss ≤ " + fmt(lo.threshold) + ").";
    }
  }

  const BOUNDARY_SOURCES = [["", "all sources"], ["agreed", "sources agree"], ["llc", "LLC critical points"],
    ["loss", "loss change points"], ["essential_dynamics", "essential-dynamics turns"], ["progress", "progress-measure jumps"]];

  /** Boundaries the view shows (app.js's ``bsrc`` filter; all without app.js). */
  function shown(bs) {
    const P = window.Phaseboard;
    return P && P.shownBoundary ? bs.filter(P.shownBoundary) : bs;
  }

  /** A "Boundaries" select among the plot controls; its value lives in the URL (bsrc). */
  function addSourceFilter(onChange) {
    const controls = document.getElementById("plot-controls");
    const P = window.Phaseboard;
    if (!controls || !P || document.getElementById("c-bsrc")) return;
    const field = document.createElement("div");
    field.className = "field";
    field.innerHTML = '<label for="c-bsrc">Boundaries</label><select id="c-bsrc" name="bsrc">' +
      BOUNDARY_SOURCES.map(([v, t]) => '<option value="' + v + '">' + t + "</option>").join("") + "</select>";
    const actions = controls.querySelector(".actions");
    controls.insertBefore(field, actions);
    const select = field.querySelector("select");
    select.value = P.State.get("bsrc") || "";
    select.addEventListener("change", () => {
      P.State.set({ bsrc: select.value });
      if (P.Plots.ready) { P.Plots.renderAll(); }
      onChange();
    });
  }

  async function load(section, last) {
    const runId = section.dataset.run;
    const status = $("#lenses-status", section);
    let data;
    try {
      const resp = await fetch("/api/runs/" + runId + "/lenses", { headers: { Accept: "application/json" } });
      if (!resp.ok) throw new Error(resp.status + " " + resp.statusText);
      data = await resp.json();
    } catch (e) {
      status.textContent = "Could not load the lenses: " + e.message;
      return last;
    }
    const key = JSON.stringify([data.essential_dynamics && data.essential_dynamics.result_id,
      data.learning_order && data.learning_order.result_id, data.boundaries, data.progress]);
    if (key === last) return last;
    section.lensData = data;
    drawLenses(runId, data);
    return key;
  }

  /** Empty plot frames say nothing: a lens without a result shows only its status line. */
  function showCards(ids, visible) {
    ids.forEach((id) => {
      const card = document.getElementById(id);
      if (card) card.hidden = !visible;
    });
  }

  function drawLenses(runId, data) {
    const section = document.getElementById("lenses");
    const status = $("#lenses-status", section);
    const bs = shown(data.boundaries || []);
    drawProgress(data.progress || {}, bs);
    drawLearningOrder(runId, data.learning_order, bs);
    const ed = data.essential_dynamics;
    showCards(["card-ed12", "card-ed13"], Boolean(ed && ed.steps && ed.steps.length >= 2));
    if (!ed || !ed.steps || ed.steps.length < 2) {
      status.textContent = "No essential-dynamics result yet (it needs two checkpoints and a task).";
      section.dataset.loaded = "true";
      return;
    }
    drawEd(ed, bs);
    const ev = (ed.explained_variance || []).slice(0, 3).map((v) => Math.round(v * 1000) / 10 + " %");
    status.textContent = ed.steps.length + " checkpoints, " + (ed.probe_examples || "?") + " probe examples; " +
      "explained variance " + ev.join(" / ") + "; " + (ed.turning_points || []).length + " turning point(s).";
    section.dataset.loaded = "true";
  }

  async function loadAgreement(section) {
    const body = $("#lo-table tbody", section);
    let data;
    try {
      const resp = await fetch("/api/learning_order/agreement?runs=" + section.dataset.runs, { headers: { Accept: "application/json" } });
      if (!resp.ok) throw new Error(resp.status + " " + resp.statusText);
      data = await resp.json();
    } catch (e) {
      body.innerHTML = '<tr><td colspan="4" class="muted">Could not load: ' + escapeHtml(e.message) + "</td></tr>";
      return;
    }
    const name = {};
    data.runs.forEach((r) => { name[r.id] = r.name; });
    const rows = data.pairs.map((p) => "<tr><td>" + escapeHtml(name[p.a]) + "</td><td>" + escapeHtml(name[p.b]) + "</td><td>" +
      (p.rho === null ? "–" : p.rho.toFixed(3)) + "</td><td>" + p.n + " of " + p.of + "</td></tr>");
    data.skipped.forEach((p) => rows.push("<tr class=\"muted\"><td>" + escapeHtml(name[p.a]) + "</td><td>" + escapeHtml(name[p.b]) +
      '</td><td colspan="2">' + escapeHtml(p.reason) + "</td></tr>"));
    body.innerHTML = rows.join("") || '<tr><td colspan="4" class="muted">No pairs.</td></tr>';
    section.dataset.loaded = "true";
  }

  function start() {
    const agreement = document.getElementById("lo-compare");
    if (agreement) loadAgreement(agreement);
    const section = document.getElementById("lenses");
    if (!section) return;
    const redraw = () => { if (section.lensData) drawLenses(section.dataset.run, section.lensData); };
    addSourceFilter(redraw);
    let narrow = window.innerWidth < 700; // the progress panels go to one column on a phone
    let timer = null;
    window.addEventListener("resize", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { if ((window.innerWidth < 700) !== narrow) { narrow = !narrow; redraw(); } }, 200);
    });
    let last = null;
    const tick = async () => { last = await load(section, last); };
    tick();
    setInterval(() => { if (!document.hidden) tick(); }, 15000);
  }

  // Deferred scripts run before DOMContentLoaded, and this one before app.js (the page's head
  // block comes first): start after app.js's own DOMContentLoaded work, so window.Phaseboard
  // exists and its view state (the URL or the share's query) is loaded.
  if (document.readyState === "complete") start();
  else document.addEventListener("DOMContentLoaded", () => setTimeout(start, 0));
})();

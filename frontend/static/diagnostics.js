/* LLC diagnostics in the browser: the panel of one
 * estimate (per-chain loss traces, L(w*), per-chain LLC, SGLD settings and n_beta, the
 * verdict and what to try, distance / gradient-norm diagnostics), the LLC settings picker,
 * and the calibration heatmap with "use for this run".
 *
 * Nothing here computes a verdict: it reads what the jobs stored. app.js calls the hooks
 * on window.PhaseboardDiag (plotQuery, loaded, bindPlot); app.js draws the points by
 * verdict (ok on the line, others hollow off it, none as an "x"); view state
 * (llc_result = the open panel, llcs = the settings series) lives in the URL like the rest.
 */
(function () {
  "use strict";

  const WARN = "#d97706";
  const BAD = "#b91c1c";
  const CHAIN_COLORS = ["#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#8c564b", "#e377c2",
    "#bcbd22", "#7f7f7f", "#ff7f0e", "#393b79"];
  const SHORT = {
    "ok": "ok", "diverged chains": "diverged", "too few draws": "few draws",
    "impossible": "> d/2", "left the basin": "left basin", "negative": "negative",
    "not converged": "drifting",
  };
  const PLOT_CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"] };

  const $ = (sel, root) => (root || document).querySelector(sel);
  const PB = () => window.Phaseboard;

  function fmt(v, digits) {
    if (v === null || v === undefined || !Number.isFinite(Number(v))) return "–";
    return String(Number(Number(v).toPrecision(digits || 4)));
  }
  function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }
  function el(tag, attrs, html) {
    const e = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => e.setAttribute(k, v));
    if (html !== undefined) e.innerHTML = html;
    return e;
  }
  function baseLayout(yTitle) {
    return {
      margin: { l: 52, r: 12, t: 8, b: 36 }, hovermode: "closest",
      legend: { orientation: "h", x: 0, y: -0.2, yanchor: "top", font: { size: 10 } },
      xaxis: { zeroline: false, title: { text: "draw", font: { size: 11 } } },
      yaxis: { zeroline: false, title: { text: yTitle, font: { size: 11 } } },
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#fff",
      font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 11 },
    };
  }

  // ------------------------------------------------------------------ hooks for app.js

  /** Extra query for /plotdata: which LLC settings' series to show. */
  function plotQuery() {
    const v = PB() && PB().State.get("llcs");
    return v ? "&llc_settings=" + encodeURIComponent(v) : "";
  }

  function bindPlot(plotEl, id) {
    if (id !== "llc" && id !== "restricted") return;
    plotEl.on("plotly_click", (ev) => {
      const p = (ev.points || []).find((q) => Array.isArray(q.customdata) && q.customdata[3]);
      if (p) openPanel(p.customdata[3], true);
    });
  }

  /** After each plot-data load: the settings picker and a panel named in the URL. */
  function loaded(plots) {
    if (plots.mode !== "run" || !plots.data.length) return;
    renderSettingsPicker(plots);
    const wanted = PB().State.get("llc_result");
    const panel = $("#llc-diag");
    if (wanted && (!panel || panel.dataset.result !== wanted)) openPanel(wanted, false);
  }

  // ------------------------------------------------------------------ settings series

  function renderSettingsPicker(plots) {
    const d = plots.data[0];
    const settings = d.llc_settings || [];
    let field = $("#c-llcs-field");
    if (!field) {
      field = el("div", { class: "field", id: "c-llcs-field" });
      field.append(el("label", { for: "c-llcs" }, "LLC settings"), el("select", { id: "c-llcs", name: "llcs" }));
      const actions = $("#plot-controls .actions");
      actions.parentNode.insertBefore(field, actions);
      $("#c-llcs").addEventListener("change", (e) => {
        const chosen = settings.find((x) => x.hash === e.target.value);
        PB().State.set({ llcs: chosen && chosen.current ? null : e.target.value.slice(0, 12) });
        PB().Plots.reload();
      });
    }
    const select = $("#c-llcs");
    select.innerHTML = "";
    settings.forEach((x) => {
      const o = el("option", { value: x.hash }, esc((x.current ? "current: " : "") + x.label + " · " + x.count + " results"));
      select.append(o);
    });
    select.value = d.llc_settings_shown;
    const shown = settings.find((x) => x.hash === d.llc_settings_shown);
    let note = $("#llc-series-note");
    if (!note) {
      note = el("p", { id: "llc-series-note", class: "series-note" });
      $("#card-llc figcaption").after(note);
    }
    const nb = (d.llc.n_beta || []).find((x) => x !== null && x !== undefined);
    note.textContent = shown ? "Series: " + (shown.current ? "the run's current settings, " : "older settings, ") +
      shown.label + (nb !== undefined ? " (n_beta = " + fmt(nb) + ")" : "") : "";
  }

  // ------------------------------------------------------------------ one estimate

  async function openPanel(resultId, push) {
    resultId = String(resultId);
    if (push) PB().State.set({ llc_result: resultId });
    let panel = $("#llc-diag");
    if (!panel) {
      panel = el("section", { id: "llc-diag", class: "diag-panel", "aria-labelledby": "diag-title", tabindex: "-1" });
      const anchor = $("#plots") || $("main");
      anchor.after(panel);
    }
    panel.hidden = false;
    panel.dataset.result = resultId;
    panel.innerHTML = '<p class="muted">Loading estimate ' + esc(resultId) + "…</p>";
    let r;
    try {
      r = await PB().api("GET", "/api/results/" + encodeURIComponent(resultId));
    } catch (err) {
      panel.innerHTML = "";
      panel.append(closeButton(), el("p", { class: "error" }, "Could not load estimate " + esc(resultId) + ": " + esc(err.message)));
      return;
    }
    renderPanel(panel, r);
    if (push) panel.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  function closeButton() {
    const b = el("button", { type: "button", class: "btn small diag-close", "aria-label": "Close the estimate panel" }, "Close");
    b.addEventListener("click", () => {
      const panel = $("#llc-diag");
      if (panel) { panel.hidden = true; panel.dataset.result = ""; }
      PB().State.set({ llc_result: null });
    });
    return b;
  }

  function renderPanel(panel, r) {
    const v = r.values || {};
    const traces = v.loss_trace || [];
    const diverged = new Set(v.diverged || []);
    const verdict = v.verdict || "ok";
    const cfg = Object.assign({}, v.config || {}, v.settings || {});
    const where = r.restriction ? " · " + r.restriction : "";
    const bound = v.num_params_free ? v.num_params_free / 2 : null;
    panel.innerHTML = "";
    const head = el("div", { class: "diag-head" });
    head.append(el("h2", { id: "diag-title" }, "LLC estimate · step " + esc(r.step) + esc(where)), closeButton());
    panel.append(head);
    panel.append(el("p", { class: "verdict-line" },
      '<span class="verdict v-' + esc(verdict.replace(/ /g, "-")) + '">' + esc(verdict) + "</span> " + esc(v.verdict_detail || "")));
    if (v.verdict_advice) panel.append(el("p", { class: "advice" }, "<strong>What to try:</strong> " + esc(v.verdict_advice)));
    const summary = el("dl", { class: "diag-summary" });
    [["LLC", fmt(v.mean) + " ± " + fmt(v.std, 3)], ["n_beta", fmt(v.n_beta)], ["L(w*)", fmt(v.init_loss, 5)],
      ["d/2 bound", fmt(bound)], ["chains used", String(traces.length - diverged.size) + " of " + traces.length],
      ["chance loss", fmt(v.chance_loss)]]
      .forEach(([k, val]) => { summary.append(el("dt", {}, esc(k)), el("dd", {}, esc(val))); });
    panel.append(summary);

    const grid = el("div", { class: "diag-grid" });
    const tr = el("figure", { class: "diag-plot" }, '<figcaption>Loss per draw, one line per chain</figcaption><div class="plot" id="diag-traces"></div>');
    const dist = el("figure", { class: "diag-plot" }, '<figcaption>Distance from w*</figcaption><div class="plot small" id="diag-distance"></div>');
    const grad = el("figure", { class: "diag-plot" }, '<figcaption>Gradient norm</figcaption><div class="plot small" id="diag-grad"></div>');
    grid.append(tr, dist, grad);
    panel.append(grid);

    const tables = el("div", { class: "diag-tables" });
    const chainRows = traces.map((_, c) => "<tr" + (diverged.has(c) ? ' class="diverged"' : "") + '><td class="num">' + c +
      '</td><td class="num">' + fmt((v.per_chain || [])[c]) + '</td><td class="num">' + fmt((v.init_loss_per_chain || [])[c], 5) +
      "</td><td>" + (diverged.has(c) ? "diverged (excluded)" : "used") + "</td></tr>").join("");
    tables.append(el("table", { class: "table diag-chains" },
      '<caption>Per chain</caption><thead><tr><th scope="col" class="num">chain</th><th scope="col" class="num">LLC</th>' +
      '<th scope="col" class="num">L(w*) on its batches</th><th scope="col">status</th></tr></thead><tbody>' + chainRows + "</tbody>"));
    const keys = ["sampler", "lr", "localization", "n_beta", "num_chains", "num_draws", "num_burnin_steps",
      "num_steps_bw_draws", "batch_size", "seed"];
    const setRows = keys.map((k) => {
      let val = cfg[k];
      if (k === "sampler" && !val) val = "sgld";
      if (k === "n_beta") val = (val === null || val === undefined ? "n / log n = " : "") + fmt(v.n_beta);
      return '<tr><th scope="row">' + esc(k) + "</th><td>" + esc(val === undefined || val === null ? "–" : val) + "</td></tr>";
    }).join("");
    tables.append(el("table", { class: "table diag-settings" }, "<caption>SGLD settings</caption><tbody>" + setRows + "</tbody>"));
    panel.append(tables);
    drawTraces(v, diverged);
    drawDiagnostics(v, diverged);
  }

  function drawTraces(v, diverged) {
    const target = document.getElementById("diag-traces");
    const traces = v.loss_trace || [];
    const data = traces.map((row, c) => ({
      x: row.map((_, i) => i), y: row, type: "scatter", mode: "lines",
      name: "chain " + c + (diverged.has(c) ? " (diverged)" : ""),
      line: diverged.has(c) ? { color: BAD, width: 1.5, dash: "dot" } : { color: CHAIN_COLORS[c % CHAIN_COLORS.length], width: 1.2 },
      hovertemplate: "chain " + c + " draw %{x}: %{y:.4g}<extra></extra>",
    }));
    const layout = baseLayout("minibatch loss");
    const D = traces.length ? traces[0].length : 1;
    layout.shapes = [];
    if (v.init_loss !== null && v.init_loss !== undefined) {
      layout.shapes.push({ type: "line", xref: "x", yref: "y", x0: 0, x1: D - 1, y0: v.init_loss, y1: v.init_loss,
        line: { color: "#111827", width: 2, dash: "dash" }, name: "init-loss" });
      data.push({ x: [null], y: [null], type: "scatter", mode: "lines", name: "L(w*)", line: { color: "#111827", dash: "dash", width: 2 } });
    }
    // Keep the kept chains readable: a diverged chain is drawn, but may run off the scale.
    const kept = traces.filter((_, c) => !diverged.has(c)).flat().filter((y) => y !== null && Number.isFinite(y));
    if (kept.length && diverged.size) {
      const lo = Math.min(v.init_loss, ...kept), hi = Math.max(...kept);
      const pad = 0.1 * (hi - lo || 1);
      layout.yaxis.range = [lo - pad, hi + pad];
    }
    Plotly.react(target, data, layout, PLOT_CONFIG);
  }

  function drawDiagnostics(v, diverged) {
    const diag = v.diagnostics || {};
    [["diag-distance", "distance", "|w − w*|"], ["diag-grad", "grad_norm", "|∇L_m(w)|"]].forEach(([id, key, title]) => {
      const target = document.getElementById(id);
      const rows = diag[key] || [];
      if (!rows.length) { target.innerHTML = '<p class="muted">Not recorded for this estimate.</p>'; return; }
      const data = rows.map((row, c) => ({
        x: diag.draw, y: row, type: "scatter", mode: "lines", name: "chain " + c, showlegend: false,
        line: diverged.has(c) ? { color: BAD, dash: "dot", width: 1.2 } : { color: CHAIN_COLORS[c % CHAIN_COLORS.length], width: 1.2 },
      }));
      Plotly.react(target, data, baseLayout(title), PLOT_CONFIG);
    });
  }

  // ------------------------------------------------------------------ calibration

  const Cal = {
    data: null,
    selected: null,
    nbeta: null,

    init(root) {
      this.root = root;
      this.runId = root.dataset.run;
      const run = $("#cal-run");
      if (run) run.addEventListener("click", () => this.start());
      const use = $("#cal-use");
      if (use) use.addEventListener("click", () => this.use());
      this.load();
    },

    async load() {
      let out;
      try {
        out = await PB().api("GET", "/api/runs/" + this.runId + "/calibration");
      } catch (err) {
        $("#cal-status").textContent = "Could not load the calibration: " + err.message;
        return;
      }
      this.data = out.calibration;
      this.current = out.current;
      const busy = out.active_jobs.length > 0;
      this.root.dataset.state = busy ? "running" : (this.data ? "done" : "none");
      if (busy) {
        $("#cal-status").textContent = "Calibration running…";
        clearTimeout(this.timer);
        this.timer = setTimeout(() => this.load(), 2000);
      }
      // Without a calibration the heatmap frames and "use" button would stand empty.
      const grid = $("#calibration .cal-grid"), use = $("#cal-use");
      if (grid) grid.hidden = !this.data;
      if (use) use.hidden = !this.data;
      if (!this.data) {
        if (!busy) $("#cal-status").textContent = "No calibration yet. It runs a grid of SGLD step sizes (lr) × localizations on a few checkpoints and recommends the weakest localization whose estimate is ok on all of them, there the lr whose estimate moves least when lr halves.";
        return;
      }
      this.render();
    },

    async start() {
      try {
        const out = await PB().api("POST", "/api/runs/" + this.runId + "/analyses", { kinds: ["calibrate"] });
        PB().toast("Calibration queued (job " + out.job_ids.join(", ") + ")");
        PB().refreshPartial("jobs");
        this.load();
      } catch (err) {
        PB().toast("Calibration not queued: " + err.message);
      }
    },

    entries() {
      const all = this.data.entries;
      const nbetas = Array.from(new Set(all.map((e) => e.n_beta)));
      if (this.nbeta === null || !nbetas.includes(this.nbeta)) this.nbeta = nbetas[0];
      return all.filter((e) => e.n_beta === this.nbeta);
    },

    render() {
      const cal = this.data;
      const steps = cal.checkpoints.map((c) => c.step + (c.left_out ? " (left out: not a minimum)" : "")).join(", ");
      $("#cal-status").innerHTML = "Calibrated on steps " + esc(steps) + ". " + esc(cal.reason) +
        " <small>Cells show the LLC at step " + esc(cal.checkpoints[cal.checkpoints.length - 1].step) +
        "; a verdict other than ok at any calibrated step that was not left out marks the cell.</small>";
      const entries = this.entries();
      const lrs = Array.from(new Set(entries.map((e) => e.lr))).sort((a, b) => a - b);
      const gammas = Array.from(new Set(entries.map((e) => e.localization))).sort((a, b) => a - b);
      const at = (lr, g) => entries.find((e) => e.lr === lr && e.localization === g);
      const okVals = entries.filter((e) => e.ok && e.mean !== null).map((e) => e.mean);
      const z = lrs.map((lr) => gammas.map((g) => { const e = at(lr, g); return e && e.mean !== null ? e.mean : null; }));
      const text = lrs.map((lr) => gammas.map((g) => {
        const e = at(lr, g);
        if (!e) return "";
        return (e.mean === null ? "–" : fmt(e.mean, 3)) + "<br>" + (e.ok ? "✓ ok" : "⚠ " + (SHORT[e.verdict] || e.verdict));
      }));
      const custom = lrs.map((lr) => gammas.map((g) => { const e = at(lr, g); return e ? [e.lr, e.localization, e.verdict] : null; }));
      const xs = gammas.map((g) => "γ " + fmt(g)), ys = lrs.map((lr) => "lr " + fmt(lr));
      const heat = {
        type: "heatmap", x: xs, y: ys, z, text, texttemplate: "%{text}", textfont: { size: 11 },
        customdata: custom, colorscale: "Blues", reversescale: true, showscale: true, colorbar: { title: { text: "LLC", side: "right" }, thickness: 10 },
        zmin: 0, zmax: okVals.length ? Math.max(...okVals) : undefined, xgap: 2, ygap: 2,
        hovertemplate: "lr %{customdata[0]}, localization %{customdata[1]}<br>LLC %{z:.4g}<br>%{customdata[2]}<extra></extra>",
      };
      // Non-ok cells get an outline so stability reads without colour.
      const bad = [];
      lrs.forEach((lr, i) => gammas.forEach((g, j) => { const e = at(lr, g); if (e && !e.ok) bad.push([j, i]); }));
      const shapes = bad.map(([j, i]) => ({ type: "rect", xref: "x", yref: "y", x0: j - 0.5, x1: j + 0.5, y0: i - 0.5, y1: i + 0.5,
        line: { color: WARN, width: 2, dash: "dot" }, fillcolor: "rgba(217,119,6,0.08)" }));
      const rec = cal.recommended;
      if (rec && rec.n_beta === this.nbeta) {
        const j = gammas.indexOf(rec.localization), i = lrs.indexOf(rec.lr);
        shapes.push({ type: "rect", xref: "x", yref: "y", x0: j - 0.5, x1: j + 0.5, y0: i - 0.5, y1: i + 0.5, line: { color: "#15803d", width: 3 } });
      }
      const layout = {
        margin: { l: 70, r: 10, t: 10, b: 40 }, shapes, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#fff",
        xaxis: { type: "category", title: { text: "localization γ", font: { size: 11 } } },
        yaxis: { type: "category", title: { text: "step size lr", font: { size: 11 } } },
        font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 11 },
      };
      const target = document.getElementById("cal-heatmap");
      Plotly.react(target, [heat], layout, PLOT_CONFIG);
      if (!target.dataset.bound) {
        target.dataset.bound = "1";
        target.on("plotly_hover", (ev) => { const e = this.fromPoint(ev); if (e) this.showTraces(e); });
        target.on("plotly_click", (ev) => { const e = this.fromPoint(ev); if (e) this.select(e); });
      }
      const initial = this.selected && entries.find((e) => e.lr === this.selected.lr && e.localization === this.selected.localization)
        || (rec && entries.find((e) => e.lr === rec.lr && e.localization === rec.localization)) || entries[0];
      this.select(initial);
    },

    fromPoint(ev) {
      const p = ev.points && ev.points[0];
      if (!p || !p.customdata) return null;
      return this.entries().find((e) => e.lr === p.customdata[0] && e.localization === p.customdata[1]);
    },

    showTraces(e) {
      const cps = this.data.checkpoints;
      const data = [];
      e.per_checkpoint.forEach((pc, k) => {
        const color = CHAIN_COLORS[k % CHAIN_COLORS.length];
        data.push({ x: pc.mean_trace.map((_, i) => i), y: pc.mean_trace, type: "scatter", mode: "lines",
          name: "step " + cps[k].step + " · " + pc.verdict, line: { color, width: 1.5 } });
        data.push({ x: [0, Math.max(pc.mean_trace.length - 1, 1)], y: [pc.init_loss, pc.init_loss], type: "scatter", mode: "lines",
          name: "L(w*) step " + cps[k].step, line: { color, width: 1, dash: "dash" }, showlegend: false, hoverinfo: "skip" });
      });
      const layout = baseLayout("mean loss over chains");
      Plotly.react(document.getElementById("cal-traces"), data, layout, PLOT_CONFIG);
      $("#cal-traces-title").textContent = "Mean trace per checkpoint · lr " + fmt(e.lr) + ", γ " + fmt(e.localization) + " (dashed: L(w*))";
    },

    select(e) {
      if (!e) return;
      this.selected = e;
      this.showTraces(e);
      const verdicts = e.per_checkpoint.map((pc, k) => "step " + this.data.checkpoints[k].step + ": " + pc.verdict).join(" · ");
      $("#cal-picked").innerHTML = "<strong>Selected:</strong> lr " + esc(fmt(e.lr)) + ", localization " + esc(fmt(e.localization)) +
        ", n_beta " + esc(fmt(e.n_beta)) + " — " + esc(verdicts) + (e.ok ? "" : ' <span class="verdict v-warn">not ok everywhere</span>');
      const use = $("#cal-use");
      if (use) use.disabled = false;
      this.root.dataset.selected = e.lr + "," + e.localization;
    },

    async use() {
      const e = this.selected;
      if (!e) return;
      const body = { lr: e.lr, localization: e.localization };
      const nbetas = new Set(this.data.entries.map((x) => x.n_beta));
      if (nbetas.size > 1 || (this.data.config && this.data.config.n_beta !== null && this.data.config.n_beta !== undefined)) body.n_beta = e.n_beta;
      try {
        const out = await PB().api("POST", "/api/runs/" + this.runId + "/llc-settings", body);
        PB().toast("LLC settings of this run: lr " + fmt(e.lr) + ", localization " + fmt(e.localization) + "; " + out.job_ids.length + " LLC jobs queued (old results kept)");
        this.root.dataset.applied = out.settings_hash;
        PB().State.set({ llcs: null });
        PB().refreshPartial("jobs");
        PB().Plots.reload();
      } catch (err) {
        PB().toast("Could not change the settings: " + err.message);
      }
    },
  };

  // ------------------------------------------------------------------ wiring

  document.addEventListener("click", (ev) => {
    const t = ev.target.closest ? ev.target.closest("[data-llc-result]") : null;
    if (t) { ev.preventDefault(); openPanel(t.dataset.llcResult, true); }
  });

  document.addEventListener("DOMContentLoaded", () => {
    const root = $("#calibration");
    if (root && window.Plotly && PB()) Cal.init(root);
  });

  window.PhaseboardDiag = { plotQuery, bindPlot, loaded, openPanel, Cal };
})();

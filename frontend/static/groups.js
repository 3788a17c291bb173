/* Several runs on one picture (compare page): group bands of loss, LLC and progress measures,
 * the runs' paths in one PC space, and the function-space distance between runs.
 *
 * Reads /api/groups/bands and /api/groups/paths (computed from the runs' stored results) and
 * draws with plotly.js. View state (gview, gband, gseries) lives in the URL via app.js.
 */
(function () {
  "use strict";

  const $ = (sel, root) => (root || document).querySelector(sel);
  // The compare plots' run colours (app.js COLORS), so a run has one colour on the page.
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];
  // Pairs of runs get colours no run has, so a pair's line is not read as one run's.
  const PAIR_COLORS = ["#6d28d9", "#0f766e", "#b45309", "#be185d", "#1e3a8a", "#4d7c0f", "#9f1239", "#374151"];
  const CONFIG = { responsive: true, displaylogo: false };
  const BAND_TEXT = { minmax: "the minimum to maximum over the runs", std: "the mean ± one standard deviation over the runs (sample std)" };

  function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }

  const state = {
    get(key, dflt) {
      const P = window.Phaseboard;
      const v = P && P.State ? P.State.get(key) : new URLSearchParams(location.search).get(key);
      return v === undefined || v === null || v === "" ? dflt : v;
    },
    set(changes) {
      const P = window.Phaseboard;
      if (P && P.State) P.State.set(changes);
    },
  };

  async function getJson(url) {
    const resp = await fetch(url, { headers: { Accept: "application/json" } });
    if (!resp.ok) {
      let detail = resp.status + " " + resp.statusText;
      try { detail = (await resp.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Error(detail);
    }
    return resp.json();
  }

  function label(name) {
    if (name === "llc") return "LLC (mean per checkpoint)";
    if (name.startsWith("progress/")) return "progress: " + name.slice(9);
    if (name.startsWith("ckpt/")) return name.slice(5) + " (computed)";
    return name;
  }

  function slug(name) { return name.replace(/[^A-Za-z0-9_-]/g, "_"); }

  // ------------------------------------------------------------------ bands

  function bandTraces(s, names, colorOf, mode, showLegend) {
    const traces = [];
    if (mode === "band" && s.step.length) { // the band first: the runs' lines stay on top of it
      traces.push({ x: s.step, y: s.upper, type: "scatter", mode: "lines", line: { width: 0 },
        hoverinfo: "skip", showlegend: false, name: "band upper" });
      traces.push({ x: s.step, y: s.lower, type: "scatter", mode: "lines", line: { width: 0 },
        fill: "tonexty", fillcolor: "rgba(17, 24, 39, 0.13)", name: "band", showlegend: false,
        customdata: s.upper, hovertemplate: "band %{y:.4g} – %{customdata:.4g}<extra></extra>" });
    }
    s.runs.forEach((r) => {
      traces.push({ x: r.step, y: r.value, type: "scatter", mode: "lines", name: names[r.id],
        legendgroup: String(r.id), showlegend: showLegend,
        line: { color: colorOf[r.id], width: mode === "band" ? 1.2 : 2 }, opacity: mode === "band" ? 0.8 : 1,
        hovertemplate: escapeHtml(names[r.id]) + "<br>step %{x}<br>%{y:.4g}<extra></extra>" });
    });
    if (mode === "band" && s.step.length) {
      traces.push({ x: s.step, y: s.mean, type: "scatter", mode: "lines", name: "mean of " + s.n + " runs",
        showlegend: showLegend, line: { color: "#111827", width: 3 },
        hovertemplate: "mean of " + s.n + " runs<br>step %{x}<br>%{y:.4g}<extra></extra>" });
    }
    return traces;
  }

  function drawBands(section, data) {
    const grid = $("#band-grid", section);
    const status = $("#bands-status", section);
    const mode = state.get("gview", "band");
    const names = {};
    const colorOf = {};
    data.runs.forEach((r, i) => { names[r.id] = r.name; colorOf[r.id] = COLORS[i % COLORS.length]; });
    $("#band-what", section).textContent = mode === "band" ? BAND_TEXT[data.band] : "no band: the runs overlaid";
    const shown = Object.keys(data.series).filter((n) => data.series[n].runs.length);
    const empty = Object.keys(data.series).filter((n) => !data.series[n].runs.length);
    if (!window.Plotly) return;
    grid.querySelectorAll(".plot").forEach((el) => Plotly.purge(el));
    grid.innerHTML = shown.map((n) => '<figure class="plot-card band-card" data-series="' + escapeHtml(n) + '">' +
      '<figcaption><span class="plot-title">' + escapeHtml(label(n)) + "</span></figcaption>" +
      '<div class="plot" id="plot-band-' + slug(n) + '" role="img" aria-label="' + escapeHtml(label(n)) + ' over the runs"></div></figure>').join("");
    const notes = [];
    shown.forEach((n, i) => {
      const s = data.series[n];
      const el = document.getElementById("plot-band-" + slug(n));
      const positive = s.runs.every((r) => r.step.every((x) => x > 0));
      const layout = {
        margin: { l: 55, r: 10, t: 10, b: i === 0 ? 80 : 45 }, hovermode: "closest",
        xaxis: { type: positive ? "log" : "linear", title: { text: "step" } },
        yaxis: { title: { text: n === "llc" ? "LLC" : n.split("/").pop() } },
        legend: { orientation: "h", y: -0.3, traceorder: "normal" }, showlegend: i === 0,
      };
      Plotly.react(el, bandTraces(s, names, colorOf, mode, i === 0), layout, CONFIG);
      if (s.missing.length) notes.push(label(n) + ": not in " + s.missing.map((id) => names[id]).join(", "));
      if (s.note) notes.push(label(n) + ": " + s.note);
    });
    empty.forEach((n) => notes.push(label(n) + ": no run has it"));
    const what = mode === "band" ? (data.band === "std" ? "mean ± 1 std" : "min – max") + " band" : "overlay";
    status.textContent = shown.length
      ? data.runs.length + " runs, " + shown.length + " measure(s), " + what + "." + (notes.length ? " " + notes.join("; ") + "." : "")
      : "No measure that the runs share yet (losses, LLC or progress measures appear once logged or computed)." +
        (notes.length ? " " + notes.join("; ") + "." : "");
    section.dataset.bandsLoaded = "true";
  }

  function fillSeriesPicker(section, data, reload) {
    const box = $("#g-series", section);
    const chosen = Object.keys(data.series);
    if (!data.available.length) { box.innerHTML = '<span class="muted">none shared by all runs</span>'; return; }
    box.innerHTML = data.available.map((n) => '<label><input type="checkbox" value="' + escapeHtml(n) + '"' +
      (chosen.indexOf(n) >= 0 ? " checked" : "") + "> " + escapeHtml(label(n)) + "</label>").join("");
    box.querySelectorAll("input").forEach((input) => input.addEventListener("change", () => {
      const checked = Array.from(box.querySelectorAll("input:checked")).map((i) => i.value);
      // Panels keep their order; a newly ticked measure comes last.
      const picked = chosen.filter((n) => checked.indexOf(n) >= 0).concat(checked.filter((n) => chosen.indexOf(n) < 0));
      state.set({ gseries: picked.join(",") || null });
      reload();
    }));
  }

  async function loadBands(section) {
    const band = state.get("gband", "minmax");
    const params = new URLSearchParams({ runs: section.dataset.runs, band: band });
    const series = state.get("gseries", "");
    if (series) params.set("series", series);
    let data;
    try {
      data = await getJson("/api/groups/bands?" + params.toString().replace(/%2C/g, ","));
    } catch (e) {
      $("#bands-status", section).textContent = "Could not load the group bands: " + e.message;
      return;
    }
    section.bandData = data;
    drawBands(section, data);
    fillSeriesPicker(section, data, () => loadBands(section));
  }

  // ------------------------------------------------------------------ paths and distance

  function drawPaths(section, data) {
    const status = $("#paths-status", section);
    const names = {};
    const colorOf = {};
    data.runs.forEach((r, i) => { names[r.id] = r.name; colorOf[r.id] = COLORS[i % COLORS.length]; });
    const skipped = data.skipped.map((s) => names[s.run] + " (" + s.reason + ")");
    const havePaths = data.paths.length > 0;
    const haveDist = data.distances.some((d) => d.step.length > 0);
    ["card-jp12", "card-jp13"].forEach((id) => { document.getElementById(id).hidden = !havePaths; });
    document.getElementById("card-fdist").hidden = !haveDist;
    if (!havePaths) {
      status.textContent = "No run has essential-dynamics outputs to compare yet (run the essential_dynamics analysis; it needs two checkpoints and a task)." +
        (skipped.length ? " Left out: " + skipped.join("; ") + "." : "");
      section.dataset.pathsLoaded = "true";
      return;
    }
    if (!window.Plotly) return;
    const ev = data.explained_variance;
    const pct = (k) => " (" + Math.round(ev[k] * 1000) / 10 + " %)";
    [["jp12", 1], ["jp13", 2]].forEach(([id, j]) => {
      const traces = data.paths.map((p) => ({
        x: p.components.map((c) => c[0]), y: p.components.map((c) => c[j]), type: "scatter", mode: "lines+markers",
        name: p.name, customdata: p.steps, line: { color: colorOf[p.id], width: 2 },
        marker: { size: p.steps.map((_, k) => (k === 0 || k === p.steps.length - 1 ? 10 : 5)),
          symbol: p.steps.map((_, k) => (k === 0 ? "circle-open" : k === p.steps.length - 1 ? "square" : "circle")),
          color: colorOf[p.id] },
        hovertemplate: escapeHtml(p.name) + "<br>step %{customdata}<br>PC1 %{x:.3g}<br>PC" + (j + 1) + " %{y:.3g}<extra></extra>",
      }));
      Plotly.react(document.getElementById("plot-" + id), traces, {
        margin: { l: 55, r: 10, t: 10, b: 80 }, hovermode: "closest",
        xaxis: { title: { text: "PC1" + pct(0) }, zeroline: false },
        yaxis: { title: { text: "PC" + (j + 1) + pct(j) }, zeroline: false },
        legend: { orientation: "h", y: -0.3 }, showlegend: j === 1,
      }, CONFIG);
    });
    if (haveDist) {
      const summary = data.distance_summary;
      const many = summary && summary.n_pairs > 2; // then the pairs go thin behind their mean
      const traces = [];
      if (many) {
        traces.push({ x: summary.step, y: summary.upper, type: "scatter", mode: "lines", line: { width: 0 },
          hoverinfo: "skip", showlegend: false, name: "pairs max" });
        traces.push({ x: summary.step, y: summary.lower, type: "scatter", mode: "lines", line: { width: 0 },
          fill: "tonexty", fillcolor: "rgba(17, 24, 39, 0.13)", name: "min – max over pairs",
          customdata: summary.upper, hovertemplate: "pairs %{y:.4g} – %{customdata:.4g}<extra></extra>" });
      }
      data.distances.filter((d) => d.step.length).forEach((d, k) => traces.push({
        x: d.step, y: d.rms, type: "scatter", mode: many ? "lines" : "lines+markers", marker: { size: 5 },
        name: names[d.a] + " – " + names[d.b], opacity: many ? 0.7 : 1,
        line: { color: PAIR_COLORS[k % PAIR_COLORS.length], width: many ? 1.2 : 2, dash: ["solid", "dash", "dot"][Math.floor(k / PAIR_COLORS.length) % 3] },
        hovertemplate: escapeHtml(names[d.a]) + " vs " + escapeHtml(names[d.b]) + "<br>step %{x}<br>RMS %{y:.4g}<extra></extra>",
      }));
      if (many) {
        traces.push({ x: summary.step, y: summary.mean, type: "scatter", mode: "lines", name: "mean of " + summary.n_pairs + " pairs",
          line: { color: "#111827", width: 3 }, hovertemplate: "mean of " + summary.n_pairs + " pairs<br>step %{x}<br>RMS %{y:.4g}<extra></extra>" });
      }
      const positive = traces.every((t) => t.x.every((x) => x > 0));
      Plotly.react(document.getElementById("plot-fdist"), traces, {
        // Legend above the plot: a pair per entry wraps to several lines on a phone, and
        // below it would run into the x-axis title.
        margin: { l: 60, r: 10, t: 10, b: 45 }, hovermode: "closest",
        xaxis: { type: positive ? "log" : "linear", title: { text: "step" } },
        yaxis: { title: { text: "RMS difference" }, rangemode: "tozero" },
        legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom", traceorder: "normal" },
        showlegend: true,
      }, CONFIG);
    }
    const p = data.probe || {};
    const n = data.paths.length;
    status.textContent = n + " run(s) in one PC space" + (p.task ? " (" + p.task + ", " + p.probe_examples + " " + p.split + " probe examples)" : "") +
      "; explained variance " + ev.map((v) => Math.round(v * 1000) / 10 + " %").join(" / ") + "." +
      (haveDist ? "" : " No two runs share a checkpoint step: no distance.") +
      (skipped.length ? " Left out: " + skipped.join("; ") + "." : "");
    section.dataset.pathsLoaded = "true";
  }

  async function loadPaths(section) {
    let data;
    try {
      data = await getJson("/api/groups/paths?runs=" + section.dataset.runs);
    } catch (e) {
      $("#paths-status", section).textContent = "Could not load the paths: " + e.message;
      return;
    }
    drawPaths(section, data);
  }

  function start() {
    const section = document.getElementById("groups");
    if (!section) return;
    const view = $("#g-view", section);
    const band = $("#g-band", section);
    view.value = state.get("gview", "band") === "overlay" ? "overlay" : "band";
    band.value = state.get("gband", "minmax") === "std" ? "std" : "minmax";
    band.disabled = view.value === "overlay";
    view.addEventListener("change", () => {
      state.set({ gview: view.value === "band" ? null : view.value });
      band.disabled = view.value === "overlay";
      if (section.bandData) drawBands(section, section.bandData);
    });
    band.addEventListener("change", () => {
      state.set({ gband: band.value === "minmax" ? null : band.value });
      loadBands(section);
    });
    loadBands(section);
    loadPaths(section);
    watchJobs(section);
  }

  // ------------------------------------------------------------------ refresh while jobs run

  const REFRESH_MS = 15000;

  /** Queued + running jobs of the compared runs (one small request per run). */
  async function activeJobs(section) {
    const ids = section.dataset.runs.split(",").filter(Boolean);
    const lists = await Promise.all(ids.map((id) => getJson("/api/jobs?limit=1&run_id=" + id)));
    return lists.reduce((n, l) => n + (l.counts.queued || 0) + (l.counts.running || 0), 0);
  }

  /** While any compared run has jobs queued or running, redraw bands and paths every
   *  REFRESH_MS and when the window regains focus, and once more when the last one ends;
   *  then stop. */
  function watchJobs(section) {
    const note = $("#groups-jobs", section);
    let wasActive = false;
    let first = true;
    async function tick() {
      let n;
      try {
        n = await activeJobs(section);
      } catch (e) {
        return; // the page still shows what it loaded; a reload tries again
      }
      if (!first && (n > 0 || wasActive)) {
        loadBands(section);
        loadPaths(section);
      }
      first = false;
      note.hidden = n === 0;
      note.textContent = n ? "Updating while " + n + " job(s) of these runs are queued or running." : "";
      section.dataset.jobsActive = String(n);
      wasActive = n > 0;
      clearTimeout(timer);
      if (n > 0) timer = setTimeout(tick, REFRESH_MS);
    }
    let timer = null;
    tick();
    // Coming back to the tab checks at once instead of waiting for the next tick.
    window.addEventListener("focus", () => { if (wasActive) tick(); });
  }

  // After app.js has loaded its view state (see lenses.js for the same ordering).
  if (document.readyState === "complete") start();
  else document.addEventListener("DOMContentLoaded", () => setTimeout(start, 0));
})();

/* Phaseboard front end: plots (plotly.js), view state in the URL, phase edits, share links.
 *
 * Pages are rendered on the server; this file only reads JSON rows (/api/runs/{id}/plotdata)
 * and draws them. Every piece of view state (series, axes, smoothing, x range) lives in the
 * URL query and is written back with history.replaceState, so the address reproduces a view.
 */
(function () {
  "use strict";

  // ------------------------------------------------------------------ small helpers

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"];
  // 20 distinct colours (Tableau 10 + Okabe-Ito + darker tones) for plots with many
  // restrictions: no colour repeats within one plot up to 20 traces.
  const PALETTE = COLORS.concat(["#000000", "#e69f00", "#56b4e9", "#009e73", "#0072b2",
    "#d55e00", "#cc79a7", "#393b79", "#637939", "#843c39"]);

  function token() {
    try { return localStorage.getItem("pb-token") || ""; } catch (e) { return ""; }
  }

  function authHeaders(headers) {
    headers = headers || {};
    headers["X-Phaseboard"] = "1"; // proves same-origin to the server's cross-site guard
    const t = token();
    if (t) headers.Authorization = "Bearer " + t;
    return headers;
  }

  /** The API's message for a failed response: its JSON `detail`, else the status line. */
  function errorText(status, statusText, body) {
    try {
      const data = JSON.parse(body);
      if (typeof data.detail === "string") return data.detail;
      if (Array.isArray(data.detail)) return data.detail.map((d) => d.msg || String(d)).join("; ");
    } catch (e) { /* not JSON */ }
    if (status === 0) return "the server did not answer";
    return status + " " + (statusText || "error");
  }

  async function api(method, url, body) {
    const init = { method, headers: authHeaders({ Accept: "application/json" }) };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(url, init);
    const text = await resp.text();
    if (!resp.ok) throw new Error(errorText(resp.status, resp.statusText, text));
    return text ? JSON.parse(text) : null;
  }

  let toastTimer = null;
  function toast(message) {
    const el = $("#toast");
    if (!el) return;
    el.textContent = message;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, 5000);
  }

  /** TensorBoard's debiased exponential moving average (same definition as
   *  analysis.phases.ema_smooth): last = last*w + (1-w)*v; out = last / (1 - w^n). */
  function emaSmooth(values, weight) {
    if (!(weight > 0)) return values.slice();
    let last = 0;
    let n = 0;
    return values.map((v) => {
      if (v === null || !Number.isFinite(v)) return v;
      last = last * weight + (1 - weight) * v;
      n += 1;
      const debias = weight === 1 ? 1 : 1 - Math.pow(weight, n);
      return last / debias;
    });
  }

  // ------------------------------------------------------------------ htmx glue

  document.addEventListener("htmx:configRequest", (e) => authHeaders(e.detail.headers));

  document.addEventListener("htmx:responseError", (e) => {
    const xhr = e.detail.xhr;
    const message = errorText(xhr.status, xhr.statusText, xhr.responseText);
    const form = e.detail.elt && e.detail.elt.closest ? e.detail.elt.closest("form") : null;
    const slot = form ? $("[data-form-error]", form) : null;
    if (slot) slot.textContent = message;
    toast(message);
  });

  document.addEventListener("htmx:afterSettle", () => {
    const jobs = $("#jobs");
    if (!jobs || !Plots.ready) return;
    const done = jobs.dataset.done;
    if (Plots.jobsDone !== null && done !== Plots.jobsDone) {
      Plots.reload();
      refreshPartial("checkpoints");
    }
    Plots.jobsDone = done;
    Plots.renderJobNotes();
  });

  function refreshPartial(name) {
    const plots = $("#plots");
    const runId = plots ? plots.dataset.runs.split(",")[0] : null;
    if (!runId || !window.htmx || !$("#" + name)) return Promise.resolve();
    return window.htmx.ajax("GET", "/runs/" + runId + "/" + name, { target: "#" + name, swap: "outerHTML" });
  }

  // ------------------------------------------------------------------ view state <-> URL

  // x: "step" here; "log" once the data shows log-spaced checkpoints (``setDefault``).
  const DEFAULTS = { x: "step", ylog: "1", smooth: "0", restricted: "grid", ry: "shared" };

  const State = {
    values: {},
    given: new Set(), // keys the URL (or share link) set
    load(shareQuery) {
      const params = new URLSearchParams(shareQuery || "");
      new URLSearchParams(location.search).forEach((v, k) => params.set(k, v));
      const s = {};
      params.forEach((v, k) => { s[k] = v; });
      this.given = new Set(Object.keys(s));
      this.values = Object.assign({}, DEFAULTS, s);
    },
    /** A default that depends on the data: used unless the URL chose the key. */
    setDefault(key, value) {
      DEFAULTS[key] = value;
      if (!this.given.has(key)) this.values[key] = value;
    },
    get(key) { return this.values[key]; },
    set(changes) {
      Object.entries(changes).forEach(([k, v]) => {
        if (v === null || v === undefined || v === "") delete this.values[k];
        else this.values[k] = String(v);
      });
      this.write();
    },
    write() {
      const params = new URLSearchParams();
      Object.keys(this.values).sort().forEach((k) => {
        const v = this.values[k];
        if (k !== "runs" && DEFAULTS[k] === v) return;
        params.set(k, v);
      });
      const qs = params.toString().replace(/%2C/g, ",");
      history.replaceState(history.state, "", location.pathname + (qs ? "?" + qs : ""));
    },
  };

  // ------------------------------------------------------------------ x axis (tracker)
  // ?x= step | log | wall (wall-clock time) | rel (time since the run's first point) |
  // series:NAME (any logged series, e.g. tokens or epoch, interpolated at each step).
  // Traces and shapes carry `_run` (the run index); `apply` maps their steps to the chosen x.

  const XAxis = {
    mode() { return State.get("x") || "step"; },
    isStep() { const m = this.mode(); return m === "step" || m === "log"; },
    type() {
      const m = this.mode();
      if (m === "log") return "log";
      return m === "wall" ? "date" : "linear";
    },

    fillOptions(data, select) {
      if (!select) return;
      const names = new Set();
      data.forEach((d) => Object.keys(d.series || {}).forEach((n) => names.add(n)));
      $$("option[data-series-x]", select).forEach((o) => o.remove());
      Array.from(names).sort().forEach((n) => {
        const o = document.createElement("option");
        o.value = "series:" + n;
        o.textContent = n + " (as x)";
        o.dataset.seriesX = "1";
        select.appendChild(o);
      });
      select.value = this.mode();
      if (select.value !== this.mode()) select.value = "step";
    },

    /** Linear interpolation of (xs -> ys), xs sorted; null outside the range. */
    interp(xs, ys, x) {
      if (!xs.length || x < xs[0] || x > xs[xs.length - 1]) return null;
      let lo = 0, hi = xs.length - 1;
      while (hi - lo > 1) { const mid = (lo + hi) >> 1; if (xs[mid] <= x) lo = mid; else hi = mid; }
      if (xs[hi] === xs[lo]) return ys[lo];
      return ys[lo] + (ys[hi] - ys[lo]) * (x - xs[lo]) / (xs[hi] - xs[lo]);
    },

    /** The run's step -> wall-time clock: its logged series with the most wall times. */
    clock(d) {
      if (d._clock) return d._clock;
      let best = { steps: [], walls: [] };
      Object.values(d.series || {}).forEach((s) => {
        if (!s.wall) return;
        const steps = [], walls = [];
        s.step.forEach((st, i) => { if (s.wall[i] !== null && s.wall[i] !== undefined) { steps.push(st); walls.push(s.wall[i]); } });
        if (steps.length > best.steps.length) best = { steps, walls };
      });
      best.t0 = best.walls.length ? Math.min(...best.walls) : 0;
      d._clock = best;
      return best;
    },

    relUnit(data) {
      let span = 0;
      data.forEach((d) => { const c = this.clock(d); if (c.walls.length) span = Math.max(span, Math.max(...c.walls) - c.t0); });
      return span > 7200 ? [3600, "hours since start"] : span > 120 ? [60, "minutes since start"] : [1, "seconds since start"];
    },

    mapSteps(d, steps, unit) {
      const m = this.mode();
      if (m.startsWith("series:")) {
        const s = (d.series || {})[m.slice(7)];
        return steps.map((st) => (s ? this.interp(s.step, s.value, st) : null));
      }
      const c = this.clock(d);
      return steps.map((st) => {
        const w = this.interp(c.steps, c.walls, st);
        if (w === null) return null;
        return m === "wall" ? new Date(w * 1000).toISOString() : (w - c.t0) / unit;
      });
    },

    apply(data, traces, layout) {
      if (this.isStep()) { traces.forEach((t) => delete t._run); (layout.shapes || []).forEach((s) => delete s._run); return; }
      const [unit, relTitle] = this.relUnit(data);
      traces.forEach((t) => {
        if (t._run !== undefined && data[t._run] && Array.isArray(t.x)) t.x = this.mapSteps(data[t._run], t.x, unit);
        delete t._run;
      });
      (layout.shapes || []).forEach((s) => {
        if (s._run !== undefined && data[s._run]) {
          const [x0, x1] = this.mapSteps(data[s._run], [s.x0, s.x1 === null ? s.x0 : s.x1], unit);
          s.x0 = x0; s.x1 = x1;
        }
        delete s._run;
      });
      layout.shapes = (layout.shapes || []).filter((s) => s.x0 !== null && s.x1 !== null);
      // Every x axis takes the chosen x's type and title (the time unit is known only now).
      Object.keys(layout).filter((k) => /^xaxis\d*$/.test(k)).forEach((k) => {
        const title = layout[k].title ? Object.assign({}, layout[k].title, { text: escapeHtml(xTitle(relTitle)) }) : undefined;
        layout[k] = Object.assign({}, layout[k], { type: this.type(), autorange: true, title });
        delete layout[k].range;
      });
    },
  };

  /** The view's boundary filter (``bsrc``: a source family such as "llc", "agreed" for
   *  boundaries several sources agree on, or unset for all); manual ones always show. */
  function shownBoundary(b) {
    const want = State.get("bsrc");
    if (!want || b.manual) return true;
    const sources = b.source.split("+");
    if (want === "agreed") return sources.length > 1;
    return sources.some((s) => s.split(":")[0] === want);
  }

  // ------------------------------------------------------------------ plots

  const Plots = {
    ready: false,
    jobsDone: null,
    data: [], // one plotdata response per run
    mode: "run",
    readonly: false,
    syncing: false,

    init(root) {
      this.root = root;
      this.mode = root.dataset.mode;
      this.readonly = root.dataset.readonly === "true";
      this.runIds = root.dataset.runs.split(",").filter(Boolean);
      State.load(root.dataset.shareQuery);
      if (this.mode === "compare" && !State.get("runs")) State.values.runs = this.runIds.join(",");
      this.bindControls();
      // Small multiples change their column count with the width (4 wide, 2 on a phone), and
      // stage names are fitted to each plot's width: redraw when the window is resized.
      window.addEventListener("resize", debounce(() => this.renderAll(), 200));
      const jobs = $("#jobs");
      this.jobsDone = jobs ? jobs.dataset.done : null;
      this.reload();
    },

    async reload() {
      const status = $("#plot-status");
      const started = performance.now();
      try {
        this.data = await Promise.all(this.runIds.map((id) =>
          api("GET", "/api/runs/" + id + "/plotdata?max_points=2000" + diag("plotQuery", ""))));
      } catch (err) {
        if (status) status.textContent = "Could not load plot data: " + err.message;
        return;
      }
      this.ready = true;
      State.setDefault("x", logSpaced(checkpointSteps(this.data)) ? "log" : "step");
      XAxis.fillOptions(this.data, $("#c-x"));
      this.renderSeriesPicker();
      this.renderAll();
      this.renderPhaseList();
      diag("loaded", null, this);
      if (status) status.textContent = "";
      this.root.dataset.loadedMs = String(Math.round(performance.now() - started));
      this.root.dataset.loaded = "true";
    },

    bindControls() {
      const x = $("#c-x"), ylog = $("#c-ylog"), smooth = $("#c-smooth"),
        out = $("#c-smooth-out"), restricted = $("#c-restricted");
      x.value = State.get("x") || "step";
      ylog.checked = State.get("ylog") === "1";
      smooth.value = State.get("smooth");
      out.textContent = Number(smooth.value).toFixed(2);
      restricted.value = State.get("restricted") === "overlay" ? "overlay" : "grid";
      x.addEventListener("change", () => { State.set({ x: x.value }); this.renderAll(); });
      ylog.addEventListener("change", () => { State.set({ ylog: ylog.checked ? "1" : "0" }); this.renderAll(); });
      smooth.addEventListener("input", () => { out.textContent = Number(smooth.value).toFixed(2); });
      smooth.addEventListener("change", () => { State.set({ smooth: smooth.value }); this.renderAll(); });
      restricted.addEventListener("change", () => { State.set({ restricted: restricted.value }); this.renderAll(); });
      const ry = $("#c-ry");
      if (ry) {
        ry.value = ["indep", "norm"].includes(State.get("ry")) ? State.get("ry") : "shared";
        ry.addEventListener("change", () => { State.set({ ry: ry.value }); this.renderRestricted(); });
      }
      $("#c-reset").addEventListener("click", () => { State.set({ xmin: null, xmax: null }); this.renderAll(); });
      const share = $("#c-share");
      if (share) share.addEventListener("click", () => this.share());
      const copy = $("#share-copy");
      if (copy) copy.addEventListener("click", () => {
        const input = $("#share-url");
        input.select();
        if (navigator.clipboard) navigator.clipboard.writeText(input.value).catch(() => {});
        toast("Link copied");
      });
      $$("[data-download]", this.root).forEach((btn) => btn.addEventListener("click", () => {
        const el = document.getElementById(btn.dataset.target);
        if (!el || !el.data) return;
        const name = (this.data.map((d) => d.run.name).join("+") || "plot") + "-" + btn.dataset.target.replace("plot-", "");
        Plotly.downloadImage(el, { format: btn.dataset.download, filename: name,
          width: Math.max(el.clientWidth, 800), height: Math.max(el.clientHeight, 400) });
      }));
    },

    async share() {
      try {
        const out = await api("POST", "/api/shares", { view: location.pathname + location.search });
        const box = $("#share-result");
        box.hidden = false;
        const input = $("#share-url");
        input.value = out.url;
        input.focus();
        input.select();
      } catch (err) {
        toast("Share failed: " + err.message);
      }
    },

    seriesNames() {
      const names = new Set();
      this.data.forEach((d) => Object.keys(d.series).forEach((n) => names.add(n)));
      return Array.from(names).sort();
    },

    selectedSeries() {
      const all = this.seriesNames();
      if (State.get("series") !== undefined) {
        const chosen = State.get("series").split(",").filter(Boolean);
        return all.filter((n) => chosen.includes(n));
      }
      const loss = all.filter(isLoss);
      const acc = all.filter(isAccuracy);
      const other = all.filter((n) => !isLoss(n) && !isAccuracy(n));
      return loss.concat(acc, other.slice(0, 1));
    },

    renderSeriesPicker() {
      const box = $("#c-series");
      const all = this.seriesNames();
      const chosen = new Set(this.selectedSeries());
      box.textContent = "";
      if (!all.length) {
        box.innerHTML = '<span class="muted">no logged series yet</span>';
        return;
      }
      const groups = seriesGroups(box);
      all.forEach((name, i) => {
        const label = document.createElement("label");
        label.className = "chip";
        if (isFromCheckpoints(name)) label.title = name + ": computed by the metrics job from the uploaded checkpoint";
        const input = document.createElement("input");
        input.type = "checkbox";
        input.value = name;
        input.checked = chosen.has(name);
        input.id = "series-" + i;
        input.addEventListener("change", () => {
          const picked = $$("input", box).filter((el) => el.checked).map((el) => el.value);
          State.set({ series: picked.join(",") || "," });
          this.renderAll();
        });
        label.append(input, " " + displayName(name));
        (isFromCheckpoints(name) ? groups.ckpt : groups.logged).append(label);
      });
    },

    gridCols() { return window.innerWidth < 700 ? 2 : 4; },

    xType() { return XAxis.type(); },

    xRange() {
      if (!XAxis.isStep()) return null; // zoom ranges are kept in steps
      const lo = parseFloat(State.get("xmin")), hi = parseFloat(State.get("xmax"));
      if (!Number.isFinite(lo) || !Number.isFinite(hi) || hi <= lo) return null;
      if (this.xType() === "log") {
        if (hi <= 0) return null;
        return [Math.log10(Math.max(lo, 1e-9)), Math.log10(hi)];
      }
      return [lo, hi];
    },

    baseLayout(yTitle, ylog) {
      const range = this.xRange();
      // The legend sits under the x title; the top margin keeps plotly's toolbar off the
      // boundary markers and stage labels.
      const xaxis = { type: this.xType(), zeroline: false, automargin: true,
        title: { text: xTitle(), standoff: 4, font: { size: 11 } } };
      if (range) { xaxis.range = range; xaxis.autorange = false; }
      return {
        margin: { l: 56, r: 16, t: 34, b: 30 },
        hovermode: "x unified",
        legend: { orientation: "h", x: 0, y: -0.2, yanchor: "top", font: { size: 11 } },
        xaxis,
        yaxis: { title: { text: yTitle }, type: ylog ? "log" : "linear", zeroline: false },
        yaxis9: { overlaying: "y", range: [0, 1], visible: false, fixedrange: true },
        paper_bgcolor: "rgba(0,0,0,0)",
        plot_bgcolor: "#fff",
        font: { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12 },
      };
    },

    traceStyle(runIndex, seriesIndex) {
      if (this.mode === "compare") {
        return { color: COLORS[runIndex % COLORS.length], dash: ["solid", "dash", "dot", "dashdot"][seriesIndex % 4] };
      }
      return { color: COLORS[seriesIndex % COLORS.length], dash: "solid" };
    },

    traceName(run, name) {
      const shown = isFromCheckpoints(name) ? displayName(name) + " (ckpt)" : name;
      return this.mode === "compare" ? run.name + " · " + shown : shown;
    },

    lineTraces(filter) {
      const chosen = this.selectedSeries().filter(filter);
      const w = Math.min(Math.max(parseFloat(State.get("smooth")) || 0, 0), 0.99);
      const traces = [];
      this.data.forEach((d, r) => {
        chosen.forEach((name, i) => {
          const s = d.series[name];
          if (!s) return;
          const style = this.traceStyle(r, i);
          const label = this.traceName(d.run, name);
          if (w > 0) {
            traces.push({ _run: r, x: s.step, y: s.value, type: "scatter", mode: "lines", name: label + " (raw)",
              line: { color: style.color, width: 1 }, opacity: 0.25, showlegend: false, hoverinfo: "skip" });
          }
          traces.push({ _run: r, x: s.step, y: emaSmooth(s.value, w), type: "scatter", mode: s.step.length < 60 ? "lines+markers" : "lines",
            name: label, line: { color: style.color, dash: style.dash, width: 2 }, marker: { size: 5 },
            yaxis: isAccuracy(name) ? "y2" : undefined,
            legendgroup: this.mode === "compare" ? d.run.name : undefined,
            legendgrouptitle: this.mode === "compare" && i === 0 ? { text: d.run.name } : undefined });
        });
      });
      return traces;
    },

    /** Vertical lines + shaded stages for each run's boundaries, and a hover trace. */
    phaseDecor(xref, yref, withHover, plot) {
      const shapes = [];
      const traces = [];
      this.data.forEach((d, r) => {
        const bs = (d.boundaries || []).filter(shownBoundary);
        const color = this.mode === "compare" ? COLORS[r % COLORS.length] : "#6b7280";
        bs.forEach((b, i) => {
          shapes.push({ _run: r, type: "line", xref, yref, x0: b.step, x1: b.step, y0: 0, y1: 1,
            line: { color: b.manual ? "#7c3aed" : color, width: 1.5, dash: b.manual ? "dot" : "dash" },
            name: "phase-" + b.id });
          if (i % 2 === 0 && this.mode !== "compare") {
            const next = bs[i + 1];
            shapes.push({ _run: r, type: "rect", xref, yref, layer: "below", line: { width: 0 },
              x0: b.step, x1: next ? next.step : null, y0: 0, y1: 1, fillcolor: "rgba(99,102,241,0.06)" });
          }
        });
        if (withHover && bs.length) {
          traces.push({
            _run: r, x: bs.map((b) => b.step), y: bs.map(() => 0.97), yaxis: "y9", type: "scatter", mode: "markers",
            name: this.mode === "compare" ? d.run.name + " · phases" : "phase boundaries",
            marker: { symbol: "triangle-down", size: 10, color: bs.map((b) => (b.manual ? "#7c3aed" : color)) },
            hovertemplate: bs.map((b) => "<b>" + escapeHtml(b.label || b.kind) + "</b><br>step " + fmt(b.step) +
              "<br>source " + escapeHtml(b.source) + "<br>score " + fmt(b.score) + "<extra></extra>"),
            showlegend: true,
          });
        }
        // Steps whose weights equal a later step's (server/store/series_checks.py).
        const dups = (d.checks && d.checks.duplicates) || [];
        if (withHover && dups.length) {
          traces.push({
            _run: r, x: dups.map((c) => c.step), y: dups.map(() => 0.03), yaxis: "y9", type: "scatter", mode: "markers",
            name: this.mode === "compare" ? d.run.name + " · same weights" : "same weights as a later step",
            marker: { symbol: "x-thin-open", size: 10, line: { width: 2, color: "#d97706" } },
            hovertemplate: dups.map((c) => "step " + fmt(c.step) + " has the same weights as step " + fmt(c.of) +
              "<br>not analysed<extra></extra>"),
            showlegend: true,
          });
        }
      });
      // An open-ended last stage (x1 null) is closed at the largest step seen.
      const maxStep = this.maxStep();
      shapes.forEach((s) => { if (s.x1 === null) s.x1 = maxStep; });
      const el = plot && document.getElementById("plot-" + plot);
      const annotations = this.mode === "compare" ? [] : stageLabels(this.data[0].boundaries || [], maxStep, this.xType(), xref, yref, el ? el.clientWidth : 0);
      return { shapes: shapes.filter((s) => s.type !== "rect" || s.x1 > s.x0), traces, annotations };
    },

    maxStep() {
      let m = 1;
      this.data.forEach((d) => {
        Object.values(d.series).forEach((s) => { if (s.step.length) m = Math.max(m, s.step[s.step.length - 1]); });
        if (d.llc.step.length) m = Math.max(m, d.llc.step[d.llc.step.length - 1]);
      });
      return m;
    },

    draw(id, traces, layout, emptyText) {
      const el = document.getElementById("plot-" + id);
      const card = document.getElementById("card-" + id);
      if (!el) return;
      const hasData = traces.some((t) => t.yaxis !== "y9" && t.x && t.x.length);
      card.classList.toggle("empty-plot", !hasData);
      if (!hasData) {
        if (el.data) Plotly.purge(el);
        el.innerHTML = '<p class="muted plot-empty">' + emptyText + "</p>";
        return;
      }
      if (!el.data) el.innerHTML = "";
      this.fitLegend(el, traces, layout);
      const config = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"],
        toImageButtonOptions: { filename: "phaseboard-" + id } };
      XAxis.apply(this.data, traces, layout);
      Plotly.react(el, traces, layout, config);
      if (!el.dataset.bound) {
        el.dataset.bound = "1";
        el.on("plotly_relayout", (ev) => this.onRelayout(ev));
        diag("bindPlot", null, el, id);
      }
    },

    onRelayout(ev) {
      if (this.syncing || !XAxis.isStep()) return;
      let lo, hi;
      if (ev["xaxis.autorange"] || ev.autosize && !("xaxis.range[0]" in ev)) {
        if (!ev["xaxis.autorange"]) return;
        State.set({ xmin: null, xmax: null });
      } else if ("xaxis.range[0]" in ev || Array.isArray(ev["xaxis.range"])) {
        const r = ev["xaxis.range"] || [ev["xaxis.range[0]"], ev["xaxis.range[1]"]];
        lo = Number(r[0]); hi = Number(r[1]);
        if (this.xType() === "log") { lo = Math.pow(10, lo); hi = Math.pow(10, hi); }
        State.set({ xmin: round(lo), xmax: round(hi) });
      } else {
        return;
      }
      this.syncX();
    },

    /** Give every plot the x range in the URL (zoom one, all follow). */
    syncX() {
      const range = this.xRange();
      this.syncing = true;
      const jobs = $$(".plot", this.root).filter((el) => el.data).map((el) => {
        const update = {};
        Object.keys(el.layout).filter((k) => /^xaxis\d*$/.test(k)).forEach((k) => {
          if (range) { update[k + ".range"] = range; update[k + ".autorange"] = false; }
          else update[k + ".autorange"] = true;
        });
        return Plotly.relayout(el, update);
      });
      Promise.all(jobs).finally(() => { this.syncing = false; });
    },

    renderAll() {
      if (!this.ready) return;
      const ylog = State.get("ylog") === "1";
      // Loss
      let decor = this.phaseDecor("x", "paper", true, "loss");
      let layout = Object.assign(this.baseLayout("loss", ylog), { shapes: decor.shapes, annotations: decor.annotations });
      this.draw("loss", this.lineTraces(isLoss).concat(decor.traces), layout, this.emptyText("metrics", "No loss series selected or logged yet."));
      // Metrics; accuracy on its own 0-1 axis on the right
      decor = this.phaseDecor("x", "paper", true, "metrics");
      layout = Object.assign(this.baseLayout("value", ylog), { shapes: decor.shapes, annotations: decor.annotations });
      layout.yaxis2 = { title: { text: "accuracy" }, overlaying: "y", side: "right", range: [0, 1.02], zeroline: false,
        showgrid: false, tickvals: [0, 0.25, 0.5, 0.75, 1] };
      layout.margin.r = 48;
      this.draw("metrics", this.lineTraces((n) => !isLoss(n)).concat(decor.traces), layout, this.emptyText("metrics", "Pick a metric in Series to plot it here."));
      // LLC with a ± std band
      decor = this.phaseDecor("x", "paper", true, "llc");
      layout = Object.assign(this.baseLayout("LLC", false), { shapes: decor.shapes, annotations: decor.annotations });
      this.draw("llc", this.llcTraces(layout).concat(decor.traces), layout, this.emptyText("llc", "No LLC results yet."));
      this.renderRestricted();
      this.renderJobNotes();
    },

    /** The LLC plot: per run, the ok estimates as the line (and its ± std band); estimates
     *  judged not ok as hollow markers off the line; checkpoints with no estimate as an "x"
     *  at the bottom (llcPointTraces). The y range is that of the ok estimates. */
    llcTraces(layout) {
      const traces = [];
      const parts = [];
      this.data.forEach((d, r) => {
        const l = d.llc;
        if (!l.step.length) return;
        const color = COLORS[r % COLORS.length];
        const p = llcParts(l);
        parts.push(p);
        const prefix = this.mode === "compare" ? d.run.name + " · " : "";
        llcPointTraces(p, { color, prefix, name: "LLC", band: true, size: 6 })
          .forEach((t) => traces.push(Object.assign(t, { _run: r })));
      });
      fitOkRange(layout.yaxis, parts, traces, "y");
      return traces;
    },

    renderRestricted() {
      const names = new Set();
      this.data.forEach((d) => Object.keys(d.restricted).forEach((n) => names.add(n)));
      const restrictions = Array.from(names).sort();
      const overlay = State.get("restricted") === "overlay";
      const el = document.getElementById("plot-restricted");
      if (!restrictions.length) {
        this.draw("restricted", [], {}, this.emptyText("llc_restricted", "No restricted LLC results yet."));
        return;
      }
      if (overlay || restrictions.length === 1) {
        const decor = this.phaseDecor("x", "paper", false, "restricted");
        const traces = [];
        const parts = [];
        this.data.forEach((d, r) => restrictions.forEach((name, i) => {
          const s = d.restricted[name];
          if (!s) return;
          const color = this.mode === "compare" ? COLORS[r % COLORS.length] : PALETTE[i % PALETTE.length];
          const p = llcParts(s);
          parts.push(p);
          llcPointTraces(p, { color, name: this.traceName(d.run, name), errorBars: true, size: 6,
            dash: this.mode === "compare" ? ["solid", "dash", "dot"][i % 3] : "solid", group: this.traceName(d.run, name) })
            .forEach((t) => traces.push(Object.assign(t, { _run: r })));
        }));
        const layout = Object.assign(this.baseLayout("restricted LLC", false), { shapes: decor.shapes, annotations: decor.annotations });
        fitOkRange(layout.yaxis, parts, traces, "y");
        el.style.height = "";
        this.draw("restricted", traces, layout, this.emptyText("llc_restricted", "No restricted LLC results yet."));
        return;
      }
      // Small multiples: one subplot per restriction, x matched to the first; y shared by
      // default (heads and layers on one scale, so a 15x gap between layers shows as one),
      // else each its own scale, or each normalised to its max.
      const n = restrictions.length;
      const ry = ["indep", "norm"].includes(State.get("ry")) ? State.get("ry") : "shared";
      const norm = ry === "norm";
      const cols = Math.min(n, this.gridCols());
      const rows = Math.ceil(n / cols);
      const base = this.baseLayout("", false);
      const layout = {
        margin: { l: 48, r: 12, t: 28, b: 40 }, hovermode: "closest", showlegend: this.mode === "compare",
        legend: base.legend, font: base.font, paper_bgcolor: base.paper_bgcolor, plot_bgcolor: base.plot_bgcolor,
        grid: { rows, columns: cols, pattern: "independent", xgap: 0.08, ygap: 0.28 },
        annotations: [], shapes: [],
      };
      const traces = [];
      const allParts = [];
      restrictions.forEach((name, k) => {
        const ax = k === 0 ? "" : String(k + 1);
        const bottom = k >= n - cols;
        layout["xaxis" + ax] = { type: this.xType(), matches: k ? "x" : undefined, zeroline: false, tickfont: { size: 10 },
          title: bottom ? { text: xTitle(), standoff: 2, font: { size: 10 } } : undefined };
        if (k === 0 && base.xaxis.range) { layout.xaxis.range = base.xaxis.range; layout.xaxis.autorange = false; }
        layout["yaxis" + ax] = { zeroline: false, tickfont: { size: 10 }, matches: ry !== "indep" && k ? "y" : undefined };
        layout.annotations.push({ text: "<b>" + escapeHtml(name) + "</b>", showarrow: false, xref: "x" + ax + " domain",
          yref: "y" + ax + " domain", x: 0.5, y: 1.0, yanchor: "bottom", font: { size: 11 } });
        const sub = this.phaseDecor("x" + ax, "y" + ax + " domain", false);
        sub.shapes.forEach((s) => layout.shapes.push(s));
        const parts = [];
        const mine = [];
        this.data.forEach((d, r) => {
          let s = d.restricted[name];
          if (!s) return;
          if (norm) s = normalised(s);
          const color = COLORS[(this.mode === "compare" ? r : 0) % COLORS.length];
          const p = llcParts(s);
          parts.push(p);
          llcPointTraces(p, { color, name: this.traceName(d.run, name), band: true, size: 5, width: 1.5,
            legend: false, group: d.run.name, noneAxis: null })
            .forEach((t) => mine.push(Object.assign(t, { _run: r, xaxis: "x" + ax, yaxis: "y" + ax })));
        });
        if (ry === "indep") fitOkRange(layout["yaxis" + ax], parts, mine, "y" + ax);
        allParts.push(...parts);
        traces.push(...mine);
      });
      if (ry !== "indep") fitOkRange(layout.yaxis, allParts, traces, null);
      el.style.height = rows * 170 + 70 + "px";
      el.dataset.ry = ry;
      this.draw("restricted", traces, layout, this.emptyText("llc_restricted", "No restricted LLC results yet."));
    },

    // -------------------------------------------------------------- at a glance (speed)

    /** Compare mode: the legend goes under the plot, grouped per run, and the plot grows
     *  by the legend's rows instead of being squashed by it. */
    fitLegend(el, traces, layout) {
      if (el.id === "plot-restricted") return;
      if (this.mode !== "compare") return this.fitNarrowLegend(el, traces, layout);
      const items = traces.filter((t) => t.showlegend !== false).length;
      const perRow = window.innerWidth < 700 ? 1 : 3;
      const extra = Math.ceil(items / perRow) * 20 + 24 * this.data.length;
      layout.height = 330 + extra;
      layout.legend = Object.assign({}, layout.legend, { orientation: "h", y: -0.12, yanchor: "top", groupclick: "toggleitem" });
      layout.margin = Object.assign({}, layout.margin, { b: 40 + extra });
      el.style.height = layout.height + "px";
    },

    /** Run page on a phone: one legend entry a row under the x title, the plot taller by
     *  the legend's rows, so a seven-series legend neither squashes the plot area to a strip
     *  nor scrolls inside it; at desktop width the stylesheet's height. */
    fitNarrowLegend(el, traces, layout) {
      if (window.innerWidth >= 700) { el.style.height = ""; return; }
      const items = traces.filter((t) => t.showlegend !== false && t.name).length;
      if (!items) { el.style.height = ""; return; }
      const extra = items * 21 + 18;
      layout.height = 250 + extra;
      layout.margin = Object.assign({}, layout.margin, { b: 44 + extra });
      layout.legend = Object.assign({}, layout.legend, { orientation: "v", x: 0, xanchor: "left",
        yref: "container", y: extra / layout.height, yanchor: "top" });
      el.style.height = layout.height + "px";
    },

    /** Jobs of ``kind`` in the jobs panel: {queued, running, done, failed, progress}. */
    jobsOf(kind) {
      const el = $("#jobs");
      if (!el || !el.dataset.kinds) return null;
      try { return JSON.parse(el.dataset.kinds)[kind] || null; } catch (e) { return null; }
    },

    /** "llc: 8 running (40 %), 16 queued, 7 done" while jobs of ``kind`` are active. */
    jobsText(kind) {
      const j = this.jobsOf(kind);
      if (!j || !(j.running || j.queued)) return "";
      const parts = [];
      if (j.running) parts.push(j.running + " running (" + Math.round(100 * (j.progress || 0)) + " %)");
      if (j.queued) parts.push(j.queued + " queued");
      if (j.done) parts.push(j.done + " done");
      return kind.replace("_", " ") + " jobs: " + parts.join(", ");
    },

    emptyText(kind, fallback) {
      const text = this.jobsText(kind);
      return text ? "Computing: " + escapeHtml(text) + "…" : fallback;
    },

    renderJobNotes() {
      const notes = { loss: "metrics", metrics: "metrics", llc: "llc", restricted: "llc_restricted" };
      Object.entries(notes).forEach(([id, kind]) => {
        const el = document.getElementById("jobs-note-" + id);
        if (el) el.textContent = this.mode === "run" ? this.jobsText(kind) : "";
      });
    },

    // -------------------------------------------------------------- manual phase boundaries

    renderPhaseList() {
      const list = $("#phase-list");
      if (!list || this.mode !== "run") return;
      const bs = this.data[0].boundaries;
      list.textContent = "";
      if (!bs.length) {
        list.innerHTML = '<li class="muted">None yet.</li>';
        return;
      }
      bs.forEach((b) => {
        const li = document.createElement("li");
        li.dataset.id = b.id;
        const info = document.createElement("span");
        info.className = "phase-info";
        info.innerHTML = "<strong>step " + fmt(b.step) + "</strong> <small>" + escapeHtml(b.manual ? "manual" : b.source + " · " + b.kind + " · score " + fmt(b.score)) + "</small>";
        li.append(info);
        if (this.readonly) {
          const label = document.createElement("span");
          label.textContent = b.label || "";
          li.append(label);
        } else {
          const input = document.createElement("input");
          input.value = b.label || "";
          input.placeholder = b.kind;
          input.maxLength = 200;
          input.setAttribute("aria-label", "label of boundary at step " + fmt(b.step));
          const save = button("Rename", async () => {
            await this.phaseCall("PATCH", "/api/phases/" + b.id, { label: input.value });
          });
          input.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); save.click(); } });
          const del = button("Delete", async () => {
            await this.phaseCall("DELETE", "/api/phases/" + b.id);
          });
          del.classList.add("danger");
          del.setAttribute("aria-label", "delete boundary at step " + fmt(b.step));
          li.append(input, save, del);
        }
        list.append(li);
      });
    },

    async phaseCall(method, url, body) {
      const err = $("#phase-error");
      try {
        await api(method, url, body);
        if (err) err.textContent = "";
        await this.reload();
        return true;
      } catch (e) {
        if (err) err.textContent = e.message;
        toast(e.message);
        return false;
      }
    },

    bindPhaseForm() {
      const form = $("#phase-add");
      if (!form) return;
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        const step = parseFloat($("#p-step").value);
        const ok = await this.phaseCall("POST", "/api/runs/" + this.runIds[0] + "/phases", { step, label: $("#p-label").value });
        if (ok) form.reset();
      });
    },
  };

  function debounce(fn, ms) {
    let t = null;
    return () => { clearTimeout(t); t = setTimeout(fn, ms); };
  }
  /** The runs' checkpoint steps: those of their LLC results and of the metrics computed
   *  from checkpoints (``ckpt/`` series), sorted, once each. */
  function checkpointSteps(data) {
    const steps = new Set();
    data.forEach((d) => {
      (d.llc ? d.llc.step : []).forEach((x) => steps.add(x));
      Object.entries(d.series || {}).forEach(([n, s]) => { if (isFromCheckpoints(n)) s.step.forEach((x) => steps.add(x)); });
    });
    return Array.from(steps).sort((a, b) => a - b);
  }
  /** Whether checkpoints are log-spaced: at least 5 past step 0, spanning 100x or more, and
   *  their gaps more even in log(step) than in step (by coefficient of variation). */
  function logSpaced(steps) {
    const pos = steps.filter((x) => x > 0);
    if (pos.length < 5 || pos[pos.length - 1] / pos[0] < 100) return false;
    const cv = (xs) => {
      const gaps = xs.slice(1).map((x, i) => x - xs[i]);
      const mean = gaps.reduce((a, b) => a + b, 0) / gaps.length;
      const sd = Math.sqrt(gaps.reduce((a, b) => a + (b - mean) * (b - mean), 0) / gaps.length);
      return mean > 0 ? sd / mean : Infinity;
    };
    return cv(pos.map(Math.log)) < cv(pos);
  }
  function isLoss(name) { return /loss/i.test(name); }
  // --- at a glance (speed): series groups, axis titles, stage labels, normalisation
  function isAccuracy(name) { return /(^|[_/.])acc(uracy)?($|[_.])/i.test(name) && !isLoss(name); }
  function isFromCheckpoints(name) { return name.indexOf("ckpt/") === 0; }
  function displayName(name) { return isFromCheckpoints(name) ? name.slice(5) : name; }
  /** The x axis's title for the chosen x (?x=): step, log step, wall-clock time, time since
   *  the run's first point (its unit), or the logged series used as x. */
  function xTitle(relTitle) {
    const m = XAxis.mode();
    if (m === "log") return "step (log scale)";
    if (m === "wall") return "wall-clock time";
    if (m === "rel") return relTitle || "time since start";
    if (m.startsWith("series:")) return m.slice(7);
    return "step";
  }
  /** Two labelled rows in the series picker: logged by the training script, and computed
   *  from the checkpoints by the metrics job (names that start with ``ckpt/``). */
  function seriesGroups(box) {
    const make = (title, hint) => {
      const row = document.createElement("div");
      row.className = "series-group";
      const t = document.createElement("span");
      t.className = "series-group-title";
      t.textContent = title;
      t.title = hint;
      row.append(t);
      box.append(row);
      return row;
    };
    return {
      logged: make("Logged during training", "sent by run.log() from the training loop"),
      ckpt: make("Computed from checkpoints", "metrics job results (ckpt/ in the API)"),
    };
  }
  /** Stage names between boundaries: the user's label of the boundary that opens a stage,
   *  else "stage N". Drawn at the bottom of each plot, centred in its stage; a stage too
   *  narrow for its name (at the plot's width in pixels, ~6 px a character) gets its
   *  number only, or a clipped label, and every name's full text and step range show on
   *  hover, so no stage goes unnamed. */
  function stageLabels(bs, maxStep, xType, xref, yref, widthPx) {
    if (!bs.length) return [];
    const sorted = bs.slice().sort((a, b) => a.step - b.step);
    const edges = [xType === "log" ? 1 : 0].concat(sorted.map((b) => b.step), [maxStep]);
    const out = [];
    const pos = (v) => (xType === "log" ? Math.log10(Math.max(v, 1)) : v);
    const span = pos(maxStep) - pos(edges[0]) || 1;
    const areaPx = Math.max(widthPx - 90, 100); // less the axis margins
    const fits = (text, px) => 6 * text.length + 6 <= px;
    for (let i = 0; i + 1 < edges.length; i++) {
      const lo = edges[i], hi = edges[i + 1];
      const px = ((pos(hi) - pos(lo)) / span) * areaPx;
      const opener = i > 0 ? sorted[i - 1] : null;
      const full = opener && opener.label ? opener.label : "stage " + (i + 1);
      const short = opener && opener.label ? full.slice(0, 3) + "…" : String(i + 1);
      const text = fits(full, px) ? full : fits(short, px) ? short : null;
      if (!(hi > lo) || text === null) continue;
      const mid = xType === "log" ? Math.sqrt(Math.max(lo, 1) * hi) : (lo + hi) / 2;
      out.push({ text: escapeHtml(text), x: xType === "log" ? Math.log10(mid) : mid, xref, yref,
        y: 0.01, yanchor: "bottom", showarrow: false, font: { size: 10, color: "#4b5563" },
        bgcolor: "rgba(255,255,255,0.7)", name: "stage-label",
        hovertext: escapeHtml(full + ": steps " + lo + "–" + hi) });
    }
    return out;
  }
  function normalised(s) {
    const m = Math.max(...s.mean.map((v) => Math.abs(v || 0)), 1e-12);
    return { step: s.step, mean: s.mean.map((v) => (v === null ? v : v / m)), std: s.std.map((v) => (v || 0) / m) };
  }
  function round(v) { return Math.abs(v) >= 100 ? Math.round(v) : Number(v.toPrecision(6)); }
  function fmt(v) { return v === null || v === undefined ? "–" : String(Number(Number(v).toPrecision(5))); }
  function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }
  function hexToRgba(hex, a) {
    const n = parseInt(hex.slice(1), 16);
    return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + a + ")";
  }
  /** Call ``window.PhaseboardDiag[name](...args)`` (diagnostics.js) if it is loaded. */
  function diag(name, fallback, ...args) {
    const d = window.PhaseboardDiag;
    return d && typeof d[name] === "function" ? d[name](...args) : fallback;
  }
  // ------------------------------------------------------------------ LLC points by verdict
  // Only estimates judged "ok" are data: the line, its band and the phases use them alone.
  // An estimate judged otherwise is a hollow marker off the line (its number in the hover
  // and the trace panel); a checkpoint with no estimate (a diverged chain: the surviving
  // chains' mean is never the estimate) is an "x" at the bottom of the plot.

  const WARN = "#d97706";
  const BAD = "#b91c1c";

  /** A series (step, mean, std, verdict, detail, id, n_beta, surviving) split into the
   *  indices of ok estimates, flagged ones (finite, verdict not ok) and missing ones. */
  function llcParts(s) {
    const verdict = (i) => (s.verdict && s.verdict[i]) || "ok";
    const ok = [], flagged = [], none = [];
    s.step.forEach((_, i) => {
      const m = s.mean[i];
      const v = verdict(i);
      if (m === null || m === undefined || !Number.isFinite(m) || v === "diverged chains") none.push(i);
      else if (v === "ok") ok.push(i);
      else flagged.push(i);
    });
    return { s, ok, flagged, none, verdict };
  }

  function pick(arr, idx) { return idx.map((i) => (arr ? arr[i] : null)); }

  /** customdata per point: [std, "verdict: detail", n_beta, result id] (the trace panel's
   *  click handler reads the id). */
  function llcCustom(p, idx) {
    const s = p.s;
    return idx.map((i) => [fmt(s.std[i]), p.verdict(i) + (s.detail && s.detail[i] ? ": " + s.detail[i] : ""),
      fmt(s.n_beta ? s.n_beta[i] : null), s.id ? s.id[i] : null,
      s.surviving && s.surviving[i] !== null && s.surviving[i] !== undefined ? fmt(s.surviving[i]) : ""]);
  }

  /** Traces of one LLC series (``llcParts``): the band and line of the ok estimates, the
   *  flagged estimates as hollow markers, the missing ones as an "x" at the bottom.
   *  ``o``: {color, name, prefix, band, errorBars, size, width, dash, legend, group}. */
  function llcPointTraces(p, o) {
    const s = p.s;
    const name = (o.prefix || "") + o.name;
    const out = [];
    const legend = o.legend !== false;
    if (p.ok.length) {
      const okS = { step: pick(s.step, p.ok), mean: pick(s.mean, p.ok), std: pick(s.std, p.ok) };
      if (o.band) out.push(Object.assign(bandTrace(okS, o.color, (o.prefix || "") + "± std"), { showlegend: legend, legendgroup: o.group }));
      out.push({ x: okS.step, y: okS.mean, type: "scatter", mode: "lines+markers", name,
        line: { color: o.color, width: o.width || 2, dash: o.dash || "solid" }, marker: { size: o.size || 6, color: o.color },
        error_y: o.errorBars ? { type: "data", array: okS.std, visible: true, thickness: 1, width: 0, color: o.color } : undefined,
        customdata: llcCustom(p, p.ok), showlegend: legend, legendgroup: o.group, meta: "llc-ok",
        hovertemplate: "%{y:.4g} ± %{customdata[0]} (n_beta %{customdata[2]})<br>ok<br><i>click for traces</i><extra>" + escapeHtml(name) + "</extra>" });
    }
    if (p.flagged.length) {
      const marker = { size: (o.size || 6) + 3, symbol: "circle-open", color: WARN, line: { width: 2, color: WARN } };
      // The legend's entry: a hollow circle (the markers may be edge triangles, see fitOkRange).
      if (legend) out.push({ x: [null], y: [null], type: "scatter", mode: "markers", name: name + " · not ok",
        marker, legendgroup: o.group || name + "-flagged", hoverinfo: "skip" });
      out.push({ x: pick(s.step, p.flagged), y: pick(s.mean, p.flagged), type: "scatter", mode: "markers",
        name: name + " · not ok", showlegend: false, legendgroup: o.group || name + "-flagged", meta: "llc-flagged",
        cliponaxis: false, marker,
        customdata: llcCustom(p, p.flagged),
        hovertemplate: "%{customdata[5]:.4g} ± %{customdata[0]}: <b>%{customdata[1]}</b><br>not an estimate the phases use" +
          "<br><i>click for traces</i><extra>" + escapeHtml(name) + "</extra>" });
      out[out.length - 1].customdata.forEach((c, k) => { c[5] = s.mean[p.flagged[k]]; });
    }
    if (p.none.length) {
      out.push({ x: pick(s.step, p.none), y: p.none.map(() => 0.03), yaxis: o.noneAxis === null ? undefined : "y9",
        type: "scatter", mode: "markers", name: name + " · no estimate", showlegend: legend && o.noneAxis !== null,
        legendgroup: o.group, meta: o.noneAxis === null ? "llc-none-data" : "llc-none", cliponaxis: false,
        marker: { symbol: "x", size: 9, color: BAD }, customdata: llcCustom(p, p.none),
        hovertemplate: "step %{x}: <b>no estimate</b><br>%{customdata[1]}%{customdata[4]}<br><i>click for traces</i><extra>" + escapeHtml(name) + "</extra>" });
      out[out.length - 1].customdata.forEach((c) => { if (c[4]) c[4] = "<br>(surviving chains alone: " + c[4] + ", not used)"; });
    }
    return out;
  }

  /** Fit ``axis`` (a layout y-axis) to the ok estimates of ``parts`` (mean ± std, padded);
   *  flagged markers of ``traces`` outside it sit on its edge as open triangles (their
   *  value stays in the hover), and "no estimate" markers drawn on this axis sit at its
   *  bottom. ``yref``: which traces' axis to adjust (null: every trace). No ok estimate:
   *  the axis autoranges. */
  function fitOkRange(axis, parts, traces, yref) {
    let lo = Infinity, hi = -Infinity;
    parts.forEach((p) => p.ok.forEach((i) => {
      const m = p.s.mean[i], sd = p.s.std[i] || 0;
      lo = Math.min(lo, m - sd); hi = Math.max(hi, m + sd);
    }));
    const mine = traces.filter((t) => yref === null || (t.yaxis || "y") === yref);
    if (!(hi >= lo)) return;
    const pad = Math.max((hi - lo) * 0.08, Math.abs(hi) * 0.02, 1e-9);
    lo -= pad; hi += pad;
    axis.range = [lo, hi];
    axis.autorange = false;
    mine.forEach((t) => {
      if (t.meta === "llc-flagged") {
        const above = t.y.map((v) => v > hi), below = t.y.map((v) => v < lo);
        t.marker = Object.assign({}, t.marker, { symbol: t.y.map((v, k) => (above[k] ? "triangle-up-open" : below[k] ? "triangle-down-open" : "circle-open")) });
        t.y = t.y.map((v) => Math.min(Math.max(v, lo), hi));
      }
      if (t.meta === "llc-none-data") t.y = t.y.map(() => lo + (hi - lo) * 0.03);
    });
  }

  function bandTrace(s, color, name) {
    // Points without a finite mean (every chain diverged) are gaps, not zeros.
    const keep = s.mean.map((m, i) => i).filter((i) => s.mean[i] !== null && s.mean[i] !== undefined);
    s = { step: keep.map((i) => s.step[i]), mean: keep.map((i) => s.mean[i]), std: keep.map((i) => s.std[i]) };
    const up = s.mean.map((m, i) => m + (s.std[i] || 0));
    const lo = s.mean.map((m, i) => m - (s.std[i] || 0));
    return { x: s.step.concat(s.step.slice().reverse()), y: up.concat(lo.reverse()), type: "scatter",
      mode: "lines", fill: "toself", fillcolor: hexToRgba(color, 0.18), line: { width: 0, color },
      name, hoverinfo: "skip", showlegend: true };
  }
  function button(text, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "btn small";
    b.textContent = text;
    b.addEventListener("click", onClick);
    return b;
  }

  // ------------------------------------------------------------------ runs table (tracker)
  // Columns picker (?cols=a,b in the URL) and the parallel-coordinates view of the shown
  // (or checked) runs. Kept together so other edits of this file do not collide.

  function initRunsColumns() {
    const picker = $("#columns-picker");
    const hidden = $("#cols");
    if (!picker || !hidden) return;
    picker.addEventListener("change", (e) => {
      if (!e.target.matches("[data-col]")) return;
      e.stopPropagation();
      hidden.value = $$("[data-col]:checked", picker).map((el) => el.value).join(",");
      hidden.dispatchEvent(new Event("change", { bubbles: true }));
    });
  }

  function parcoordsDims(columns, runs) {
    return columns.map((col, i) => {
      const vals = runs.map((r) => r.values[i]);
      const numeric = vals.every((v) => v === null || typeof v === "number");
      if (numeric) {
        const present = vals.filter((v) => v !== null);
        const lo = present.length ? Math.min(...present) : 0;
        // A missing value sits just below the axis range instead of faking a number.
        const hi = present.length ? Math.max(...present) : 1;
        if (lo > 0 && hi / lo >= 100) { // learning rates and friends: a log10 axis reads better
          return { label: "log10 " + col, values: vals.map((v) => (v === null ? NaN : Math.log10(v))),
            range: [Math.log10(lo), Math.log10(hi)] };
        }
        return { label: col, values: vals.map((v) => (v === null ? NaN : v)), range: present.length ? [lo, hi] : [0, 1] };
      }
      const cats = Array.from(new Set(vals.map((v) => (v === null ? "–" : String(v))))).sort();
      return {
        label: col,
        values: vals.map((v) => cats.indexOf(v === null ? "–" : String(v))),
        tickvals: cats.map((_, k) => k),
        ticktext: cats,
      };
    });
  }

  function showParcoords() {
    const dataEl = $("#runs-data");
    const target = $("#parcoords");
    if (!dataEl || !target || !window.Plotly) return;
    const data = JSON.parse(dataEl.textContent);
    const checked = new Set($$("#runs-table input[name=pick]:checked").map((el) => Number(el.value)));
    const runs = checked.size ? data.runs.filter((r) => checked.has(r.id)) : data.runs;
    if (!data.columns.length || !runs.length) { toast("Pick columns (config or summary) first"); return; }
    target.hidden = false;
    const last = runs.map((r) => r.values[data.columns.length - 1]);
    const colorOk = last.every((v) => typeof v === "number");
    const line = colorOk
      ? { color: last, colorscale: "Viridis", showscale: true, colorbar: { thickness: 12, x: 1.02, xpad: 0, len: 0.9 } }
      : { color: "#1f77b4" };
    window.Plotly.react(target, [{ type: "parcoords", line, dimensions: parcoordsDims(data.columns, runs) }],
      { margin: { l: 50, r: 90, t: 56, b: 24 }, font: { size: 11 } },
      { responsive: true, displaylogo: false });
    target.dataset.runs = String(runs.length);
    target.scrollIntoView({ block: "nearest" });
  }

  function initParcoords() {
    document.addEventListener("click", (e) => {
      if (e.target.closest && e.target.closest("#parcoords-btn")) showParcoords();
    });
  }

  // ------------------------------------------------------------------ page wiring

  function initTokenForm() {
    const form = $("#token-form");
    if (!form) return;
    const input = $("#token-input");
    input.value = token();
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      try { localStorage.setItem("pb-token", input.value.trim()); } catch (err) { /* private mode */ }
      toast(input.value.trim() ? "Token saved in this browser" : "Token cleared");
    });
  }

  /** "Compare selected" on the runs list and the compare picker: send ?runs=1,2,3. */
  function initCompareForms() {
    document.addEventListener("submit", (e) => {
      const form = e.target;
      if (form.id === "plot-controls") { e.preventDefault(); return; } // live controls
      if (!form.matches("[data-compare-form], #compare-pick")) return;
      e.preventDefault();
      const ids = $$("input[type=checkbox]:checked", form).map((el) => el.value);
      if (!ids.length) { toast("Pick at least one run"); return; }
      location.href = "/compare?runs=" + ids.join(",");
    });
  }

  window.Phaseboard = { emaSmooth, Plots, State, api, toast, refreshPartial, errorText, authHeaders, shownBoundary };

  document.addEventListener("DOMContentLoaded", () => {
    initTokenForm();
    initCompareForms();
    initRunsColumns();
    initParcoords();
    const root = $("#plots");
    if (root && window.Plotly) {
      Plots.init(root);
      Plots.bindPhaseForm();
    }
  });
})();

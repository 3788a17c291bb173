/* The run page's lens section: one read of /api/runs/{id}/lenses, handed to every lens view.
 *
 * Each lens the registry places in the section (server/lenses: Lens.view) has a partial that
 * loads its own script, and that script registers a drawer:
 *   PhaseboardLenses.register("essential_dynamics", { draw(ctx) { ... } });
 * ctx = { runId, data (the whole API answer), result (data[name]), state (the lens's state on
 * the run: {state, message, ...}), boundaries (the shown ones), section }. This file re-reads
 * every 15 s while the tab is visible and redraws only on change. Pages never compute: PCA,
 * turning points and boundaries come from the jobs. It also holds the shared helpers and the
 * compare page's learning-order agreement table.
 */
(function () {
  "use strict";

  const $ = (sel, root) => (root || document).querySelector(sel);
  const SOURCE_COLORS = { llc: "#d62728", loss: "#1f77b4", essential_dynamics: "#2ca02c",
    progress: "#ff7f0e", manual: "#7c3aed", influence: "#0d9488", susceptibilities: "#a16207" };
  const views = {};

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

  /** Empty plot frames say nothing: a lens without a result shows only its status line. */
  function showCards(ids, visible) {
    ids.forEach((id) => {
      const card = document.getElementById(id);
      if (card) card.hidden = !visible;
    });
  }

  /** ``text`` ending in a full stop; capitalised when it starts a sentence. */
  function sentence(text, start) {
    const s = String(text || "").trim();
    if (!s) return "";
    return (start ? s.charAt(0).toUpperCase() + s.slice(1) : s) + (/[.!?)]$/.test(s) ? "" : ".");
  }

  /** What to say for a lens without a result, from its state on the run (``idle``: the
   * view's own ``empty`` text). */
  function stateText(state, empty) {
    const st = state && state.state;
    const msg = state && state.message;
    if (st === "waiting") return sentence(msg, true) + " It runs on its own once the run has enough checkpoints.";
    if (st === "not_applicable") return "Does not apply to this run's task: " + sentence(msg);
    if (st === "queued" || st === "running") return "Computing…" + (msg ? " (" + msg + ")" : "");
    if (st === "failed") return "Failed: " + sentence(msg);
    return empty;
  }

  /** Set a lens's status line; its state (waiting, not applicable, ...) as a data attribute. */
  function setStatus(el, text, state) {
    if (!el) return;
    el.textContent = text;
    el.dataset.state = (state && state.state) || "idle";
  }

  function register(name, view) { views[name] = view; }

  const BOUNDARY_SOURCES = [["", "all sources"], ["agreed", "sources agree"], ["llc", "LLC critical points"],
    ["loss", "loss change points"], ["essential_dynamics", "essential-dynamics turns"], ["progress", "progress-measure jumps"],
    ["influence", "influence sign changes"], ["susceptibilities", "susceptibility sign changes"]];

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

  /** A fingerprint of what the views draw: results, states, boundaries, progress. */
  function fingerprint(data) {
    const ids = Object.keys(views).sort().map((k) => [k, data[k] && data[k].result_id]);
    return JSON.stringify([ids, data.states, data.boundaries, data.progress]);
  }

  async function load(section, last) {
    const runId = section.dataset.run;
    let data;
    try {
      const resp = await fetch("/api/runs/" + runId + "/lenses", { headers: { Accept: "application/json" } });
      if (!resp.ok) throw new Error(resp.status + " " + resp.statusText);
      data = await resp.json();
    } catch (e) {
      section.querySelectorAll(".lens-status").forEach((el) => { el.textContent = "Could not load the lenses: " + e.message; });
      return last;
    }
    const key = fingerprint(data);
    if (key === last) return last;
    section.lensData = data;
    drawLenses(section, data);
    return key;
  }

  function drawLenses(section, data) {
    const runId = section.dataset.run;
    const bs = shown(data.boundaries || []);
    const states = data.states || {};
    Object.keys(views).forEach((name) => {
      try {
        views[name].draw({ runId, data, result: data[name], state: states[name], boundaries: bs, section });
      } catch (e) {
        console.error("lens view " + name, e);
      }
    });
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
    const redraw = () => { if (section.lensData) drawLenses(section, section.lensData); };
    addSourceFilter(redraw);
    let narrow = window.innerWidth < 700; // views may lay out differently on a phone
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

  window.PhaseboardLenses = { register, fmt, escapeHtml, sourceColor, showCards, stateText, setStatus, SOURCE_COLORS };

  // Deferred scripts run in document order before DOMContentLoaded: this one (in the page's
  // head) first, then app.js and the lens views' scripts (in the body). Start after
  // app.js's own DOMContentLoaded work, so window.Phaseboard exists, its view state (the URL
  // or the share's query) is loaded, and every view has registered.
  if (document.readyState === "complete") start();
  else document.addEventListener("DOMContentLoaded", () => setTimeout(start, 0));
})();

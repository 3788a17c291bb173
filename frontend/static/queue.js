/* "Queue analyses" on the run page (frontend/templates/_queue.html): the lenses to queue
 * (GET /api/lenses; the automatic ones ticked), LLC settings over the run's own (its current
 * ones as placeholders, from the plot data's settings list), restrictions; posts
 * POST /api/runs/{id}/analyses and says what was queued, what waits and what does not apply.
 * The jobs panel picks the new jobs up on its own refresh.
 */
(function () {
  "use strict";

  const $ = (sel) => document.querySelector(sel);
  const PB = () => window.Phaseboard;
  const NUMBERS = ["lr", "localization", "num_chains", "num_draws", "num_burnin_steps", "batch_size"];
  const INTEGERS = new Set(["num_chains", "num_draws", "num_burnin_steps", "batch_size"]);

  function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  async function fillLenses(box) {
    const data = await PB().api("GET", "/api/lenses");
    box.textContent = "";
    data.lenses.forEach((lens) => {
      const label = document.createElement("label");
      label.className = "chip";
      label.title = lens.description || lens.title;
      const input = document.createElement("input");
      input.type = "checkbox";
      input.name = "lens";
      input.value = lens.name;
      input.checked = lens.auto;
      label.append(input, " " + lens.title);
      box.append(label);
    });
  }

  async function fillCurrent(runId) {
    // The run's current settings (its own over the defaults for its task), as the plots'
    // series list names them.
    const plots = await PB().api("GET", "/api/runs/" + runId + "/plotdata?max_points=10");
    const run = await PB().api("GET", "/api/runs/" + runId);
    const own = ((run.analysis_config || {}).llc) || {};
    const shown = (plots.llc_settings || []).find((x) => x.current) || {};
    const current = Object.assign({}, shown.config || {}, own);
    NUMBERS.forEach((key) => {
      const el = $("#q-" + key);
      if (el && current[key] !== undefined && current[key] !== null) el.placeholder = String(current[key]);
    });
    const parts = ["lr", "localization"].filter((k) => current[k] !== undefined && current[k] !== null)
      .map((k) => k + " " + current[k]);
    const record = (run.analysis_config || {}).llc_calibration;
    const note = $("#queue-llc-current");
    if (own.lr === undefined && own.localization === undefined && !record) note.textContent = "(to be calibrated)";
    else note.textContent = parts.length ? "(now: " + parts.join(", ") + calibrationNote(record) + ")" : "";
  }

  /** How the calibration chose the current settings: a recommendation, its fallback when no
   *  setting was ok everywhere, or nothing it could use (the defaults). */
  function calibrationNote(record) {
    if (!record) return "";
    if (!record.recommended) return ", defaults: the calibration found no usable setting";
    if (record.fallback) return ", the calibration's fallback: no setting was ok everywhere";
    return ", calibrated";
  }

  /** The request body from the form; throws with a message for a bad value. */
  function body(form) {
    const lenses = Array.from(form.querySelectorAll("input[name=lens]:checked")).map((el) => el.value);
    if (!lenses.length) throw new Error("tick at least one lens");
    const out = { lenses };
    const llc = {};
    NUMBERS.forEach((key) => {
      const raw = ($("#q-" + key).value || "").trim();
      if (!raw) return;
      const v = Number(raw);
      if (!Number.isFinite(v) || v < 0 || (INTEGERS.has(key) && !Number.isInteger(v))) {
        throw new Error(key + ": " + (INTEGERS.has(key) ? "a whole number" : "a number") + " >= 0, not " + JSON.stringify(raw));
      }
      llc[key] = v;
    });
    if (Object.keys(llc).length) out.llc = llc;
    const restrictions = ($("#q-restrictions").value || "").split(",").map((s) => s.trim()).filter(Boolean);
    if (restrictions.length) out.restrictions = restrictions;
    return out;
  }

  function summary(res) {
    const parts = [res.queued + " job(s) queued"];
    const waiting = Object.entries(res.waiting || {});
    if (waiting.length) parts.push("waiting: " + waiting.map(([k, v]) => k + " (" + v + ")").join(", "));
    const na = Object.entries(res.not_applicable || {});
    if (na.length) parts.push("not applicable: " + na.map(([k, v]) => k + " (" + v + ")").join(", "));
    return parts.join("; ");
  }

  function init() {
    const section = $("#queue");
    const form = $("#queue-form");
    if (!section || !form || !PB()) return;
    const runId = section.dataset.run;
    const box = $("#queue-lens-list");
    const error = $("#queue-error");
    fillLenses(box).catch((err) => { box.innerHTML = '<span class="error">Could not list lenses: ' + esc(err.message) + "</span>"; });
    fillCurrent(runId).catch(() => {});
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      error.textContent = "";
      let request;
      try { request = body(form); } catch (err) { error.textContent = err.message; return; }
      const button = $("#queue-submit");
      button.disabled = true;
      try {
        const res = await PB().api("POST", "/api/runs/" + runId + "/analyses", request);
        const text = summary(res);
        $("#queue-result").textContent = text;
        section.dataset.queued = String(res.queued);
        PB().toast(text);
        PB().refreshPartial("jobs");
      } catch (err) {
        error.textContent = err.message;
      } finally {
        button.disabled = false;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", init);
})();

/* The influence lens view (server/lenses/influence.py; loaded by its partial, driven by
 * lenses.js): for the test example and checkpoint the controls pick, its most helpful and
 * most competing training examples, and how their influence moves over training. The view
 * state (iprobe, istep) lives in the URL, so a share link reproduces it. Pages never
 * compute: influences, rankings and standard errors come from the job. */
(function () {
  "use strict";

  const L = window.PhaseboardLenses;
  const P = () => window.Phaseboard;
  const REDS = ["#7f1d1d", "#b91c1c", "#dc2626", "#ef4444", "#f87171", "#fca5a5"];
  const BLUES = ["#1e3a8a", "#1d4ed8", "#2563eb", "#3b82f6", "#60a5fa", "#93c5fd"];
  let last = null;
  const cache = {};

  function state(key) { return P() && P().State ? P().State.get(key) : undefined; }
  function setState(changes) { if (P() && P().State) P().State.set(changes); }

  function stepIndex(inf) {
    const i = inf.steps.indexOf(parseInt(state("istep"), 10));
    return i >= 0 ? i : inf.steps.length - 1;
  }

  function probeIndex(inf) {
    const i = parseInt(state("iprobe"), 10);
    return i >= 0 && i < inf.probe_texts.length ? i : 0;
  }

  const A = () => window.PhaseboardStepAxis;

  /** Table rows; each bar has its line's colour in the plot below, to tell the lines apart. */
  function rows(list, colors) {
    if (!list.length) return '<tr><td colspan="2" class="muted">No finite influences at this checkpoint.</td></tr>';
    return list.map((e, i) => {
      const v = e.influence;
      const w = Math.round(Math.min(1, Math.abs(v)) * 60);
      const noise = e.se !== null && Math.abs(v) < 2 * e.se; // within two standard errors of 0
      return "<tr" + (noise ? ' class="within-noise" title="within two standard errors of zero"' : "") + "><td>" + L.escapeHtml(e.text) +
        '</td><td class="num"><span class="bar" style="width:' + w + 'px;background:' + colors[i % colors.length] + '"></span>' +
        L.fmt(v) + (e.se !== null ? ' <span class="se">± ' + L.fmt(e.se) + "</span>" : "") + "</td></tr>";
    }).join("");
  }

  function drawSeries(inf, got, ctx) {
    const el = document.getElementById("plot-inf-series");
    if (!el || !window.Plotly) return;
    const x = A().xOf(inf.steps);
    const k = stepIndex(inf);
    const traces = [];
    const add = (list, colors, kind) => list.forEach((e, i) => {
      const s = got.series[String(e.train)];
      if (!s) return;
      traces.push({ x, y: s.influence, mode: "lines+markers", marker: { size: 4 }, line: { color: colors[i % colors.length], width: 1.4 },
        name: kind + " " + (i + 1) + ": " + e.text.slice(0, 40), customdata: inf.steps.map((st, j) => [st, s.se[j] === null ? "–" : L.fmt(s.se[j])]),
        hovertemplate: L.escapeHtml(e.text.slice(0, 60)) + "<br>step %{customdata[0]}: %{y:.3g} ± %{customdata[1]}<extra></extra>" });
    });
    add(got.most, REDS, "helps");
    add(got.least, BLUES, "least helpful");
    const shapes = A().boundaryShapes(inf.steps, ctx.boundaries, L.sourceColor);
    const marks = A().boundaryHover(inf.steps, ctx.boundaries, L.sourceColor, L.escapeHtml, 1.0);
    if (marks) traces.push(marks);
    shapes.push({ type: "line", xref: "paper", yref: "y", x0: 0, x1: 1, y0: 0, y1: 0, line: { color: "#9ca3af", width: 1 } });
    shapes.push({ type: "line", xref: "x", yref: "paper", x0: x[k], x1: x[k], y0: 0, y1: 1, line: { color: "#2563eb", width: 2 } });
    const narrow = window.innerWidth < 700;
    Plotly.react(el, traces, { margin: { l: 55, r: 10, t: 10, b: 45 }, shapes, showlegend: !narrow,
      legend: { font: { size: 10 }, orientation: "h", x: 0, y: -0.22, yanchor: "top" },
      xaxis: A().stepAxis(inf.steps),
      yaxis: { title: { text: "influence (correlation)" }, range: [-1.05, 1.05], zeroline: false } },
    { responsive: true, displaylogo: false });
  }

  async function drawProbe(ctx) {
    const inf = ctx.result;
    const i = probeIndex(inf), k = stepIndex(inf);
    const step = inf.steps[k];
    const key = ctx.runId + ":" + inf.result_id + ":" + i + ":" + step;
    let got = cache[key];
    if (!got) {
      const resp = await fetch("/api/runs/" + ctx.runId + "/influence/probe/" + i + "?step=" + step, { headers: { Accept: "application/json" } });
      if (!resp.ok) {
        L.setStatus(document.getElementById("inf-status"), "Could not load the influences: " + resp.status, ctx.state);
        return;
      }
      got = cache[key] = await resp.json();
    }
    if (probeIndex(inf) !== i || stepIndex(inf) !== k) return; // the controls moved on meanwhile
    document.querySelector("#inf-most tbody").innerHTML = rows(got.most, REDS);
    document.querySelector("#inf-least tbody").innerHTML = rows(got.least, BLUES);
    document.getElementById("inf-lists").hidden = false;
    document.getElementById("card-inf-series").hidden = false;
    drawSeries(inf, got, ctx);
    const flips = (inf.turning_points || []).length;
    const warn = document.getElementById("inf-verdict");
    warn.hidden = !got.verdict || got.verdict === "ok";
    warn.textContent = warn.hidden ? "" : "The SGLD run behind this checkpoint's influences has the verdict “" + got.verdict +
      "” (see its LLC diagnostics): read these influences with care, or recalibrate the LLC settings.";
    L.setStatus(document.getElementById("inf-status"), "Influence of " + inf.train_texts.length + " training examples on " + inf.probe_texts.length +
      " " + inf.probe_split + " examples at " + inf.steps.length + " checkpoints. At step " + step + " the same SGLD run's LLC is " +
      L.fmt((inf.llc[k] || [])[0]) + " (sampler verdict: " + (got.verdict || "–") + "). " +
      (flips ? flips + " sign-change boundar" + (flips === 1 ? "y" : "ies") + " (source: influence)." : "No interval where many influences change sign."), ctx.state);
  }

  function bind(inf) {
    const select = document.getElementById("inf-probe");
    const options = inf.probe_texts.map((t, i) => '<option value="' + i + '">' + i + ": " + L.escapeHtml(t.slice(0, 80)) + "</option>").join("");
    if (select.dataset.options !== options) { select.innerHTML = options; select.dataset.options = options; }
    select.value = String(probeIndex(inf));
    const slider = document.getElementById("inf-step");
    slider.max = String(inf.steps.length - 1);
    if (!select.dataset.bound) {
      select.dataset.bound = "1";
      select.addEventListener("change", () => { setState({ iprobe: select.value }); if (last) draw(last); });
      slider.addEventListener("input", () => {
        const r = last && last.result;
        if (!r) return;
        setState({ istep: r.steps[parseInt(slider.value, 10)] });
        draw(last);
      });
    }
  }

  function draw(ctx) {
    last = ctx;
    const inf = ctx.result;
    const status = document.getElementById("inf-status");
    const has = Boolean(inf && inf.steps && inf.steps.length && inf.probe_texts);
    document.getElementById("inf-controls").hidden = !has;
    if (!has) {
      document.getElementById("inf-lists").hidden = true;
      document.getElementById("card-inf-series").hidden = true;
      L.setStatus(status, L.stateText(ctx.state, "No influences yet: ask for the lens (POST /api/runs/{id}/analyses {\"lenses\": [\"influence\"]})."), ctx.state);
      return;
    }
    bind(inf);
    const k = stepIndex(inf);
    const slider = document.getElementById("inf-step");
    slider.value = String(k);
    slider.setAttribute("aria-valuetext", "step " + inf.steps[k]);
    document.getElementById("inf-step-label").textContent = "step " + inf.steps[k] + " (" + (k + 1) + " of " + inf.steps.length + ")";
    drawProbe(ctx);
  }

  L.register("influence", { draw });
})();

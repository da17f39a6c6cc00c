/* interp view: the explorer page. Data: the JSON block #view-data (written by
   interp/view/page.py); plotting: plotly.js, inlined beside this script. This script holds the core
   (data, slider, plot pieces, curves, headline, tabs); the Heads, Circuit, Tokens and Stages tabs and
   the shared state (link, provenance, Runs tab) are in heads.js, circuit.js, tokens.js, stages.js and
   share.js, loaded before it. */
(function () {
  "use strict";

  const started = performance.now();
  const D = JSON.parse(document.getElementById("view-data").textContent);
  const $ = (id) => document.getElementById(id);
  // No share-to-cloud button and no server to send a chart to: the page is offline and its data unpublished.
  const CONFIG = { displaylogo: false, responsive: true, showSendToCloud: false, showEditInChartStudio: false,
                   plotlyServerURL: "",
                   modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d", "toggleSpikelines", "sendChartToCloud",
                                            "sendDataToCloud", "editInChartStudio"] };
  const COLOR = { a: "#d62728", b: "#1f77b4", pos: "#1f77b4", neg: "#d62728", up: "#2ca02c", down: "#9467bd",
                  mark: "#7a4fc4", grey: "#8a94a3" };
  const ATTENTION_SCALE = [[0, "#ffffff"], [0.05, "#eef4fb"], [0.3, "#9ecae1"], [0.6, "#3182bd"], [1, "#08306b"]];
  const FONT = { family: "system-ui, -apple-system, Segoe UI, Roboto, DejaVu Sans, sans-serif", size: 12 };
  const S = { run: null, a: 0, b: 0, compare: false, diff: false, tab: "headline", logx: false, cut: 10,
              probe: {}, head: {}, circuit: {}, groups: {}, frame: 0, headlineHead: null, picked: {} };
  Object.assign(S, { quantity: null, band: "minmax", shown: null, runsProbe: null, provenanceWith: "" });
  const API = { data: D, state: S, ready: false, readyAt: null, scriptAt: started, errors: [] };
  window.interpView = API;
  window.addEventListener("error", (e) => API.errors.push(String(e.message)));

  // --- numbers and lookups -------------------------------------------------------------------

  const F16 = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
    F16[h] = e === 0 ? sign * f * Math.pow(2, -24)
      : e === 31 ? (f ? NaN : sign * Infinity) : sign * Math.pow(2, e - 15) * (1 + f / 1024);
  }

  function fmt(v, digits) {
    if (v === null || v === undefined) return "n/a";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    return Number(v.toPrecision(digits || 4)).toString();
  }

  function esc(text) {
    return String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  }

  // plotly reads every string it draws (titles, tick labels, legend names, hover text, annotations) as
  // its own pseudo-HTML (<a href>, <span style>, <br>, ...) and decodes only a few entities, among them
  // &amp; &lt; &gt;. Escaping those three makes a token like "<s>" or a name like "<a href=...>" show
  // literally. Hover templates are the page's own markup and are left as written.
  const PLOTLY_MARKUP = new Set(["hovertemplate", "texttemplate"]);
  function plotlyText(value) {
    if (typeof value === "string") return value.replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" })[c]);
    if (Array.isArray(value)) return value.map(plotlyText);
    if (value && typeof value === "object" && !ArrayBuffer.isView(value)) {
      const out = {};
      for (const [k, v] of Object.entries(value)) out[k] = PLOTLY_MARKUP.has(k) ? v : plotlyText(v);
      return out;
    }
    return value;
  }

  /** Index of the value of `steps` nearest `step` (the earlier on a tie); -1 for none. */
  function nearest(steps, step) {
    let best = -1, gap = Infinity;
    for (let i = 0; i < steps.length; i++) {
      const g = Math.abs(steps[i] - step);
      if (g < gap) { gap = g; best = i; }
    }
    return best;
  }

  const HEAD_NAME = /^L(\d+)H(\d+)$/;  // a head's name, L<layer>H<head>

  const runsByName = new Map(D.runs.map((r) => [r.name, r]));
  const run = () => runsByName.get(S.run);
  const stepOf = (which) => run().steps[which === "b" ? S.b : S.a];
  const sides = () => (S.compare ? ["a", "b"] : ["a"]);

  // --- attention patterns: float16 lower triangles, decoded on demand ---------------------------

  const decoded = new Map();
  function patternStep(r, i) {
    const key = r.name + "#" + i;
    if (!decoded.has(key)) {
      const bin = atob(r.patterns.data[i]);
      const out = new Float32Array(bin.length / 2);
      for (let j = 0; j < out.length; j++) out[j] = F16[bin.charCodeAt(2 * j) | (bin.charCodeAt(2 * j + 1) << 8)];
      decoded.set(key, out);
    }
    return decoded.get(key);
  }

  /** The T x T attention of one head at pattern index `i` (null above the diagonal). */
  function headPattern(r, i, layer, head) {
    const [, H, T] = r.patterns.shape;
    const tri = (T * (T + 1)) / 2;
    const values = patternStep(r, i);
    let p = (layer * H + head) * tri;
    const z = [];
    for (let q = 0; q < T; q++) {
      const row = new Array(T).fill(null);
      for (let k = 0; k <= q; k++) row[k] = values[p++];
      z.push(row);
    }
    return z;
  }

  const hoverText = new Map();
  function patternHover(r) {
    if (!hoverText.has(r.name)) {
      const labels = r.example.labels, T = labels.length, text = [];
      for (let q = 0; q < T; q++) {
        const row = [];
        for (let k = 0; k < T; k++) row.push(`query ${q} '${labels[q]}' \u2192 key ${k} '${labels[k]}'`);
        text.push(row);
      }
      hoverText.set(r.name, text);
    }
    return hoverText.get(r.name);
  }

  // --- the slider ----------------------------------------------------------------------------

  function stepLabel(which) {
    const r = run(), i = which === "b" ? S.b : S.a, step = r.steps[i];
    const mark = r.marks.find((m) => m.step === step);
    return `step ${step} (checkpoint ${i + 1} of ${r.steps.length})` + (mark ? ` - ${mark.label}` : "");
  }

  function drawMarks(which) {
    const r = run(), box = $("marks-" + which);
    box.innerHTML = "";
    const n = r.steps.length;
    for (const m of r.marks) {
      let pos = 0;  // the fractional checkpoint index of the mark's step (checkpoints are not evenly spaced)
      const j = r.steps.findIndex((s) => s >= m.step);
      if (j < 0) pos = n - 1;
      else if (j === 0 || r.steps[j] === m.step) pos = j;
      else pos = j - 1 + (m.step - r.steps[j - 1]) / (r.steps[j] - r.steps[j - 1]);
      const frac = n > 1 ? pos / (n - 1) : 0;
      const tick = document.createElement("div");
      tick.className = "mark";
      tick.style.left = `calc(${frac} * (100% - var(--thumb)) + var(--thumb) / 2)`;
      tick.title = `${m.label} (step ${m.step})`;
      tick.addEventListener("click", () => setStep(which, nearest(r.steps, m.step)));
      box.appendChild(tick);
    }
  }

  function setStep(which, index) {
    const r = run();
    index = Math.max(0, Math.min(r.steps.length - 1, index));
    if (which === "b") S.b = index; else S.a = index;
    $("slider-" + which).value = String(index);
    $("step-" + which).textContent = stepLabel(which);
    renderTab(false);
  }

  function setRun(name) {
    S.run = name;
    const r = run();
    for (const which of ["a", "b"]) {
      const slider = $("slider-" + which);
      slider.max = String(r.steps.length - 1);
      drawMarks(which);
    }
    S.a = 0;
    S.b = r.steps.length - 1;
    $("slider-a").value = "0";
    $("slider-b").value = String(S.b);
    $("step-a").textContent = stepLabel("a");
    $("step-b").textContent = stepLabel("b");
    $("run-select").value = name;
    const model = r.model;
    $("run-status").textContent = `${model.n_layers} layers x ${model.n_heads} heads, d_model ${model.d_model}` +
      `${model.attn_only ? ", attention only" : ""}; ${r.steps.length} checkpoints; ${r.status}`;
    showStagesTab(r);
    fillProbeSelect();
    fillCircuitSelect();
    buildGroupChips();
    renderProvenance();
    renderTab(true);
  }

  /** The Stages tab only for a run with an LLC cache (another run's fragment may name it: the headline instead). */
  function showStagesTab(r) {
    const button = document.querySelector('nav button[data-tab="stages"]');
    if (button) button.hidden = !r.stages;
    if (!r.stages && S.tab === "stages") S.tab = "headline";
  }

  // --- shared plot pieces --------------------------------------------------------------------

  /** Vertical lines at the phase marks and the selected step(s) of `runName` (none for another run).
      On a log axis, step 0 is drawn where `logZero` puts it (log axes have no 0). */
  function cursorShapes(runName, log) {
    const shapes = [];
    if (runName !== S.run) return shapes;
    const at = (s) => (log && s <= 0 ? logZero([run().steps]).at : s);
    for (const m of run().marks) {
      shapes.push({ type: "line", xref: "x", yref: "paper", x0: at(m.step), x1: at(m.step), y0: 0, y1: 1,
                    line: { color: COLOR.mark, width: 1, dash: "dot" } });
    }
    for (const which of sides()) {
      const step = at(stepOf(which));
      shapes.push({ type: "line", xref: "x", yref: "paper", x0: step, x1: step, y0: 0, y1: 1,
                    line: { color: COLOR[which], width: 2, dash: which === "b" ? "dash" : "solid" } });
    }
    return shapes;
  }

  function lineLayout(title, extra) {
    return Object.assign({
      title: { text: title, font: { size: 13 }, x: 0.01, xanchor: "left" }, font: FONT, height: 320,
      margin: { l: 52, r: 20, t: 34, b: 40 },
      xaxis: { title: { text: "step" }, type: S.logx ? "log" : "linear", zeroline: false, autorange: true },
      yaxis: { zeroline: false, autorange: true }, legend: { font: { size: 11 } }, hovermode: "x unified",
    }, extra || {});
  }

  /** A message in place of `container`'s other children (hidden, never removed: a plot that is
      purged while plotly still has a redraw queued for it throws), or none when `text` is empty. */
  function note(container, text) {
    let msg = [...container.children].find((c) => c.classList.contains("empty"));
    if (!msg) {
      msg = document.createElement("div");
      msg.className = "empty";
      container.prepend(msg);
    }
    msg.textContent = text || "";
    msg.hidden = !text;
    for (const child of container.children) if (child !== msg) child.hidden = !!text;
  }

  function plotDiv(parent, id, cls) {
    let el = $(id);
    if (!el) {
      el = document.createElement("div");
      el.id = id;
      el.className = cls || "plot";
      parent.appendChild(el);
    }
    return el;
  }

  const pending = [];  // the first render's plots, awaited before the page reports itself ready
  let revision = 0;
  const inflight = new Set();  // draws not finished yet (API.settled waits for them)
  function draw(el, data, layout) {
    // A new datarevision makes react recompute everything: with trace arrays it has seen before
    // and a layout without ranges, it would otherwise skip the autorange (an empty default view).
    layout.datarevision = ++revision;
    // The box has the plot's height, so that plotly's autosize (on a resize) measures that height
    // and not the height of its own content.
    if (layout.height) el.style.height = layout.height + "px";
    // react keeps a plot's earlier width; a box that changed size since (panels shown or hidden
    // beside it) needs a resize.
    const done = Plotly.react(el, plotlyText(data), plotlyText(layout), CONFIG).then(() => {
      const width = el.clientWidth;
      if (width && el._fullLayout && Math.abs(el._fullLayout.width - width) > 1) return Plotly.Plots.resize(el);
      return undefined;
    });
    scheduleFragment();
    if (!API.ready) pending.push(done);
    inflight.add(done);
    done.finally(() => inflight.delete(done));
    return done;
  }

  // --- faithful axes: one quantity per axis, constants, step 0 on a log axis, stale values ------

  // Each curve's quantity, from its name: a plot draws one quantity, and its y axis says which
  // (with the unit where there is one). The first pattern that matches wins: "cross-entropy loss"
  // is a loss, "attention entropy" an entropy.
  const QUANTITIES = [
    { kind: "lr", title: "learning rate", test: /(^|[/_.\s])lr$|learning.?rate/i },
    { kind: "loss", title: "loss (nats)", test: /loss|nll|xent|cross.?entropy/i },
    { kind: "entropy", title: "entropy (nats)", test: /entropy/i },
    { kind: "r2", title: "R² (1: a perfect fit)", test: /(^|[/_.\s])r2$|r²/i },
    { kind: "selectivity", title: "selectivity (score minus control score)", test: /selectivity/i },
    // few-shot accuracies are logged as <task>/closed (over the context's labels) and <task>/full (over the vocabulary)
    { kind: "accuracy", title: "accuracy (fraction, 0-1)", test: /acc(uracy)?($|[/_.\s])|chance|correct|(^|\/)(closed|full)$/i },
    { kind: "probability", title: "probability (0-1)", test: /prob|mass|fraction/i },
    { kind: "norm", title: "norm", test: /norm/i },
    { kind: "penalty", title: "regularisation strength", test: /^C$|(^|[/_.\s])(alpha|l2_strength|weight_decay)$/ },
    { kind: "count", title: "count", test: /^(n|num)_|^k$|(^|[/_.\s])(count|epoch|seed|tokens)$/i },
  ];

  /** The quantity of curve `name` (of probe `probe` where it is a probe column; in Curves group
      `group`): {kind, title}. A name that says nothing of its quantity is taken as the group's
      (a probe's columns, or the metrics logged under one prefix, e.g. docs/doc0, docs/doc1). */
  function quantityOf(name, probe, group) {
    if (probe && /^L\d+H\d+$/.test(name)) return { kind: "probe " + probe, title: `${probe} (per head)` };
    const found = QUANTITIES.find((q) => q.test.test(name));
    if (found) return { kind: found.kind, title: found.title };
    if (probe) return { kind: "probe " + probe, title: `${probe} value` };
    return { kind: "value " + (group || name), title: group ? `${group} (as logged)` : name };
  }

  /** A Curves group split by quantity: one panel per quantity, titled with the group and the quantity. */
  function curvePanels(group, traces) {
    const byKind = new Map();
    for (const t of traces) {
      const q = quantityOf(t.name, t.probe, group);
      if (!byKind.has(q.kind)) byKind.set(q.kind, { group, ytitle: q.title, traces: [] });
      byKind.get(q.kind).traces.push(t);
    }
    const panels = [...byKind.values()];
    for (const p of panels) p.title = panels.length > 1 ? `${group}: ${p.ytitle}` : group;
    return panels;
  }

  /** A y range and a note for a plot whose finite values are all one number (a constant
      learning rate): without it, plotly would draw the line on an axis of its own making, and
      a small constant looks like 0. Null when the values vary (or there are none). */
  function constantAxis(traces) {
    let lo = Infinity, hi = -Infinity;
    for (const t of traces) for (const v of t.y) if (v !== null && isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (!isFinite(lo) || lo !== hi) return null;
    const pad = lo === 0 ? 1 : Math.abs(lo) / 2;
    return { range: [lo - pad, lo + pad], text: `constant ${fmt(lo)}` };
  }

  const AXIS_BREAK = "axis break";
  /** Where step 0 sits on a log step axis, which has no 0: at a quarter of the first positive
      step, left of a marked axis break at half of it, never joined to the curve (a line from it
      would draw a plateau between step 0 and the first positive step that is not there). */
  function logZero(xs) {
    let first = Infinity;
    for (const x of xs) for (const s of x) if (s > 0 && s < first) first = s;
    if (!isFinite(first)) first = 1;
    return { at: first / 4, gap: first / 2 };
  }

  /** `traces` (and the layout's shapes and annotations) for a log step axis: each step-0 point
      moved to the marked position, cut off from the rest of its curve by a gap. */
  function honestLogSteps(traces, layout, zero) {
    let moved = false;
    const out = traces.map((t) => {
      const k = t.x.findIndex((s) => s > 0);  // the points before it are step 0 (steps are sorted, never negative)
      if (k === 0) return t;
      moved = true;
      if (k < 0) return Object.assign({}, t, { x: t.x.map(() => zero.at), mode: "markers" });
      const y0 = t.y[k - 1];
      const x = [zero.at, zero.gap, ...t.x.slice(k)], y = [y0, null, ...t.y.slice(k)];
      const dot = t.x.length - k > 2 ? 0 : 6;
      return Object.assign({}, t, { x, y, mode: "lines+markers",
        marker: { size: [7, 0, ...t.x.slice(k).map(() => dot)] } });
    });
    if (moved) {
      layout.shapes = (layout.shapes || []).concat([{ name: AXIS_BREAK, type: "line", xref: "x", yref: "paper", x0: zero.gap, x1: zero.gap,
        y0: 0, y1: 1, line: { color: COLOR.grey, width: 1, dash: "dash" } }]);
      layout.annotations = (layout.annotations || []).concat([{ x: Math.log10(zero.at), y: 0, xref: "x", yref: "paper",
        text: "step 0 (axis break)", showarrow: false, textangle: -90, xanchor: "right", yanchor: "bottom",
        font: { size: 10, color: COLOR.grey } }]);
    }
    return out;
  }

  /** `el`'s shapes with the cursor at the slider's step(s); its other shapes (an axis break) kept. */
  function movedCursor(el, runName) {
    const kept = (el.layout.shapes || []).filter((sh) => sh.name === AXIS_BREAK);
    return kept.concat(cursorShapes(runName, S.logx));
  }

  /** The annotation of a plot's note. */
  function cornerNote(text, color) {
    return { x: 0.01, y: 0.98, xref: "paper", yref: "paper", xanchor: "left", yanchor: "top", showarrow: false, text,
             bgcolor: "rgba(255,255,255,0.85)", bordercolor: color || COLOR.grey, borderwidth: 1,
             font: { size: 11, color: color || COLOR.grey } };
  }

  /** A curve plot's traces and layout: y titled with its quantity, a constant drawn visibly,
      step 0 kept on a log step axis. */
  function curveFigure(panel, title, runName, log) {
    const traces = panel.traces.map((t) => ({ type: "scatter", mode: seriesMode(t.x), name: t.name,
      x: t.x, y: t.y, line: { width: 1.5 } }));
    const layout = lineLayout(title, { shapes: cursorShapes(runName, log) });
    layout.yaxis = Object.assign({}, layout.yaxis, { title: { text: panel.ytitle } });
    const constant = constantAxis(traces);
    if (constant) {
      layout.yaxis.range = constant.range;
      layout.yaxis.autorange = false;
      layout.annotations = [cornerNote(constant.text)];
    }
    const data = log ? honestLogSteps(traces, layout, logZero([...traces.map((t) => t.x), run().steps])) : traces;
    return { data, layout };
  }

  // A grid or pattern from a checkpoint further than this from the slider's is not drawn: the
  // values of a far-away step would pass for the selected one's.
  const STALE_LIMIT = 1;

  /** How far (in the run's checkpoints) the step shown, `shown`, is from the slider's, `wanted`:
      null when they are the same, else {distance, text, hidden} (`what`: "probed" or "stored"). */
  function staleness(r, shown, wanted, what) {
    if (shown === wanted || shown === undefined) return null;
    const distance = Math.abs(nearest(r.steps, shown) - nearest(r.steps, wanted));
    const away = `${distance} checkpoint${distance === 1 ? "" : "s"} away`;
    if (distance > STALE_LIMIT) {
      return { distance, hidden: true, text: `not ${what} at this step: the nearest ${what} step, ${shown}, is ${away} ` +
        `(more than ${STALE_LIMIT}); nothing is drawn` };
    }
    return { distance, hidden: false, text: `not ${what} at this step: showing step ${shown} (${away})` };
  }

  /** `figure` ({data, layout}) marked stale: the note drawn on the plot, the values blanked
      beyond the distance limit. */
  function markStale(figure, stale) {
    if (!stale) return figure;
    if (stale.hidden && figure.data[0] && figure.data[0].z) figure.data[0].z = figure.data[0].z.map((row) => row.map(() => null));
    figure.layout.annotations = (figure.layout.annotations || []).concat([Object.assign(cornerNote(stale.text, "#b35900"),
      stale.hidden ? { x: 0.5, y: 0.5, xanchor: "center", yanchor: "middle" } : { y: 1.0, yanchor: "bottom" })]);
    return figure;
  }

  // --- curves --------------------------------------------------------------------------------

  function curveGroups(r) {
    const groups = new Map();
    const add = (group, trace) => {
      if (!groups.has(group)) groups.set(group, []);
      groups.get(group).push(trace);
    };
    for (const [key, c] of Object.entries(r.metrics)) {
      add(key.includes("/") ? key.split("/")[0] : key, { name: key, x: c.steps, y: c.values });
    }
    for (const [key, p] of Object.entries(r.probes)) {
      p.columns.forEach((col, j) => add("probe " + key, { name: col, probe: key, x: p.steps,
                                                        y: p.values.map((row) => row[j]) }));
    }
    return groups;
  }

  function buildGroupChips() {
    const r = run(), box = $("curve-groups"), groups = [...curveGroups(r).keys()];
    if (!S.groups[r.name]) {
      const metrics = groups.filter((g) => !g.startsWith("probe "));
      const headline = D.headline.figures.find((f) => f.type === "heads" && f.run === r.name);
      const first = headline ? "probe " + headline.probe : "";
      const probes = groups.filter((g) => g.startsWith("probe ") && !g.startsWith("probe example."))
        .sort((x, y) => (y === first) - (x === first));
      S.groups[r.name] = new Set([...metrics.slice(0, 6), ...probes.slice(0, 2)]);
    }
    box.innerHTML = "";
    for (const g of groups) {
      const label = document.createElement("label");
      label.className = "chip";
      const box2 = document.createElement("input");
      box2.type = "checkbox";
      box2.checked = S.groups[r.name].has(g);
      box2.addEventListener("change", () => {
        if (box2.checked) S.groups[r.name].add(g); else S.groups[r.name].delete(g);
        renderCurves(true);
      });
      label.append(box2, " " + g);
      box.appendChild(label);
    }
  }

  // A group draws at most this many curves (a legend past it is unreadable) and says so in its title.
  const MAX_TRACES = 40;
  // A line needs two points: a series of one or two points gets markers too, so it never draws nothing.
  const seriesMode = (x) => (x.length > 2 ? "lines" : "lines+markers");

  let curvesKey = "";
  function renderCurves(rebuild) {
    const r = run(), box = $("curves"), groups = curveGroups(r);
    const chosen = [...groups.keys()].filter((g) => S.groups[r.name].has(g));
    const key = [r.name, S.logx, ...chosen].join("|");
    if (rebuild || key !== curvesKey) {  // plot i shows chosen group i; plots beyond them are hidden, kept
      curvesKey = key;
      note(box, chosen.length ? "" : "Tick a group of curves above.");
      const panels = chosen.flatMap((g) => curvePanels(g, groups.get(g)));
      const plots = panels.map((p, i) => plotDiv(box, "curve-" + i));
      box.querySelectorAll(".plot").forEach((el) => { el.hidden = !plots.includes(el); });
      panels.forEach((panel, i) => {
        const all = panel.traces, shown = all.slice(0, MAX_TRACES);
        const title = all.length > shown.length ? `${panel.title} (the first ${shown.length} of ${all.length} curves)`
          : panel.title;
        const g = curveFigure(Object.assign({}, panel, { traces: shown }), title, r.name, S.logx);
        draw(plots[i], g.data, g.layout);
      });
      return;
    }
    for (const el of box.querySelectorAll(".plot")) {
      if (el.data && !el.hidden) Plotly.relayout(el, { shapes: movedCursor(el, r.name) });
    }
  }

  // --- headline ------------------------------------------------------------------------------

  let headlineBuilt = false;
  function buildHeadline() {
    const h = D.headline, box = $("tab-headline");
    const frames = h.figures.filter((f) => f.type === "matrix" && f.frames.length > 1);
    let html = `<h2>${esc(h.title)}</h2><div class="caption">${esc(h.caption || "")}</div>`;
    if (frames.length) {
      const labels = frames[0].frames.map((f) => f.label);
      html += `<div class="frame-row"><b>epoch</b><input type="range" id="frame-slider" min="0" max="${labels.length - 1}"` +
        ` value="${labels.length - 1}" aria-label="epoch"><span id="frame-label"></span></div>`;
      S.frame = labels.length - 1;
    }
    h.figures.forEach((f, i) => {
      html += `<div class="figure" data-index="${i}">` + (f.type === "table" || f.type === "heads"
        ? `<h2>${esc(f.title)}</h2>` : "") + "</div>";
    });
    box.innerHTML = html;
    const slider = $("frame-slider");
    if (slider) slider.addEventListener("input", () => { S.frame = +slider.value; renderHeadline(); });
    h.figures.forEach((f, i) => {
      const holder = box.querySelector(`.figure[data-index="${i}"]`);
      if (f.type === "table") {
        holder.insertAdjacentHTML("beforeend", '<table class="results">' + f.rows.map((row) =>
          `<tr><td>${esc(row[0])}</td><td>${esc(fmt(row[1], 4))}</td></tr>`).join("") + "</table>");
      } else if (f.type === "heads") {
        const inner = document.createElement("div");
        inner.id = "headline-heads";
        holder.appendChild(inner);
      } else {
        plotDiv(holder, "headline-" + i);
        if (f.caption) holder.insertAdjacentHTML("beforeend", `<div class="caption">${esc(f.caption)}</div>`);
      }
    });
    markStaticFigures(h, box);
    headlineBuilt = true;
  }

  /** The quantity of the curves on one axis of a headline figure, for an axis the view did not title. */
  function axisQuantity(series, axis) {
    const titles = [...new Set(series.filter((s) => (s.axis === "y2" ? "y2" : "y") === axis)
      .map((s) => quantityOf(s.name).title))];
    return titles.join(" / ");
  }

  /** A note under each headline figure the step slider does not move (a summary over training,
      a table, a per-epoch matrix): the page says so rather than leave a still panel unexplained. */
  function markStaticFigures(h, box) {
    h.figures.forEach((f, i) => {
      const moves = f.type === "heads" || (f.type === "lines" && !!f.run);
      if (moves) return;
      const holder = box.querySelector(`.figure[data-index="${i}"]`);
      const text = f.type === "matrix" && f.frames.length > 1
        ? "Per epoch: the epoch slider above moves this; the step slider does not."
        : "Summary over training; the step slider does not move this.";
      holder.insertAdjacentHTML("beforeend", `<div class="static-note">${esc(text)}</div>`);
    });
  }

  function linesFigure(f) {
    const data = f.series.map((s) => ({ type: "scatter", mode: seriesMode(s.x), name: s.name, x: s.x, y: s.y,
      yaxis: s.axis === "y2" ? "y2" : "y", line: { width: s.axis === "y2" ? 1.2 : 2, dash: s.axis === "y2" ? "dot" : "solid" } }));
    const shapes = f.run ? cursorShapes(f.run, f.logx) : [];
    const annotations = [];
    for (const v of f.vlines || []) {
      shapes.push({ type: "line", xref: "x", yref: "paper", x0: v.x, x1: v.x, y0: 0, y1: 1,
                    line: { color: COLOR.mark, width: 1.2, dash: "dashdot" } });
      annotations.push({ x: S.logx || f.logx ? Math.log10(Math.max(v.x, 1)) : v.x, y: 1, xref: "x", yref: "paper",
                         text: v.label, showarrow: false, textangle: -90, xanchor: "right", yanchor: "top",
                         font: { size: 10, color: COLOR.mark } });
    }
    for (const hl of f.hlines || []) {
      shapes.push({ type: "line", xref: "paper", yref: hl.axis === "y2" ? "y2" : "y", x0: 0, x1: 1, y0: hl.y, y1: hl.y,
                    line: { color: COLOR.grey, width: 1, dash: "dot" } });
      if (hl.label) {
        annotations.push({ x: 1, y: hl.y, xref: "paper", yref: hl.axis === "y2" ? "y2" : "y", text: hl.label,
                           showarrow: false, xanchor: "right", yanchor: "bottom", font: { size: 10, color: COLOR.grey } });
      }
    }
    if (f.band) {
      shapes.push({ type: "rect", xref: "x", yref: "paper", x0: f.band.x0, x1: f.band.x1, y0: 0, y1: 1, layer: "below",
                    fillcolor: "rgba(122,79,196,0.09)", line: { width: 0 } });
      annotations.push({ x: f.logx ? Math.log10(Math.max((f.band.x0 + f.band.x1) / 2, 1)) : (f.band.x0 + f.band.x1) / 2,
                         y: 0.02, xref: "x", yref: "paper", text: f.band.label, showarrow: false,
                         font: { size: 11, color: COLOR.mark } });
    }
    const layout = lineLayout(f.title, { shapes, annotations, height: 380,
      xaxis: { title: { text: f.xlabel || "step" }, type: f.logx ? "log" : "linear", zeroline: false, autorange: true },
      yaxis: { title: { text: f.ylabel || axisQuantity(f.series, "y") }, zeroline: false, autorange: true, automargin: true },
      legend: { orientation: "h", y: -0.2, font: { size: 11 } }, margin: { l: 56, r: 56, t: 34, b: 40 } });
    if (data.some((t) => t.yaxis === "y2")) {
      // Round ticks (".3~g": 0.25, not 0.25000000000000006) and a margin that fits them and the title.
      layout.yaxis2 = { title: { text: f.y2label || axisQuantity(f.series, "y2") }, overlaying: "y", side: "right", zeroline: false, showgrid: false,
                        autorange: true, tickformat: ".3~g", automargin: true };
    }
    return { data, layout };
  }

  function matrixFigure(f) {
    const frame = f.frames[Math.min(S.frame, f.frames.length - 1)];
    let m = 0;
    for (const fr of f.frames) for (const row of fr.z) for (const v of row) if (v !== null) m = Math.max(m, Math.abs(v));
    const data = [{ type: "heatmap", z: frame.z, x: f.x, y: f.y, colorscale: "RdBu",
      zmin: f.symmetric ? -m || -1 : undefined, zmax: f.symmetric ? m || 1 : undefined, colorbar: { thickness: 10 },
      hovertemplate: "%{y}, %{x}: %{z:.4f}<extra></extra>" }];
    const layout = { title: { text: f.title + (frame.label ? ` - ${frame.label}` : ""), font: { size: 13 }, x: 0.01, xanchor: "left" }, font: FONT,
      height: Math.min(560, 160 + 22 * f.y.length), margin: { l: 150, r: 10, t: 34, b: 60 },
      xaxis: { title: { text: f.xlabel || "" }, type: "category", tickfont: { size: 10 }, autorange: true },
      yaxis: { title: { text: f.ylabel || "" }, type: "category", autorange: "reversed", tickfont: { size: 10 } } };
    return { data, layout };
  }

  function renderHeadline() {
    if (!headlineBuilt) buildHeadline();
    const h = D.headline, frameLabel = $("frame-label");
    if (frameLabel) {
      const f = h.figures.find((x) => x.type === "matrix" && x.frames.length > 1);
      frameLabel.textContent = f.frames[S.frame].label;
    }
    h.figures.forEach((f, i) => {
      if (f.type === "lines") {
        const g = linesFigure(f);
        draw($("headline-" + i), g.data, g.layout);
      } else if (f.type === "matrix") {
        const g = matrixFigure(f);
        draw($("headline-" + i), g.data, g.layout);
      } else if (f.type === "heads") {
        const r = runsByName.get(f.run);
        note($("headline-heads"), r && f.run === S.run ? "" : `Select run ${f.run} to see this panel.`);
        if (!r || f.run !== S.run) return;
        if (!S.headlineHead) {
          const m = /^L(\d+)H(\d+)$/.exec(f.head || "");
          S.headlineHead = m ? { layer: +m[1], head: +m[2] } : defaultHead(r, f.probe);
        }
        renderHeadPairs($("headline-heads"), "headline", r, f.probe, () => S.headlineHead,
          (hd) => { S.headlineHead = hd; renderHeadline(); });
      }
    });
  }

  // --- tabs and events -----------------------------------------------------------------------

  // The parts in files of their own (loaded before this script), given what they use of it. What this script
  // calls of them (from setRun, draw, the headline and init) is first called by init, after these lines.
  const { headProbes, fillProbeSelect, probeRange, defaultHead, gridFigure, renderHeadPairs, renderHeads, initPlay } =
    window.interpViewHeads({ $, S, D, run, stepOf, sides, nearest, fmt, esc, COLOR, FONT, ATTENTION_SCALE, HEAD_NAME,
                             headPattern, patternHover, logZero, cursorShapes, curveFigure, quantityOf, staleness,
                             markStale, draw, plotDiv, note, inflight, setStep });  // heads.js
  const { fillCircuitSelect, renderCircuit } = window.interpViewCircuit({ $, S, run, stepOf, sides, nearest, fmt, esc,
    COLOR, FONT, staleness, markStale, draw, plotDiv, note });  // circuit.js
  const { scheduleFragment, stateFragment, readFragment, restoreState, copyLink, renderProvenance, renderRuns } =
    window.interpViewShare({ $, S, D, API, run, runsByName, stepOf, HEAD_NAME, esc, draw, plotDiv, note, lineLayout,
                             cursorShapes, seriesMode, headProbes, probeRange, gridFigure, setRun, stepLabel,
                             renderTab, hasTab: (name) => Object.hasOwn(TABS, name) });  // share.js
  const TABS = { headline: renderHeadline, curves: renderCurves, heads: renderHeads, circuit: renderCircuit };
  TABS.runs = renderRuns;
  if (window.interpViewTokens) TABS.tokens = window.interpViewTokens({ $, S, run, stepOf, nearest, F16, scheduleFragment });  // tokens.js
  if (window.interpViewStages) {  // stages.js
    TABS.stages = window.interpViewStages({ $, S, run, stepOf, sides, nearest, draw, plotDiv, note, cursorShapes, lineLayout,
                                            esc, fmt, COLOR, FONT, honestLogSteps, logZero });
  }
  function renderTab(rebuild) {
    for (const name of Object.keys(TABS)) {
      $("tab-" + name).classList.toggle("active", name === S.tab);
      document.querySelector(`nav button[data-tab="${name}"]`).classList.toggle("active", name === S.tab);
    }
    TABS[S.tab](rebuild);
    scheduleFragment();
  }

  function init() {
    const title = D.kind === "analysis" ? `interp view: ${D.title}` : `interp view: ${D.title}`;
    $("title").textContent = title;
    $("subtitle").textContent = `${D.path} - ${D.runs.length} run${D.runs.length === 1 ? "" : "s"}`;
    $("run-select").innerHTML = D.runs.map((r) => `<option value="${esc(r.name)}">${esc(r.name)}</option>`).join("");
    $("run-select").addEventListener("change", (e) => setRun(e.target.value));
    for (const which of ["a", "b"]) {
      $("slider-" + which).addEventListener("input", (e) => setStep(which, +e.target.value));
    }
    $("compare").addEventListener("change", (e) => {
      S.compare = e.target.checked;
      if (!S.compare) { S.diff = false; $("diff").checked = false; }
      $("row-b").hidden = !S.compare;
      $("step-b").textContent = stepLabel("b");
      renderTab(false);
    });
    $("diff").addEventListener("change", (e) => {
      S.diff = e.target.checked;
      if (S.diff && !S.compare) { $("compare").checked = true; S.compare = true; $("row-b").hidden = false; }
      renderTab(false);
    });
    $("logx").addEventListener("change", (e) => { S.logx = e.target.checked; renderCurves(true); });
    $("probe-select").addEventListener("change", (e) => { S.probe[S.run] = e.target.value; renderHeads(); });
    $("circuit-select").addEventListener("change", (e) => { S.circuit[S.run] = +e.target.value; renderCircuit(); });
    $("edge-cut").addEventListener("change", (e) => { S.cut = Math.max(0, Math.min(100, +e.target.value || 0)); renderCircuit(); });
    document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => {
      S.tab = b.dataset.tab;
      renderTab(true);
    }));
    document.addEventListener("keydown", (ev) => {
      const t = ev.target;
      if (t && (t.tagName === "SELECT" || t.tagName === "TEXTAREA" ||
                (t.tagName === "INPUT" && t.type !== "checkbox" && t.type !== "range"))) return;
      if (t && t.type === "range") return;  // a focused slider moves itself (its input event)
      const which = ev.shiftKey && S.compare ? "b" : "a", at = which === "b" ? S.b : S.a, last = run().steps.length - 1;
      const moves = { ArrowRight: at + 1, ArrowUp: at + 1, ArrowLeft: at - 1, ArrowDown: at - 1, Home: 0, End: last,
                      PageUp: at + Math.max(1, Math.round(last / 10)), PageDown: at - Math.max(1, Math.round(last / 10)) };
      if (!(ev.key in moves)) return;
      ev.preventDefault();
      setStep(which, moves[ev.key]);
    });
    const notes = [...(D.notes || []), ...D.runs.flatMap((r) => r.notes.map((n) => `${r.name}: ${n}`))];
    $("footer").innerHTML = (notes.length ? `<div class="notes">${notes.map(esc).join("<br>")}</div>` : "") +
      `Written by <code>interp view</code> on ${esc(D.generated)} from the run files under ${esc(D.path)} ` +
      `(metrics.jsonl, probes/, circuits/, patterns/). Plots: plotly.js ${esc(Plotly.version)}, bundled in this ` +
      "file: the page works offline.";
    initPlay();
    $("copy-link").addEventListener("click", copyLink);
    document.querySelector('nav button[data-tab="runs"]').hidden = D.runs.length < 2;
    window.addEventListener("hashchange", () => restoreState(readFragment(location.hash)));
    restoreState(readFragment(location.hash));
    Promise.all(pending).then(() => {
      pending.length = 0;
      API.ready = true;
      API.readyAt = performance.now();
      document.body.dataset.ready = "1";
    });
  }

  API.setStep = (which, index) => setStep(which, index);
  API.settled = () => Promise.all([...inflight]).then(() => new Promise((resolve) => setTimeout(resolve, 150)));
  API.setRun = (name) => setRun(name);
  API.showTab = (name) => { S.tab = name; renderTab(true); };
  API.fragment = () => stateFragment();
  init();
})();

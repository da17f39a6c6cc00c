/* interp view: the explorer page. Data: the JSON block #view-data (written by
   interp/view/page.py); plotting: plotly.js, inlined beside this script. */
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

  // --- heads: grid of a per-head probe, attention pattern of the chosen head --------------------

  function headProbes(r) {
    return Object.keys(r.probes).filter((k) => r.probes[k].heads && r.probes[k].steps.length);
  }

  function fillProbeSelect() {
    const r = run(), select = $("probe-select"), keys = headProbes(r);
    select.innerHTML = keys.map((k) => `<option value="${esc(k)}">${esc(k)}</option>`).join("");
    if (!S.probe[r.name] || !keys.includes(S.probe[r.name])) {  // the headline's probe, else the first cached one
      const headline = D.headline.figures.find((f) => f.type === "heads" && f.run === r.name);
      S.probe[r.name] = (headline && keys.includes(headline.probe) ? headline.probe : null) ||
        keys.find((k) => !k.startsWith("example.")) || keys[0] || null;
    }
    if (S.probe[r.name]) select.value = S.probe[r.name];
  }

  function probeGrid(r, key, step) {
    const p = r.probes[key], i = nearest(p.steps, step), { n_layers: L, n_heads: H } = r.model;
    const z = Array.from({ length: L }, () => new Array(H).fill(null));
    p.columns.forEach((col, j) => {
      const m = /^L(\d+)H(\d+)$/.exec(col);
      if (m && +m[1] < L && +m[2] < H) z[+m[1]][+m[2]] = p.values[i][j];
    });
    return { z, step: p.steps[i] };
  }

  function probeRange(p) {
    let lo = Infinity, hi = -Infinity;
    for (const row of p.values) for (const v of row) if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (!isFinite(lo)) return [0, 1];
    lo = Math.min(lo, 0);
    return [lo, hi > lo ? hi : lo + 1];
  }

  /** The head a probe opens on: the analysis's own head where its headline shows this probe, else the
      head with the largest last probed value among the probe's layers (its `layers=(...)` where it
      names them: a layer-0 head is never the pick of a probe over layer 1). */
  function defaultHead(r, key) {
    const p = r.probes[key];
    const shown = D.headline.figures.find((f) => f.type === "heads" && f.run === r.name && f.probe === key);
    const named = shown && /^L(\d+)H(\d+)$/.exec(shown.head || "");
    if (named && p && p.columns.includes(shown.head)) return { layer: +named[1], head: +named[2] };
    if (!p || !p.values.length) return { layer: r.model.n_layers - 1, head: 0 };
    const spec = /layers=\(([\d,\s]*)\)/.exec(p.probe || "");
    const layers = spec ? new Set(spec[1].split(",").filter((x) => x.trim()).map(Number)) : null;
    const heads = p.columns.map((col) => /^L(\d+)H(\d+)$/.exec(col))
      .map((m, j) => (m && (!layers || layers.has(+m[1])) ? { layer: +m[1], head: +m[2], j } : null)).filter(Boolean);
    const row = [...p.values].reverse().find((vs) => heads.some((h) => vs[h.j] !== null));
    const best = !row ? heads[0] : heads.filter((h) => row[h.j] !== null).reduce((a, b) => (row[b.j] > row[a.j] ? b : a));
    if (!best) return { layer: r.model.n_layers - 1, head: 0 };
    return { layer: best.layer, head: best.head };
  }

  function gridFigure(r, key, step, head, title) {
    const { z, step: probed } = probeGrid(r, key, step), [lo, hi] = probeRange(r.probes[key]);
    const { n_layers: L, n_heads: H } = r.model;
    // The hover names the head from its own text: %{x}/%{y} read the tick labels (H1, L1), not the index.
    const names = [...Array(L).keys()].map((l) => [...Array(H).keys()].map((h) => `L${l}H${h}`));
    const untrusted = untrustedCells(r, key, probed);
    for (const c of untrusted) names[c.layer][c.head] += " (not trustworthy)";
    const data = [{ type: "heatmap", z, x: [...Array(H).keys()], y: [...Array(L).keys()], zmin: lo, zmax: hi,
      colorscale: "Viridis", texttemplate: "%{z:.2f}", textfont: { size: 11 }, text: names,
      hovertemplate: "%{text}: %{z:.4f}<extra></extra>", colorbar: { thickness: 10 } }];
    const layout = {
      title: { text: title + (probed !== step ? ` (probed at step ${probed})` : ""), font: { size: 13 }, x: 0.01, xanchor: "left" }, font: FONT,
      margin: { l: 44, r: 10, t: 34, b: 36 }, height: Math.min(420, 150 + 60 * L),
      xaxis: { title: { text: "head" }, autorange: true, tickvals: [...Array(H).keys()], ticktext: [...Array(H).keys()].map((h) => "H" + h) },
      yaxis: { title: { text: "layer" }, autorange: "reversed", tickvals: [...Array(L).keys()],
               ticktext: [...Array(L).keys()].map((l) => "L" + l) },
      shapes: [...untrusted.map((c) => untrustedOutline(c.head, c.layer)),
               ...(head ? [{ type: "rect", x0: head.head - 0.5, x1: head.head + 0.5, y0: head.layer - 0.5,
                             y1: head.layer + 0.5, line: { color: "#ff7f0e", width: 3 } }] : [])],
    };
    return markStale({ data, layout, probed }, staleness(r, probed, step, "probed"));
  }

  /** The heads of per-head probe `key` whose value at probed step `step` is not to be trusted (a
      refined LLC's `untrusted` marks), as {layer, head, j}. */
  function untrustedCells(r, key, step) {
    const p = r.probes[key], i = p.steps.indexOf(step);
    if (!p.untrusted || i < 0) return [];
    return p.columns.map((col, j) => [HEAD_NAME.exec(col), j]).filter(([m, j]) => m && p.untrusted[i][j])
      .map(([m, j]) => ({ layer: +m[1], head: +m[2], j }));
  }

  const untrustedOutline = (x, y) => ({ name: "not trustworthy", type: "rect", x0: x - 0.42, x1: x + 0.42, y0: y - 0.42,
                                        y1: y + 0.42, line: { color: "#b35900", width: 2, dash: "dot" } });

  function attentionFigure(r, step, head) {
    const i = nearest(r.patterns.steps, step), z = headPattern(r, i, head.layer, head.head);
    const labels = r.example.labels, T = labels.length, P = r.example.period, ticks = [...Array(T).keys()];
    const every = T > 40 ? 2 : 1;
    const axis = (title) => ({ title: { text: title }, autorange: true, zeroline: false, tickvals: ticks.filter((t) => t % every === 0),
      ticktext: ticks.filter((t) => t % every === 0).map((t) => labels[t]), tickfont: { size: 9 }, tickangle: 0 });
    const data = [{ type: "heatmap", z, zmin: 0, zmax: 1, colorscale: ATTENTION_SCALE, text: patternHover(r),
      hovertemplate: "%{text}<br>weight %{z:.3f}<extra></extra>", colorbar: { thickness: 10 }, hoverongaps: false }];
    const at = r.patterns.steps[i];
    const layout = {
      title: { text: `L${head.layer}H${head.head} attention at step ${at}` +
        (at !== step ? ` (nearest stored: step ${step} has none)` : ""), font: { size: 13 }, x: 0.01, xanchor: "left" },
      font: FONT, margin: { l: 60, r: 10, t: 34, b: 48 }, xaxis: axis("key"), height: Math.min(640, Math.max(420, 9 * T + 110)),
      yaxis: Object.assign(axis("query"), { autorange: "reversed" }),
      shapes: [{ type: "line", x0: P - 0.5, x1: P - 0.5, y0: -0.5, y1: T - 0.5, line: { color: COLOR.grey, dash: "dot", width: 1 } },
               { type: "line", x0: -0.5, x1: T - 0.5, y0: P - 0.5, y1: P - 0.5, line: { color: COLOR.grey, dash: "dot", width: 1 } }],
    };
    return markStale({ data, layout }, staleness(r, at, step, "stored"));
  }

  /** A grid (clickable) and the chosen head's attention for each shown step, into `box`. */
  function renderHeadPairs(box, prefix, r, key, getHead, setHead) {
    for (const which of ["a", "b"]) {  // both blocks exist once made; B is hidden outside compare mode
      let block = box.querySelector(`.pair-block[data-side="${which}"]`);
      if (!block) {
        block = document.createElement("div");
        block.className = "pair-block";
        block.dataset.side = which;
        block.innerHTML = `<div class="pair-title ${which}"></div><div class="pair"></div>`;
        box.appendChild(block);
      }
      block.hidden = !sides().includes(which);
    }
    for (const which of sides()) {
      const block = box.querySelector(`.pair-block[data-side="${which}"]`);
      const step = stepOf(which), head = getHead();
      block.querySelector(".pair-title").textContent = (S.compare ? (which === "a" ? "A: " : "B: ") : "") + `step ${step}`;
      const pair = block.querySelector(".pair");
      const grid = plotDiv(pair, `${prefix}-grid-${which}`);
      const g = gridFigure(r, key, step, head, key);
      draw(grid, g.data, g.layout).then(() => {
        if (!grid.dataset.clicks) {
          grid.dataset.clicks = "1";
          grid.on("plotly_click", (ev) => {
            const pt = ev.points && ev.points[0];
            if (pt) setHead({ layer: +pt.y, head: +pt.x });
          });
        }
      });
      const cell = plotDiv(pair, `${prefix}-attn-${which}-cell`, "cell");
      const attn = plotDiv(cell, `${prefix}-attn-${which}`);
      note(cell, r.patterns ? "" : (r.patterns_note ? `No attention pattern: ${r.patterns_note}.`
        : "No example attention patterns for this run in this page."));
      if (r.patterns) {
        const a = attentionFigure(r, step, head);
        draw(attn, a.data, a.layout);
      }
    }
  }

  function renderHeads() {
    const r = run(), key = S.probe[r.name], box = $("heads");
    note(box, key ? "" : "This run has no per-head probe.");
    if (!key) return;
    if (!S.head[r.name]) S.head[r.name] = defaultHead(r, key);
    const head = S.head[r.name];
    $("head-info").textContent = `${r.probes[key].probe}. Click a cell to show that head's attention on the ` +
      `example (${r.example.description}); hover gives the weight. Selected: L${head.layer}H${head.head}.`;
    renderHeadPairs(box, "heads", r, key, () => S.head[r.name], (h) => { S.head[r.name] = h; renderHeads(); });
    renderHeadSteps(box, r, key, head);
    let curve = $("heads-curve");
    if (!curve) {
      curve = document.createElement("div");
      curve.id = "heads-curve";
      curve.className = "plot";
      box.appendChild(curve);
    }
    box.appendChild(curve);
    const p = r.probes[key], col = p.columns.indexOf(`L${head.layer}H${head.head}`);
    const traces = col < 0 ? [] : [{ type: "scatter", mode: "lines+markers", name: `L${head.layer}H${head.head}`,
      x: p.steps, y: p.values.map((row) => row[col]), marker: { size: 4 } }];
    const g = curveFigure({ traces, ytitle: quantityOf(`L${head.layer}H${head.head}`, key).title },
                          `${key} of L${head.layer}H${head.head} over training`, r.name, S.logx);
    g.layout.showlegend = false;
    draw(curve, g.data.map((t) => Object.assign(t, { mode: "lines+markers", marker: t.marker || { size: 4 } })), g.layout);
    renderHeadMultiples(box, r, head);
  }

  // --- heads over training: head x step heatmap, every head's pattern at the step, play ------------

  /** Where step `s` is drawn on the step axis (as `cursorShapes` draws the cursors): on a log axis
      step 0 sits where `logZero` puts it (log axes have no 0). */
  function stepAt(steps, log) {
    const zero = logZero([steps]).at;
    return (s) => (log && s <= 0 ? zero : s);
  }

  /** The n + 1 cell edges around n increasing axis positions: midpoints (geometric on a log axis),
      so each checkpoint's cell is centred on its step and no cell overlaps another. */
  function cellEdges(xs, log) {
    const f = log ? Math.log10 : (v) => v, g = log ? (v) => Math.pow(10, v) : (v) => v, t = xs.map(f);
    if (t.length === 1) return [g(t[0] - 0.5), g(t[0] + 0.5)];
    const edges = [t[0] - (t[1] - t[0]) / 2];
    for (let i = 1; i < t.length; i++) edges.push((t[i - 1] + t[i]) / 2);
    edges.push(t[t.length - 1] + (t[t.length - 1] - t[t.length - 2]) / 2);
    return edges.map(g);
  }

  /** Rows = the probe's heads (by layer), columns = the run's checkpoints; a checkpoint the probe
      has no value at is a gap (null), drawn grey and named in the hover. */
  function headStepFigure(r, key, head) {
    const p = r.probes[key], steps = r.steps, log = S.logx, at = stepAt(steps, log);
    const rows = p.columns.map((col, j) => [col, j]).filter(([col]) => /^L\d+H\d+$/.test(col));
    const probed = new Map(p.steps.map((s, i) => [s, i]));
    const z = [], text = [];
    for (const [col, j] of rows) {
      z.push(steps.map((s) => (probed.has(s) ? p.values[probed.get(s)][j] : null)));
      text.push(steps.map((s) => {
        const i = probed.get(s);
        const v = i === undefined ? "not probed at this checkpoint" : p.values[i][j] === null ? "no value (NaN)"
          : fmt(p.values[i][j], 3);
        return `${col} \u00b7 step ${s} \u00b7 ${v}` + (p.untrusted && i !== undefined && p.untrusted[i][j]
          ? " \u00b7 not trustworthy" : "");
      }));
    }
    const [lo, hi] = probeRange(p), names = rows.map(([col]) => col);
    const layerOf = (name) => +/^L(\d+)/.exec(name)[1];
    const shapes = [];
    names.forEach((name, i) => {  // a white rule between layers
      if (i && layerOf(name) !== layerOf(names[i - 1])) {
        shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, y0: i - 0.5, y1: i - 0.5,
                      line: { color: "#fff", width: 3 } });
      }
    });
    const selected = names.indexOf(`L${head.layer}H${head.head}`);
    if (selected >= 0) {
      shapes.push({ type: "rect", xref: "paper", x0: 0, x1: 1, y0: selected - 0.5, y1: selected + 0.5,
                    line: { color: "#ff7f0e", width: 2 } });
    }
    shapes.push(...cursorShapes(r.name, log));
    const missing = steps.filter((s) => !probed.has(s)).length;
    const data = [{ type: "heatmap", z, x: cellEdges(steps.map(at), log), y: names, zmin: lo, zmax: hi,
      colorscale: "Viridis", text, hovertemplate: "%{text}<extra></extra>", hoverongaps: true, xgap: 0, ygap: 0,
      colorbar: { thickness: 10, title: { text: key, side: "right" } } }];
    if (p.untrusted) {  // an x on each cell whose value is not to be trusted
      const cells = rows.flatMap(([col, j]) => steps.filter((s) => probed.has(s) && p.untrusted[probed.get(s)][j])
        .map((s) => [at(s), col]));
      data.push({ type: "scatter", mode: "markers", name: "not trustworthy", x: cells.map((c) => c[0]),
        y: cells.map((c) => c[1]), hoverinfo: "skip", showlegend: false,
        marker: { symbol: "x-thin-open", size: 8, line: { width: 1.5, color: "rgba(255,255,255,0.9)" } } });
    }
    const layout = {
      title: { text: `${key} of every head over training` + (missing ? ` (grey: not probed, ${missing} of ` +
        `${steps.length} checkpoints)` : ""), font: { size: 13 }, x: 0.01, xanchor: "left" },
      font: FONT, height: Math.min(640, 120 + 22 * names.length), margin: { l: 56, r: 20, t: 34, b: 44 },
      plot_bgcolor: "#c9ccd1",
      xaxis: { title: { text: log ? "step (log; step 0 drawn at a quarter of the first positive step)" : "step" },
               type: log ? "log" : "linear", zeroline: false, showgrid: false, autorange: true },
      yaxis: { title: { text: "head" }, type: "category", autorange: "reversed", showgrid: false, tickfont: { size: 10 } },
      shapes,
    };
    return { data, layout, names };
  }

  function renderHeadSteps(box, r, key, head) {
    let el = $("heads-steps");
    if (!el) {
      el = document.createElement("div");
      el.id = "heads-steps";
      el.className = "plot";
      box.insertBefore(el, box.querySelector(".pair-block"));
    }
    const g = headStepFigure(r, key, head);
    el.headNames = g.names;
    draw(el, g.data, g.layout).then(() => {
      if (el.dataset.clicks) return;
      el.dataset.clicks = "1";
      el.on("plotly_click", (ev) => {  // a cell selects its head and moves step A to its checkpoint
        const pt = ev.points && ev.points[0], m = pt && /^L(\d+)H(\d+)$/.exec(el.headNames[pt.pointNumber[0]]);
        if (!m) return;
        S.head[S.run] = { layer: +m[1], head: +m[2] };
        setStep("a", pt.pointNumber[1]);
      });
    });
  }

  /** One small heatmap per head (layers down, heads across) of the example's attention at `step`. */
  function multiplesFigure(r, step, head, width) {
    const { n_layers: L, n_heads: H } = r.model, i = nearest(r.patterns.steps, step), at = r.patterns.steps[i];
    // Square panels: the figure is sized from the panel side, not stretched to the page's width.
    const xgap = 0.08, ygap = 0.16, margin = { l: 40, r: 90, t: 48, b: 34 };
    const side = Math.max(60, Math.min(200, (width - margin.l - margin.r) / (H + (H - 1) * xgap)));
    const layout = { font: FONT, showlegend: false, hovermode: "closest", margin,
      width: Math.round(side * (H + (H - 1) * xgap) + margin.l + margin.r),
      height: Math.round(side * (L + (L - 1) * ygap) + margin.t + margin.b),
      grid: { rows: L, columns: H, pattern: "independent", xgap, ygap },
      title: { text: `Every head's attention at step ${at}` + (at !== step ? ` (nearest stored: step ${step} has none)`
        : ""), font: { size: 13 }, x: 0.01, xanchor: "left" },
      annotations: [], shapes: [] };
    const data = [], hover = patternHover(r);
    for (let l = 0; l < L; l++) {
      for (let h = 0; h < H; h++) {
        const n = l * H + h + 1, ax = n === 1 ? "" : String(n), name = `L${l}H${h}`;
        data.push({ type: "heatmap", z: headPattern(r, i, l, h), zmin: 0, zmax: 1, colorscale: ATTENTION_SCALE,
          showscale: n === 1, colorbar: { thickness: 10, title: { text: "weight", side: "top" } },
          xaxis: "x" + ax, yaxis: "y" + ax, name, text: hover, hoverongaps: false,
          hovertemplate: `${name} \u00b7 %{text}<br>weight %{z:.3f}<extra></extra>` });
        layout["xaxis" + ax] = { showticklabels: false, ticks: "", zeroline: false, showgrid: false,
                                 title: { text: "key", font: { size: 9 }, standoff: 2 } };
        layout["yaxis" + ax] = { showticklabels: false, ticks: "", zeroline: false, showgrid: false, autorange: "reversed",
                                 title: { text: "query", font: { size: 9 }, standoff: 2 } };
        const selected = l === head.layer && h === head.head;
        layout.annotations.push({ text: name, xref: `x${ax} domain`, yref: `y${ax} domain`, x: 0.5, y: 1, yanchor: "bottom",
          yshift: 4, showarrow: false, font: { size: 11, color: selected ? "#ff7f0e" : "#1d2330" } });
        if (selected) {
          layout.shapes.push({ type: "rect", xref: `x${ax} domain`, yref: `y${ax} domain`, x0: -0.03, x1: 1.03,
                               y0: -0.03, y1: 1.03, line: { color: "#ff7f0e", width: 3 } });
        }
      }
    }
    return { data, layout };
  }

  function renderHeadMultiples(box, r, head) {
    let wrap = $("heads-multiples");
    if (!wrap) {
      wrap = document.createElement("div");
      wrap.id = "heads-multiples";
      box.appendChild(wrap);
    }
    box.appendChild(wrap);  // after the per-head curve, which is moved to the end on every render
    note(wrap, r.patterns ? "" : "No example attention patterns for this run in this page.");
    for (const which of ["a", "b"]) {
      const el = plotDiv(wrap, "heads-multiples-" + which);
      el.hidden = !r.patterns || !sides().includes(which);
      if (el.hidden) continue;
      const g = multiplesFigure(r, stepOf(which), head, wrap.clientWidth || 1000);
      el.style.width = g.layout.width + "px";  // draw() then keeps this width (it resizes a plot to its box)
      if (S.compare) g.layout.title.text = (which === "a" ? "A: " : "B: ") + g.layout.title.text;
      draw(el, g.data, g.layout).then(() => {
        if (el.dataset.clicks) return;
        el.dataset.clicks = "1";
        el.on("plotly_click", (ev) => {
          const pt = ev.points && ev.points[0], H = run().model.n_heads;
          if (!pt) return;
          S.head[S.run] = { layer: Math.floor(pt.curveNumber / H), head: pt.curveNumber % H };
          renderHeads();
        });
      });
    }
  }

  /** The play button: steps slider A through the checkpoints to the last, where it stops; a frame
      waits for the previous frame's plots, so a slow page plays slower instead of queueing draws.
      A whole run plays in about 8 s, each checkpoint shown for 0.12-0.4 s. */
  let playTimer = null;
  function showPlay() {
    const button = $("play");
    button.textContent = S.playing ? "\u275a\u275a pause" : "\u25b6 play";
    button.setAttribute("aria-pressed", String(S.playing));
    button.title = S.playing ? "pause (Space or Enter)" : "play: step through the checkpoints (Space or Enter)";
  }

  function stopPlay() {
    S.playing = false;
    clearTimeout(playTimer);
    playTimer = null;
    showPlay();
  }

  function nextFrame() {
    if (!S.playing) return;
    const started = performance.now(), last = run().steps.length - 1;
    setStep("a", S.a + 1);
    if (S.a >= last) { stopPlay(); return; }
    const frame = Math.max(120, Math.min(400, 8000 / Math.max(1, last)));
    Promise.all([...inflight]).then(() => {
      if (S.playing) playTimer = setTimeout(nextFrame, Math.max(0, frame - (performance.now() - started)));
    });
  }

  function startPlay() {
    if (S.a >= run().steps.length - 1) setStep("a", 0);  // played to the end: play again from the start
    S.playing = true;
    showPlay();
    playTimer = setTimeout(nextFrame, 0);
  }

  function initPlay() {
    const button = document.createElement("button");
    button.type = "button";
    button.id = "play";
    button.className = "play";
    const row = $("slider-a").closest(".slider-row");
    row.insertBefore(button, row.querySelector(".slider-wrap"));
    button.addEventListener("click", () => (S.playing ? stopPlay() : startPlay()));
    S.playing = false;
    showPlay();
    // The Heads tab's log-axis box and the Curves tab's are one setting.
    const logx = $("heads-logx");
    logx.addEventListener("change", () => { S.logx = logx.checked; $("logx").checked = S.logx; renderHeads(); });
    $("logx").addEventListener("change", () => { logx.checked = S.logx; });
  }

  // --- circuit graph -------------------------------------------------------------------------

  function fillCircuitSelect() {
    const r = run(), select = $("circuit-select");
    select.innerHTML = r.circuits.map((c, i) => `<option value="${i}">${esc(c.key)} (${esc(c.method)})</option>`).join("");
    if (S.circuit[r.name] === undefined || S.circuit[r.name] >= r.circuits.length) S.circuit[r.name] = 0;
    select.value = String(S.circuit[r.name]);
  }

  /** The graph index for a checkpoint step: the nearest saved graph, as a grid shows its nearest probed step. */
  function graphIndex(c, step) {
    return nearest(c.steps, step);
  }

  function maxAbs(rows) {
    let m = 0;
    for (const row of rows) for (const v of row) if (v !== null) m = Math.max(m, Math.abs(v));
    return m || 1;
  }

  const INPUT_OFFSET = { q: -0.2, k: 0, v: 0.2 };
  function graphFigure(c, weights, scale, title, diff) {
    const cut = (S.cut / 100) * scale, buckets = new Map(), mid = { x: [], y: [], text: [] };
    c.edges.forEach((e, j) => {
      const w = weights[j];
      if (w === null || Math.abs(w) < cut || w === 0) return;
      const [x0, y0] = c.positions[e.sender], [x1, y1] = c.positions[e.receiver];
      const yr = y1 + (e.input ? INPUT_OFFSET[e.input] : 0);
      const width = Math.max(0.5, Math.round((8 * Math.abs(w)) / scale * 2) / 2);
      const color = diff ? (w > 0 ? COLOR.up : COLOR.down) : (w > 0 ? COLOR.pos : COLOR.neg);
      const key = color + "|" + width;
      if (!buckets.has(key)) buckets.set(key, { color, width, x: [], y: [] });
      const b = buckets.get(key);
      b.x.push(x0, x1, null);
      b.y.push(y0, yr, null);
      mid.x.push((x0 + x1) / 2);
      mid.y.push((y0 + yr) / 2);
      mid.text.push(`${e.edge}: ${fmt(w, 4)}`);
    });
    const data = [...buckets.values()].map((b) => ({ type: "scatter", mode: "lines", x: b.x, y: b.y,
      line: { color: b.color, width: b.width }, hoverinfo: "skip", opacity: 0.75 }));
    data.push({ type: "scatter", mode: "markers", x: mid.x, y: mid.y, text: mid.text, hoverinfo: "text",
                marker: { size: 7, color: "rgba(0,0,0,0.01)" } });
    const nodes = c.nodes;
    data.push({ type: "scatter", mode: "markers+text", x: nodes.map((n) => c.positions[n][0]),
      y: nodes.map((n) => c.positions[n][1]), text: nodes, textposition: "middle right", hoverinfo: "text",
      marker: { size: 13, color: "#fff", line: { color: "#333", width: 1.5 } }, textfont: { size: 11 } });
    const xs = nodes.map((n) => c.positions[n][0]), ys = nodes.map((n) => c.positions[n][1]);
    const layout = { title: { text: title, font: { size: 13 }, x: 0.01, xanchor: "left" }, font: FONT, showlegend: false,
      hovermode: "closest", height: Math.min(640, 160 + 60 * Math.max(...ys)),
      margin: { l: 10, r: 10, t: 34, b: 10 },
      xaxis: { visible: false, autorange: false, range: [Math.min(...xs) - 0.5, Math.max(...xs) + 0.9] },
      yaxis: { visible: false, autorange: false, range: [Math.max(...ys) + 0.6, Math.min(...ys) - 0.6] } };
    return { data, layout, shown: mid.text.length };
  }

  function strongest(c, weights, k) {
    return c.edges.map((e, j) => [e.edge, weights[j]]).filter((p) => p[1] !== null)
      .sort((p, q) => Math.abs(q[1]) - Math.abs(p[1])).slice(0, k).map((p) => `${p[0]}  ${fmt(p[1], 4)}`).join("\n");
  }

  function renderCircuit() {
    const r = run(), box = $("circuit");
    note(box, r.circuits.length ? "" : "No circuit graph for this run: it saved no circuits/ graphs and has no " +
      "example patterns (or only one layer).");
    if (!r.circuits.length) {
      $("circuit-info").textContent = "";
      return;
    }
    const c = r.circuits[S.circuit[r.name]], scale = c.scale || maxAbs(c.weights);  // a graph's own scale, if it has one
    $("circuit-info").textContent = `${c.method}: ${c.metric || "edge weight"}. Source: ${c.source}. ` +
      "Edge width = |weight| (blue positive, red negative; q/k/v inputs enter a head above/at/below its centre)." +
      (c.scale ? ` Full width: |weight| ${fmt(c.scale)}, the weights' own scale (the cut is a percentage of it).` : "");
    const panels = [], blank = (weights) => weights.map(() => null);
    const staleAt = {};
    for (const which of sides()) {
      const step = stepOf(which), i = graphIndex(c, step), stale = staleness(r, c.steps[i], step, "graphed");
      staleAt[which] = stale;
      panels.push({ id: "circuit-" + which, weights: stale && stale.hidden ? blank(c.weights[i]) : c.weights[i], scale,
        diff: false, stale, title: `${S.compare ? (which === "a" ? "A: " : "B: ") : ""}graph at step ${c.steps[i]}` +
          (c.steps[i] !== step ? ` (checkpoint ${step})` : "") });
    }
    if (S.diff) {
      const ia = graphIndex(c, stepOf("a")), ib = graphIndex(c, stepOf("b"));
      const delta = c.weights[ib].map((w, j) => (w === null || c.weights[ia][j] === null ? null : w - c.weights[ia][j]));
      // A diff of a graph drawn from a far-away step would pass for the change between the selected steps.
      const hidden = [staleAt.a, staleAt.b].find((x) => x && x.hidden);
      panels.push({ id: "circuit-diff", weights: hidden ? blank(delta) : delta, scale: maxAbs([delta]), diff: true,
        stale: hidden || null, title: `diff: step ${c.steps[ib]} minus step ${c.steps[ia]} (green: stronger, purple: weaker)` });
    }
    // Every panel's box exists once made and is shown or hidden before any plot is drawn, so each
    // plot is drawn at its final width.
    for (const id of ["circuit-a", "circuit-b", "circuit-diff"]) {
      let wrap = $(id + "-wrap");
      if (!wrap) {
        wrap = document.createElement("div");
        wrap.id = id + "-wrap";
        box.appendChild(wrap);
        plotDiv(wrap, id);
      }
      wrap.hidden = !panels.some((p) => p.id === id);
    }
    for (const p of panels) {
      const wrap = $(p.id + "-wrap"), el = $(p.id);
      const g = markStale(graphFigure(c, p.weights, p.scale, p.title, p.diff), p.stale);
      draw(el, g.data, g.layout);
      let list = $(p.id + "-edges");
      if (!list) { list = document.createElement("div"); list.id = p.id + "-edges"; list.className = "edges"; wrap.appendChild(list); }
      list.textContent = `${g.shown} edges shown; strongest:\n` + strongest(c, p.weights, 5);
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

  // --- share: the state in the URL fragment, provenance, runs side by side ----------------------
  // A fragment is anyone's text: each value is only looked up among the page's own names and steps
  // (an unknown one is ignored), never inserted as markup.

  const HEAD_NAME = /^L(\d+)H(\d+)$/;
  const WHOLE = /^\d+$/;

  function stateFragment() {
    const r = run(), params = [["tab", S.tab], ["run", r.name], ["a", stepOf("a")]];
    if (S.compare) params.push(["b", stepOf("b")]);
    if (S.diff) params.push(["diff", "1"]);
    if (S.logx) params.push(["logx", "1"]);
    const head = S.head[r.name], circuit = r.circuits[S.circuit[r.name]];
    if (S.probe[r.name]) params.push(["probe", S.probe[r.name]]);
    if (head) params.push(["head", `L${head.layer}H${head.head}`]);
    if (circuit) params.push(["circuit", circuit.key]);
    if (S.quantity) params.push(["quantity", S.quantity]);
    if (S.band !== "minmax") params.push(["band", S.band]);
    if (S.shown) params.push(["runs", JSON.stringify(D.runs.map((x) => x.name).filter((n) => S.shown.has(n)))]);
    // The picked token of each of the run's token strips, as example.position (tokens.js keys them "run#example").
    const picks = Object.entries(S.picked).filter(([k]) => k.startsWith(r.name + "#") && WHOLE.test(k.slice(r.name.length + 1)))
      .map(([k, pos]) => `${k.slice(r.name.length + 1)}.${pos}`);
    if (picks.length) params.push(["tokens", picks.join(",")]);
    return "#" + params.map(([k, v]) => `${k}=${encodeURIComponent(String(v))}`).join("&");
  }

  function writeFragment() {
    const fragment = stateFragment();
    if (fragment === location.hash) return;
    try {
      history.replaceState(history.state, "", fragment);
    } catch (err) {
      API.fragmentError = String(err);  // a sandboxed frame may have no history to write: the page still works
    }
  }

  // Every change of state redraws something (or switches the tab): the fragment follows, once per change.
  let fragmentTimer = 0;
  function scheduleFragment() {
    if (!fragmentTimer) fragmentTimer = setTimeout(() => { fragmentTimer = 0; writeFragment(); }, 0);
  }

  function readFragment(hash) {
    const params = new Map();
    for (const part of String(hash).replace(/^#/, "").split("&")) {
      const at = part.indexOf("=");
      if (at <= 0) continue;
      try {
        params.set(decodeURIComponent(part.slice(0, at)), decodeURIComponent(part.slice(at + 1)));
      } catch (err) {
        // a malformed %-escape: that value is ignored
      }
    }
    return params;
  }

  const stepIndex = (r, text) => (WHOLE.test(text || "") ? r.steps.indexOf(+text) : -1);

  /** The page in the state a fragment names; what it names that this page lacks is ignored. */
  function restoreState(params) {
    const name = runsByName.has(params.get("run")) ? params.get("run") : (S.run || D.default_run);
    const r = runsByName.get(name), tab = params.get("tab");
    if (Object.hasOwn(TABS, tab) && !(tab === "runs" && D.runs.length < 2)) S.tab = tab;
    if (headProbes(r).includes(params.get("probe"))) S.probe[name] = params.get("probe");
    const head = HEAD_NAME.exec(params.get("head") || "");
    if (head && +head[1] < r.model.n_layers && +head[2] < r.model.n_heads) S.head[name] = { layer: +head[1], head: +head[2] };
    const circuit = r.circuits.findIndex((c) => c.key === params.get("circuit"));
    if (circuit >= 0) S.circuit[name] = circuit;
    S.logx = params.get("logx") === "1";
    $("logx").checked = S.logx;
    if (quantities().some((q) => q.id === params.get("quantity"))) S.quantity = params.get("quantity");
    if (["minmax", "std", "none"].includes(params.get("band"))) S.band = params.get("band");
    try {
      const shown = JSON.parse(params.get("runs") || "null");
      if (Array.isArray(shown)) S.shown = new Set(shown.filter((n) => runsByName.has(n)));
    } catch (err) {
      // not a list of run names: every run is shown
    }
    for (const part of (params.get("tokens") || "").split(",")) {
      const pick = /^(\d+)\.(\d+)$/.exec(part), examples = r.strip ? r.strip.examples : [];
      if (pick && +pick[1] < examples.length && +pick[2] < examples[+pick[1]].tokens.length) S.picked[`${name}#${pick[1]}`] = +pick[2];
    }
    const a = stepIndex(r, params.get("a")), b = stepIndex(r, params.get("b"));
    S.compare = b >= 0;
    S.diff = S.compare && params.get("diff") === "1";
    $("compare").checked = S.compare;
    $("diff").checked = S.diff;
    $("row-b").hidden = !S.compare;
    setRun(name);
    if (a >= 0 || b >= 0) {
      if (a >= 0) { S.a = a; $("slider-a").value = String(a); }
      if (b >= 0) { S.b = b; $("slider-b").value = String(b); }
      $("step-a").textContent = stepLabel("a");
      $("step-b").textContent = stepLabel("b");
      renderTab(false);
    }
  }

  function copyLink() {
    writeFragment();
    const link = location.href, status = $("copy-status");
    const fallback = () => {  // no clipboard API (an insecure context or a denied permission): the old way
      const box = document.createElement("textarea");
      box.value = link;
      document.body.appendChild(box);
      box.select();
      let copied = false;
      try { copied = document.execCommand("copy"); } catch (err) { copied = false; }
      box.remove();
      status.textContent = copied ? "link copied" : `copy this link: ${link}`;
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(link).then(() => { status.textContent = "link copied"; }, fallback);
    } else fallback();
  }

  // --- provenance ---

  /** `value` as dotted keys over its nested objects (`train.lr`); lists stay whole values. */
  function flatten(value, prefix, out) {
    out = out || {};
    for (const [k, v] of Object.entries(value || {})) {
      if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, `${prefix}${k}.`, out);
      else out[prefix + k] = v;
    }
    return out;
  }

  const shownValue = (v) => (v === undefined ? "(absent)" : typeof v === "string" ? v : JSON.stringify(v));
  const provenanceOf = (r) => flatten({ ...r.provenance.config, versions: r.provenance.versions,
                                        device: r.provenance.device }, "");

  /** Rows `[key, value of each run]` of the config keys whose values differ between `runs`. */
  function configDiff(runs) {
    const flat = runs.map(provenanceOf), keys = [...new Set(flat.flatMap((f) => Object.keys(f)))].sort();
    return keys.map((k) => [k, ...flat.map((f) => shownValue(f[k]))])
      .filter((row) => row.slice(2).some((v) => v !== row[1]));
  }

  function diffTable(runs) {
    const rows = configDiff(runs);
    if (!rows.length) return '<div class="info">Their configs and versions are the same.</div>';
    return '<table class="results config-diff"><tr><th>key</th>' + runs.map((r) => `<th>${esc(r.name)}</th>`).join("") +
      "</tr>" + rows.map((row) => "<tr>" + row.map((v) => `<td>${esc(v)}</td>`).join("") + "</tr>").join("") + "</table>";
  }

  function configTable(flat) {
    return '<table class="results">' + Object.entries(flat).map(([k, v]) =>
      `<tr><td>${esc(k)}</td><td>${esc(shownValue(v))}</td></tr>`).join("") + "</table>";
  }

  function renderProvenance() {
    const r = run(), p = r.provenance, box = $("provenance-body");
    if (!p) { box.textContent = "This page records no provenance."; return; }
    const v = p.versions, seeds = Object.entries(p.seeds);
    const toolkit = v.interp || v["interp-dynamics"] || null, commit = v.git_commit || v.commit || v.git || null;
    const sections = Object.entries(p.config).map(([k, c]) => [k, c && typeof c === "object" && !Array.isArray(c)
      ? flatten(c, "") : { [k]: c }]);
    const others = D.runs.filter((x) => x.name !== r.name);
    const diffWith = others.some((x) => x.name === S.provenanceWith) ? S.provenanceWith : "";
    box.innerHTML = `<div><b>run ${esc(r.name)}</b>: ${esc(r.status)}</div>` +
      `<div>seeds: ${seeds.length ? seeds.map(([k, s]) => `${esc(k)} ${esc(shownValue(s))}`).join(", ") : "none recorded"}` +
      `; device: ${esc(p.device || "not recorded")}</div>` +
      `<div>versions when trained: ${Object.keys(v).length ? Object.entries(v).map(([k, x]) =>
        `${esc(k)} ${esc(shownValue(x))}`).join(", ") : "not recorded"}; toolkit: ${esc(toolkit || "not recorded")}` +
      `; git commit: ${esc(commit || "not recorded")} (this page was written by interp ${esc(D.toolkit_version ||
        "(version unknown)")})</div>` +
      sections.map(([k, flat]) => `<details class="config"><summary>${esc(k)}</summary>${configTable(flat)}</details>`)
        .join("") +
      (D.analysis_config ? `<details class="config"><summary>analysis ${esc(D.analysis || "")} (its own config)` +
        `</summary>${configTable(flatten(D.analysis_config, ""))}</details>` : "") +
      (others.length ? '<div class="toolbar"><label>config diff with run <select id="provenance-with">' +
        `<option value="">(none)</option>${others.map((x) => `<option value="${esc(x.name)}">${esc(x.name)}</option>`)
          .join("")}</select></label></div>` : "") +
      (diffWith ? diffTable([r, runsByName.get(diffWith)]) : "");
    const pick = $("provenance-with");
    if (pick) {
      pick.value = diffWith;
      pick.addEventListener("change", () => { S.provenanceWith = pick.value; renderProvenance(); });
    }
  }

  // --- runs side by side ---

  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
                   "#7f7f7f"];

  /** Every metric and probe column of any run, as `{id, label, kind, key, column}` (`id`: its fragment value). */
  let quantityList = null;
  function quantities() {
    if (quantityList) return quantityList;
    const seen = new Map();
    for (const r of D.runs) {
      for (const key of Object.keys(r.metrics)) seen.set(JSON.stringify(["metric", key]), { label: key, kind: "metric", key });
      for (const [key, p] of Object.entries(r.probes)) {
        for (const column of p.columns) {
          seen.set(JSON.stringify(["probe", key, column]), { label: `probe ${key}: ${column}`, kind: "probe", key, column });
        }
      }
    }
    quantityList = [...seen].map(([id, q]) => ({ id, ...q }));
    return quantityList;
  }

  function defaultQuantity() {
    const qs = quantities();
    const loss = qs.find((q) => q.kind === "metric" && q.key.includes("loss") && !q.key.startsWith("train/"));
    return (loss || qs[0] || {}).id || null;
  }

  /** `{x, y}` of quantity `q` in run `r`, or null where the run does not have it. */
  function seriesOf(r, q) {
    if (q.kind === "metric") {
      const m = r.metrics[q.key];
      return m ? { x: m.steps, y: m.values } : null;
    }
    const p = r.probes[q.key], j = p ? p.columns.indexOf(q.column) : -1;
    return j < 0 ? null : { x: p.steps, y: p.values.map((row) => row[j]) };
  }

  /** Mean, band and count over runs at the steps every run has (nulls left out). */
  function seedStats(series, band) {
    const common = series.slice(1).reduce((steps, s) => steps.filter((x) => s.x.includes(x)), series[0].x.slice());
    const out = { x: [], mean: [], lo: [], hi: [] };
    for (const step of common) {
      const ys = series.map((s) => s.y[s.x.indexOf(step)]).filter((y) => y !== null && y !== undefined);
      if (!ys.length) continue;
      const mean = ys.reduce((a, y) => a + y, 0) / ys.length;
      const sd = Math.sqrt(ys.reduce((a, y) => a + (y - mean) ** 2, 0) / ys.length);
      out.x.push(step);
      out.mean.push(mean);
      out.lo.push(band === "std" ? mean - sd : Math.min(...ys));
      out.hi.push(band === "std" ? mean + sd : Math.max(...ys));
    }
    return out;
  }

  /** A group's name from its runs' names: what they share, with `*` where they differ (`64-cyclic-s*`). */
  function groupName(names) {
    let pre = names[0], suf = names[0];
    for (const n of names) {
      while (!n.startsWith(pre)) pre = pre.slice(0, -1);
      while (!n.endsWith(suf)) suf = suf.slice(1);
    }
    suf = suf.slice(Math.max(0, pre.length + suf.length - Math.min(...names.map((n) => n.length))));
    return pre || suf ? `${pre}*${suf}` : names.join(", ");
  }

  function hexAlpha(hex, alpha) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${alpha})`;
  }

  /** The overlay traces of quantity `q` over the shown runs: runs of one seed group as a mean and a band. */
  function overlayTraces(q) {
    const shown = D.runs.filter((r) => S.shown.has(r.name));
    const have = new Map(shown.map((r) => [r.name, seriesOf(r, q)]).filter((p) => p[1]));
    const grouped = new Set(), traces = [];
    let color = 0;
    if (S.band !== "none") {
      for (const names of D.seed_groups || []) {
        const members = names.filter((n) => have.has(n));
        if (members.length < 2) continue;
        const c = PALETTE[color++ % PALETTE.length], st = seedStats(members.map((n) => have.get(n)), S.band);
        const name = `${groupName(members)}: mean of ${members.length} seeds`;
        const band = S.band === "std" ? "\u00b1 1 sd" : "min-max";
        members.forEach((n) => grouped.add(n));
        traces.push({ type: "scatter", mode: "lines", x: st.x, y: st.lo, line: { width: 0, color: c }, legendgroup: name,
                      showlegend: false, hoverinfo: "skip" });
        traces.push({ type: "scatter", mode: "lines", x: st.x, y: st.hi, fill: "tonexty", fillcolor: hexAlpha(c, 0.18),
                      line: { width: 0, color: c }, legendgroup: name, name: `${band} band`, showlegend: false,
                      hoverinfo: "skip" });
        for (const n of members) {
          const s = have.get(n);
          traces.push({ type: "scatter", mode: seriesMode(s.x), x: s.x, y: s.y, name: n, legendgroup: name,
                        showlegend: false, line: { width: 0.8, color: hexAlpha(c, 0.45) } });
        }
        traces.push({ type: "scatter", mode: seriesMode(st.x), x: st.x, y: st.mean, name: `${name} (${band} band)`,
                      legendgroup: name, line: { width: 2.5, color: c } });
      }
    }
    for (const r of shown) {
      const s = have.get(r.name);
      if (!s || grouped.has(r.name)) continue;
      traces.push({ type: "scatter", mode: seriesMode(s.x), x: s.x, y: s.y, name: r.name,
                    line: { width: 1.6, color: PALETTE[color++ % PALETTE.length] } });
    }
    return { traces, missing: shown.filter((r) => !have.has(r.name)).map((r) => r.name) };
  }

  let runsBuilt = false;
  /** The overlay's choices: metrics, then each probe's columns under the probe's name, those
      whose label holds `filter` (a sweep of many runs and per-head probes has thousands); the
      chosen one always stays listed. */
  function fillQuantities(filter) {
    const pick = $("runs-quantity"), wanted = String(filter).trim().toLowerCase(), groups = new Map();
    for (const q of quantities()) {
      if (wanted && !q.label.toLowerCase().includes(wanted) && q.id !== S.quantity) continue;
      const group = q.kind === "metric" ? "metrics" : `probe ${q.key}`;
      if (!groups.has(group)) groups.set(group, []);
      groups.get(group).push(`<option value="${esc(q.id)}">${esc(q.kind === "metric" ? q.key : q.column)}</option>`);
    }
    pick.innerHTML = [...groups].map(([g, options]) => `<optgroup label="${esc(g)}">${options.join("")}</optgroup>`).join("");
    pick.value = S.quantity || "";
  }

  function buildRuns() {
    if (!S.shown) S.shown = new Set(D.runs.map((r) => r.name));
    if (!S.quantity) S.quantity = defaultQuantity();
    const pick = $("runs-quantity");
    fillQuantities("");
    pick.addEventListener("change", () => { S.quantity = pick.value; renderRuns(true); });
    $("runs-filter").addEventListener("input", (e) => fillQuantities(e.target.value));
    $("runs-band").addEventListener("change", (e) => { S.band = e.target.value; renderRuns(true); });
    $("runs-probe").addEventListener("change", (e) => { S.runsProbe = e.target.value; renderRuns(true); });
    const chips = $("runs-pick");
    for (const r of D.runs) {
      const label = document.createElement("label"), box = document.createElement("input");
      label.className = "chip";
      box.type = "checkbox";
      box.dataset.run = r.name;
      box.addEventListener("change", () => {
        if (box.checked) S.shown.add(r.name); else S.shown.delete(r.name);
        renderRuns(true);
      });
      label.append(box, " " + r.name);
      chips.appendChild(label);
    }
    runsBuilt = true;
  }

  function renderRuns() {
    if (!runsBuilt) buildRuns();
    $("runs-quantity").value = S.quantity || "";
    $("runs-band").value = S.band;
    for (const box of $("runs-pick").querySelectorAll("input")) box.checked = S.shown.has(box.dataset.run);
    const q = quantities().find((x) => x.id === S.quantity), overlay = plotDiv($("runs-overlay"), "runs-plot");
    note($("runs-overlay"), q ? "" : "These runs logged no metric and cached no probe.");
    if (q) {
      const { traces, missing } = overlayTraces(q);
      draw(overlay, traces, lineLayout(q.label + (missing.length ? ` (not in ${missing.join(", ")})` : ""),
        { shapes: cursorShapes(S.run, S.logx), height: 380, hovermode: "closest",
          yaxis: { title: { text: q.kind === "metric" ? q.key : q.column }, zeroline: false, autorange: true } }));
    }
    const shown = D.runs.filter((r) => S.shown.has(r.name));
    $("runs-diff").innerHTML = shown.length > 1
      ? `<h2>What differs between the shown runs</h2>${diffTable(shown)}` : "";
    renderRunGrids(shown);
  }

  /** One layer x head grid per shown run at the step of slider A, on one colour scale. */
  function renderRunGrids(shown) {
    const keys = [...new Set(shown.flatMap((r) => headProbes(r)))], select = $("runs-probe");
    if (!keys.includes(S.runsProbe)) S.runsProbe = keys.find((k) => !k.startsWith("example.")) || keys[0] || null;
    select.innerHTML = keys.map((k) => `<option value="${esc(k)}">${esc(k)}</option>`).join("");
    select.value = S.runsProbe || "";
    const box = $("runs-grids"), step = stepOf("a"), key = S.runsProbe;
    const with_ = shown.filter((r) => key && headProbes(r).includes(key));
    note(box, with_.length ? "" : "No shown run has a per-head probe.");
    $("runs-grid-info").textContent = key ? `${key} of each run at step ${step} (the nearest probed step where a ` +
      "run has no row there); one colour scale for all" : "";
    box.querySelectorAll(".plot").forEach((el) => { el.hidden = !with_.some((r) => el.id === `runs-grid-${D.runs.indexOf(r)}`); });
    if (!with_.length) return;
    const ranges = with_.map((r) => probeRange(r.probes[key]));
    const lo = Math.min(...ranges.map((x) => x[0])), hi = Math.max(...ranges.map((x) => x[1]));
    for (const r of with_) {
      const g = gridFigure(r, key, step, null, r.name);
      g.data[0].zmin = lo;
      g.data[0].zmax = hi;
      draw(plotDiv(box, `runs-grid-${D.runs.indexOf(r)}`), g.data, g.layout);
    }
  }

  // --- tabs and events -----------------------------------------------------------------------

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

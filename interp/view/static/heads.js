/* interp view: the Heads tab. A per-head probe as a layer x head grid beside the chosen head's attention
   on the example, for each shown step; every head's probe value over training (head x checkpoint);
   every head's attention at the step; the play button that steps slider A through the checkpoints.
   The grid and the head pairs also serve the headline and the Runs tab. Loaded before view.js, which
   calls window.interpViewHeads with the page's helpers. Labels go through esc or plotly's text escaping. */
window.interpViewHeads = function (lib) {
  "use strict";
  const { $, S, D, run, stepOf, sides, nearest, fmt, esc, COLOR, FONT, ATTENTION_SCALE, HEAD_NAME, headPattern,
          patternHover, logZero, cursorShapes, curveFigure, quantityOf, staleness, markStale, draw, plotDiv, note,
          inflight, setStep } = lib;

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

  return { headProbes, fillProbeSelect, probeRange, defaultHead, gridFigure, renderHeadPairs, renderHeads, initPlay };
};

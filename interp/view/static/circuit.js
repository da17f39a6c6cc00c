/* interp view: the Circuit tab. A run's saved circuit graphs (or the fallback drawn from its example
   patterns) at each shown step, edges cut below a share of the graph's scale, and the diff between the
   steps. Loaded before view.js, which calls window.interpViewCircuit with the page's helpers. Labels go
   through esc or plotly's text escaping. */
window.interpViewCircuit = function (lib) {
  "use strict";
  const { $, S, run, stepOf, sides, nearest, fmt, esc, COLOR, FONT, staleness, markStale, draw, plotDiv, note } = lib;

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

  return { fillCircuitSelect, renderCircuit };
};

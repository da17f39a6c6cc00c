/* interp view: the Tokens tab. Each example (the analysis's, then your own: interp view --text/--tokens/
   --example-batch) as a strip of tokens coloured by the loss of the next token at the slider's step;
   hovering or clicking a token shows its top-k predictions, the logit lens and the direct logit
   attribution of each head and MLP. Data: run.strip (interp/view/examples.py). Loaded before view.js,
   which calls window.interpViewTokens with the page's helpers. Every label goes in as textContent. */
window.interpViewTokens = function (lib) {
  "use strict";
  const { $, S, run, stepOf, nearest, F16, scheduleFragment } = lib;
  const picked = S.picked;  // per run and example ("run#example"): the position shown; in the page's link

  const decodedArrays = new Map();
  /** One base64 little-endian array of the strip (float16, or ids as uint16/int32). */
  function decode(b64, kind) {
    if (decodedArrays.has(b64)) return decodedArrays.get(b64);
    const bin = atob(b64), bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    let out;
    if (kind === "f16") {
      const half = new Uint16Array(bytes.buffer);
      out = new Float32Array(half.length);
      for (let i = 0; i < half.length; i++) out[i] = F16[half[i]];
    } else {
      out = kind === "uint16" ? new Uint16Array(bytes.buffer) : new Int32Array(bytes.buffer);
    }
    decodedArrays.set(b64, out);
    return out;
  }

  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const num = (v, digits) => (Number.isFinite(v) ? Number(v.toPrecision(digits || 3)).toString() : "n/a");

  /** White (loss 0) to red (the example's largest loss over the shown steps). */
  function lossColor(v, max) {
    if (!Number.isFinite(v)) return "#f3f5f8";
    const t = Math.max(0, Math.min(1, v / (max || 1)));
    const g = Math.round(255 - 200 * t), b = Math.round(255 - 215 * t);
    return `rgb(255,${g},${b})`;
  }

  /** Index into strip.steps of the slider's step, and the step itself. */
  function stripIndex(strip) {
    const i = nearest(strip.steps, stepOf("a"));
    return { i, step: strip.steps[i] };
  }

  function label(strip, id) {
    const known = strip.vocab[String(id)];
    return known === undefined ? String(id) : known;
  }

  function arrays(strip, ex, i) {
    const ids = strip.id_dtype;
    return {
      losses: decode(ex.losses[i], "f16"), topIds: decode(ex.top_ids[i], ids), topProbs: decode(ex.top_probs[i], "f16"),
      lensProbs: decode(ex.lens_probs[i], "f16"), lensRanks: decode(ex.lens_ranks[i], ids),
      lensTop: decode(ex.lens_top[i], ids), dla: decode(ex.dla[i], "f16"),
    };
  }

  function table(header, rows) {
    const t = el("table", "results tokens-table"), head = el("tr");
    for (const h of header) head.appendChild(el("th", "", h));
    t.appendChild(head);
    for (const row of rows) {
      const tr = el("tr");
      for (const cell of row) {
        const td = el("td");
        if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell;
        tr.appendChild(td);
      }
      t.appendChild(tr);
    }
    return t;
  }

  function bar(value, scale, color) {
    const box = el("span", "tokens-bar");
    const fill = el("span", "tokens-bar-fill");
    fill.style.width = `${Math.min(100, (100 * Math.abs(value)) / (scale || 1))}%`;
    fill.style.background = color;
    box.appendChild(fill);
    return box;
  }

  function detail(strip, ex, a, pos) {
    const box = el("div", "tokens-detail");
    const T = ex.tokens.length, k = strip.k, E = strip.lens.length, hasNext = pos < T - 1;
    const next = hasNext ? ex.tokens[pos + 1] : null;
    box.appendChild(el("div", "pair-title", `position ${pos}: '${ex.labels[pos]}'` +
      (hasNext ? ` \u2192 next token '${ex.labels[pos + 1]}' (loss ${num(a.losses[pos])} nats)` :
        " (the last position: no next token to score)")));
    const row = el("div", "row");
    const top = [];
    for (let j = 0; j < k; j++) {
      const id = a.topIds[pos * k + j], p = a.topProbs[pos * k + j];
      top.push([String(j + 1), label(strip, id) + (id === next ? "  (the next token)" : ""), num(p), bar(p, 1, "#1f77b4")]);
    }
    const topBox = el("div");
    topBox.appendChild(el("h2", "", `top ${k} predictions`));
    topBox.appendChild(table(["#", "token", "probability", ""], top));
    row.appendChild(topBox);
    const lens = [];
    for (let e = 0; e < E; e++) {
      const at = e * T + pos;
      lens.push([strip.lens[e], label(strip, a.lensTop[at]), hasNext ? num(a.lensProbs[at]) : "n/a",
                 hasNext ? String(a.lensRanks[at]) : "n/a"]);
    }
    const lensBox = el("div");
    lensBox.appendChild(el("h2", "", "logit lens (final norm + unembedding of each residual stream)"));
    lensBox.appendChild(table(["stream", "top-1 token", "p(next token)", "rank of next token"], lens));
    row.appendChild(lensBox);
    const dlaBox = el("div");
    dlaBox.appendChild(el("h2", "", "direct logit attribution to the next token"));
    if (hasNext) {
      const values = strip.components.map((c, j) => [c, a.dla[j * T + pos]]);
      const scale = Math.max(...values.map((v) => Math.abs(v[1])), 1e-9);
      dlaBox.appendChild(table(["component", "logit", ""], values.map(([c, v]) =>
        [c, num(v), bar(v, scale, v >= 0 ? "#1f77b4" : "#d62728")])));
      dlaBox.appendChild(el("div", "caption", "centred logits (compatibility mode); the components sum to the " +
        "next token's logit minus the mean logit, less the unembedding bias's share"));
    } else {
      dlaBox.appendChild(el("div", "caption", "n/a: no next token"));
    }
    row.appendChild(dlaBox);
    box.appendChild(row);
    return box;
  }

  function legend(max) {
    const box = el("div", "tokens-legend");
    box.appendChild(el("span", "", "loss of the next token: 0"));
    const ramp = el("span", "tokens-ramp");
    ramp.style.background = `linear-gradient(to right, ${lossColor(0, 1)}, ${lossColor(0.5, 1)}, ${lossColor(1, 1)})`;
    box.appendChild(ramp);
    box.appendChild(el("span", "", `${num(max)} nats (the example's largest over the shown steps)`));
    return box;
  }

  function render() {
    const container = $("tokens");
    container.innerHTML = "";
    const r = run(), strip = r.strip;
    if (!strip || !strip.examples.length) {
      container.appendChild(el("div", "empty", "No token strips for this run in this page (its size budget went " +
        "to other runs); view the run's own directory to see them."));
      return;
    }
    const { i, step } = stripIndex(strip);
    $("tokens-info").textContent = `at step ${step}` + (step === stepOf("a") ? "" :
      ` (the nearest of the ${strip.steps.length} checkpoints with token readouts to step ${stepOf("a")})`) +
      "; hover or click a token for its predictions, logit lens and direct logit attribution";
    strip.examples.forEach((ex, n) => {
      const a = arrays(strip, ex, i), key = `${r.name}#${n}`;
      const section = el("div", "tokens-example");
      section.dataset.example = String(n);
      section.appendChild(el("div", "pair-title", (ex.source === "task" ? "task example: " : "your input: ") +
        ex.description));
      section.appendChild(legend(ex.loss_max));
      const strips = el("div", "tokens-strip");
      const panel = el("div", "tokens-panel");
      const show = (pos) => { panel.innerHTML = ""; panel.appendChild(detail(strip, ex, a, pos)); };
      ex.tokens.forEach((_, pos) => {
        const hasNext = pos < ex.tokens.length - 1;
        const box = el("span", "token", ex.labels[pos]);
        box.dataset.pos = String(pos);
        box.style.background = lossColor(hasNext ? a.losses[pos] : NaN, ex.loss_max);
        box.title = hasNext ? `loss ${num(a.losses[pos])} nats predicting '${ex.labels[pos + 1]}'` : "last position";
        if (picked[key] === pos) box.classList.add("picked");
        box.addEventListener("mouseenter", () => show(pos));
        box.addEventListener("mouseleave", () => { if (picked[key] !== undefined) show(picked[key]); });
        box.addEventListener("click", () => {
          picked[key] = pos;
          strips.querySelectorAll(".picked").forEach((b) => b.classList.remove("picked"));
          box.classList.add("picked");
          show(pos);
          scheduleFragment();
        });
        strips.appendChild(box);
      });
      section.appendChild(strips);
      section.appendChild(panel);
      if (picked[key] !== undefined) show(picked[key]);
      container.appendChild(section);
    });
  }

  return render;
};

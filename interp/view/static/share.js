/* interp view: what the page shares and compares. The page's state in the URL fragment (written after
   every change, restored on load and on a new fragment, copied with "copy link"), the run's provenance
   (config, seeds, versions, a config diff with another run) and the Runs tab (one quantity over the
   shown runs, seed groups as a mean and a band, a grid per run). Loaded before view.js, which calls
   window.interpViewShare with the page's helpers. Labels go through esc or plotly's text escaping. */
window.interpViewShare = function (lib) {
  "use strict";
  const { $, S, D, API, run, runsByName, stepOf, HEAD_NAME, esc, draw, plotDiv, note, lineLayout, cursorShapes,
          seriesMode, headProbes, probeRange, gridFigure, setRun, stepLabel, renderTab, hasTab } = lib;

  // --- the state in the URL fragment ---
  // A fragment is anyone's text: each value is only looked up among the page's own names and steps
  // (an unknown one is ignored), never inserted as markup.

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
    if (hasTab(tab) && !(tab === "runs" && D.runs.length < 2)) S.tab = tab;
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

  return { scheduleFragment, stateFragment, readFragment, restoreState, copyLink, renderProvenance, renderRuns };
};

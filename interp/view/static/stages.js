/* interp view: the Stages tab. The run's LLC over checkpoints with a +-1 sd band over SGLD chains,
   untrusted estimates hollow, the stage boundaries (llc_stages, computed when the page was written)
   as labelled lines, the loss phase marks and the slider's step; below it the essential-dynamics
   trajectory (PC1 vs PC2, PC2 vs PC3) with its turning points and the slider's step, and the change
   points side by side. Data: run.stages (interp/view/stages.py). Loaded before view.js, which calls
   window.interpViewStages with the page's helpers. Labels go through esc or plotly's text escaping. */
window.interpViewStages = function (lib) {
  "use strict";
  const { $, S, run, stepOf, sides, nearest, draw, plotDiv, note, cursorShapes, lineLayout, esc, fmt, COLOR,
          FONT, honestLogSteps, logZero } = lib;
  const BOUNDARY = "stage boundary";
  const BOUNDARY_COLOR = "#2ca02c";
  const UNTRUSTED = "#b35900";

  /** The LLC curve: band, estimates (hollow where not trustworthy), boundaries, phase marks, cursor. */
  function llcFigure(r, st, log) {
    const band = st.steps.map((s, i) => [s, st.llc[i], st.llc_std[i]])
      .filter(([s, v, sd]) => v !== null && sd !== null && (!log || s > 0));
    const text = st.steps.map((s, i) => `step ${s}: LLC ${fmt(st.llc[i])} \u00b1 ${fmt(st.llc_std[i])}` +
      (st.trustworthy[i] ? "" : " (not trustworthy)"));
    const curve = { type: "scatter", mode: "lines+markers", name: "LLC (mean over chains; hollow: not trustworthy)",
      x: st.steps, y: st.llc, text, hovertemplate: "%{text}<extra></extra>", line: { width: 2, color: "#1d2330" },
      marker: { size: 9, color: "#1d2330", symbol: st.trustworthy.map((t) => (t ? "circle" : "circle-open")),
                line: { width: 2, color: st.trustworthy.map((t) => (t ? "#1d2330" : UNTRUSTED)) } } };
    const traces = [
      { type: "scatter", mode: "lines", name: "llc - 1 sd", x: band.map((b) => b[0]), y: band.map((b) => b[1] - b[2]),
        line: { width: 0 }, showlegend: false, hoverinfo: "skip" },
      { type: "scatter", mode: "lines", name: "\u00b1 1 sd over chains", x: band.map((b) => b[0]),
        y: band.map((b) => b[1] + b[2]), fill: "tonexty", fillcolor: "rgba(31,119,180,0.2)", line: { width: 0 },
        hoverinfo: "skip" },
    ];
    const layout = lineLayout(`LLC over training (${st.steps.length} checkpoints)`, { height: 380, hovermode: "closest",
      shapes: cursorShapes(r.name, log), annotations: [], legend: { orientation: "h", y: -0.22, font: { size: 11 } } });
    layout.yaxis = Object.assign({}, layout.yaxis, { title: { text: "local learning coefficient" } });
    if (log) layout.xaxis.title.text = "step (log)";
    for (const s of st.stages) {
      if (s.kind !== "plateau" || (log && s.start <= 0)) continue;
      layout.shapes.push({ name: "plateau", type: "rect", xref: "x", yref: "paper", x0: s.start, x1: s.end, y0: 0, y1: 1,
                           layer: "below", fillcolor: "rgba(44,160,44,0.07)", line: { width: 0 } });
    }
    for (const b of st.boundaries) {
      layout.shapes.push({ name: BOUNDARY, type: "line", xref: "x", yref: "paper", x0: b.step, x1: b.step, y0: 0, y1: 1,
                           line: { color: BOUNDARY_COLOR, width: 1.5, dash: "dash" } });
      layout.annotations.push({ name: BOUNDARY, x: log ? Math.log10(Math.max(b.step, 1)) : b.step, y: 1, xref: "x",
        yref: "paper", text: `${b.kind} (step ${b.step})`, showarrow: false, textangle: -90, xanchor: "right",
        yanchor: "top", font: { size: 10, color: BOUNDARY_COLOR } });
    }
    const data = [...traces, curve];
    return { data: log ? honestLogSteps(data, layout, logZero([st.steps, r.steps])) : data, layout };
  }

  /** Log step as a colour, with colour-bar ticks at a few of the steps. */
  function stepColours(steps) {
    const value = (s) => Math.log10(Math.max(s, 1));
    const ticks = [...new Set([0, Math.floor(steps.length / 2), steps.length - 1].map((i) => steps[i]))];
    return { color: steps.map(value), tickvals: ticks.map(value), ticktext: ticks.map(String) };
  }

  /** The trajectory on components `i` and `j`: points coloured by log step, turning points, the slider's step(s). */
  function trajectoryFigure(st, i, j) {
    const d = st.dynamics, x = d.coords.map((c) => c[i]), y = d.coords.map((c) => c[j]);
    const colours = stepColours(d.steps), text = d.steps.map((s) => `step ${s}`);
    const data = [
      { type: "scatter", mode: "lines", x, y, line: { color: "#c9ccd1", width: 1 }, hoverinfo: "skip", showlegend: false },
      { type: "scatter", mode: "markers", name: "checkpoints", x, y, text, hovertemplate: "%{text}<extra></extra>",
        showlegend: false, marker: { size: 8, color: colours.color, colorscale: "Viridis",
          colorbar: { thickness: 10, title: { text: "step (log)", side: "right" }, tickvals: colours.tickvals,
                      ticktext: colours.ticktext } } },
    ];
    const turns = d.turning_points.map((t) => d.steps.indexOf(t.step)).filter((k) => k >= 0);
    data.push({ type: "scatter", mode: "markers", name: "turning points", x: turns.map((k) => x[k]), y: turns.map((k) => y[k]),
      text: turns.map((k, n) => `turning point at step ${d.steps[k]} (${fmt(d.turning_points[n].angle, 3)} degrees)`),
      hovertemplate: "%{text}<extra></extra>", marker: { symbol: "x", size: 12, color: "#1d2330" } });
    const shown = [];
    for (const which of sides()) {
      const k = nearest(d.steps, stepOf(which));
      shown.push(d.steps[k]);
      data.push({ type: "scatter", mode: "markers", name: `step ${which.toUpperCase()} (${d.steps[k]})`,
        x: [x[k]], y: [y[k]], hoverinfo: "skip",
        marker: { symbol: "circle-open", size: 18, line: { width: 3, color: COLOR[which] }, color: COLOR[which] } });
    }
    const axis = (k) => ({ title: { text: `PC${k + 1} (${fmt(100 * d.explained[k], 3)}% of the variance)` },
                           zeroline: false, autorange: true });
    const layout = { title: { text: `Essential dynamics: PC${i + 1} vs PC${j + 1}, at step ${shown.join(" and ")}`,
      font: { size: 13 }, x: 0.01, xanchor: "left" }, font: FONT, height: 380, hovermode: "closest",
      margin: { l: 56, r: 20, t: 34, b: 44 }, xaxis: axis(i), yaxis: axis(j),
      legend: { orientation: "h", y: -0.2, font: { size: 11 } } };
    return { data, layout };
  }

  function pointsTable(st) {
    if (!st.change_points.length) return '<div class="info">No change point found.</div>';
    return '<table class="results stages-points"><tr><th>step</th><th>found by</th><th>what</th>' +
      "<th>nearest other change point</th></tr>" + st.change_points.map((p) =>
      `<tr><td>${esc(p.step)}</td><td>${esc(p.source)}</td><td>${esc(p.detail)}</td><td>${esc(p.nearest || "")}</td></tr>`)
      .join("") + "</table>";
  }

  function render() {
    const r = run(), st = r.stages, box = $("stages");
    note(box, st ? "" : "This run has no LLC cache: `interp llc DIR` computes the LLC and the essential dynamics.");
    if (!st) { $("stages-info").textContent = ""; return; }
    $("stages-logx").checked = S.logx;
    $("stages-info").textContent = `${st.about}. Band: \u00b1 1 sd over SGLD chains; hollow points: estimates not ` +
      "to trust (a chain diverged, a drifting loss trace or chains that disagree). Green dashed lines: the stage " +
      "boundaries of llc_stages" + (st.noise !== null ? ` (noise band ${fmt(st.noise, 3)})` : "") +
      "; purple dotted: the loss's phase marks." + (st.stages_note ? ` ${st.stages_note}.` : "");
    const g = llcFigure(r, st, S.logx);
    draw(plotDiv(box, "stages-llc"), g.data, g.layout);
    const traj = plotDiv(box, "stages-trajectory", "row");
    const components = st.dynamics ? st.dynamics.explained.length : 0;
    note(traj, components >= 2 ? "" : `No essential-dynamics trajectory: ${st.dynamics_note || "one component only"}.`);
    if (components >= 2) {
      const pairs = components >= 3 ? [[0, 1], [1, 2]] : [[0, 1]];
      traj.querySelectorAll(".plot").forEach((el) => { el.hidden = el.id === "stages-pc23" && pairs.length < 2; });
      for (const [i, j] of pairs) {
        const t = trajectoryFigure(st, i, j);
        draw(plotDiv(traj, `stages-pc${i + 1}${j + 1}`), t.data, t.layout);
      }
    }
    let table = $("stages-points");
    if (!table) {
      table = document.createElement("div");
      table.id = "stages-points";
      box.appendChild(table);
    }
    table.innerHTML = "<h2>Change points side by side</h2>" + pointsTable(st);
  }

  const logx = $("stages-logx");
  logx.addEventListener("change", () => {
    S.logx = logx.checked;
    $("logx").checked = S.logx;
    $("heads-logx").checked = S.logx;
    render();
  });
  return render;
};

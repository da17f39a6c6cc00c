"""Fact-learning dynamics on synthetic biographies (Zucchet et al. 2025, arXiv 2503.21676).

A model trained on biographies of N people first fits the value marginals (phase 1),
sits on a plateau at the no-knowledge baseline (phase 2), then recalls the facts
(phase 3). The analysis runs:

- the main run (uniform over N people, dense checkpoints): its phases, the
  attention signatures of the recall circuit over training, and hallucinations
  (loss and confidence on never-seen people against seen ones);
- a sweep over N, with a power-law fit of the plateau end;
- power-law sampling (a sweep over alpha) and the warm-up curriculum at the
  main run's budget;
- attention-pattern patching: the main run re-trained from the same
  initialization on the same batches with every layer's attention pattern
  taken from a main-run checkpoint from before, inside or after the plateau;
- fine-tuning the trained model on new people, with and without replay of the
  original ones.

Every training run is a normal run directory under `runs/`. Sweep and patching
runs stop once their plateau end is known, on the main run's learning-rate
schedule.

    interp run fact-learning --preset quick --out runs/facts
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from interp import ModelConfig, Run, TrainConfig, probe, train
from interp.analysis import Analysis, Report, RunOptions
from interp.checkpoints import CONFIG_FILE, atomic_write_json
from interp.configs import require, require_positive, to_dict
from interp.metrics import circuits, spans
from interp.model import Batch
from interp.parallel import LocalBackend, run_all
from interp.patching import pattern_patch
from interp.replay import Replay
from interp.viz import plot_curves, save_figure
from tasks.biographies import Biographies, BiographiesConfig, evaluate_attributes, model_shape, recall_masks

logger = logging.getLogger(__name__)

SEEN, UNSEEN, OLD, NEW = "seen", "unseen", "old", "new"
SIGNATURES = ("attribute_to_name", "attribute_to_text", "name_to_name", "sharpness")
EVAL_STREAM, PROBE_STREAM, REPLAY_STREAM = 1, 2, 3


@dataclass(frozen=True)
class FactLearningConfig:
    """- `data` is the main run's population; `n_sweep` adds runs with other
      numbers of individuals, `alphas` power-law runs (p(i) ∝ i^-alpha) and
      `warmup_individuals`/`warmup_steps` one warm-up-curriculum run, all on `train`.
    - Evaluation uses held-out templates of `eval_individuals` seen people (drawn
      uniformly, whatever the training distribution) and as many unseen ones.
    - Phases: the eval loss, smoothed over `smooth_window` evaluations, within
      `delta` of the baseline (phase 1 ends) and then `delta` below it (plateau ends).
    - The power-law and warm-up runs, and the uniform run they are compared
      with, are measured at the same budget of `compare_steps` (0: `train.steps`).
    - Sweep and patching runs stop once their plateau end is known (the smoothed
      loss is `delta` below the baseline, with the evaluations the smoothing needs
      after it); patching runs also stop at `patch_horizon` x the main run's plateau end.
    - `patch_steps`: main-run checkpoints whose patterns are patched in; empty
      chooses three from the detected phases: mid phase 1, mid plateau, and the
      main run's first evaluation `pause_below` nats below the baseline (after the
      plateau; the main run pauses there, and the patching runs train beside the
      rest of it).
    - `finetune` trains the final model on `data.n_finetune` new people; with
      replay, `replay_ratio` old biographies per new one are mixed in.
    - `model.d_vocab` and `model.n_ctx` follow `data` (its vocabulary and longest
      biography), whatever they are set to.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: BiographiesConfig = field(default_factory=BiographiesConfig)
    n_sweep: tuple[int, ...] = ()
    alphas: tuple[float, ...] = ()
    warmup_individuals: int = 0
    warmup_steps: int = 0
    compare_steps: int = 0
    eval_individuals: int = 128
    probe_individuals: int = 64
    delta: float = 0.1
    smooth_window: int = 3
    pause_below: float = 0.5
    patch_steps: tuple[int, ...] = ()
    patch_horizon: float = 1.5
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, lr=3e-4))
    replay_ratio: float = 0.5
    replay_pool: int = 2000
    workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        d_vocab, n_ctx = model_shape(self.data)
        if (self.model.d_vocab, self.model.n_ctx) != (d_vocab, n_ctx):
            # Derived from the data, so that a pool-size override (or sweep) needs nothing else;
            # the frozen config is still complete, as saved in every run.
            object.__setattr__(self, "model", replace(self.model, d_vocab=d_vocab, n_ctx=n_ctx))
        require_positive(self, "eval_individuals", "probe_individuals", "smooth_window", "replay_pool")
        require(self.train.eval_every > 0, "train.eval_every", "a positive evaluation interval", self.train.eval_every)
        require(self.finetune.eval_every > 0, "finetune.eval_every", "a positive evaluation interval",
                self.finetune.eval_every)
        require(self.data.n_unseen >= self.eval_individuals, "data.n_unseen",
                f">= eval_individuals={self.eval_individuals}", self.data.n_unseen)
        require(self.data.n_finetune > 0, "data.n_finetune", "a positive number of new people", self.data.n_finetune)
        smallest = min((self.data.n_individuals, *self.n_sweep))
        require(smallest >= self.eval_individuals, "n_sweep", f"sizes >= eval_individuals={self.eval_individuals}",
                self.n_sweep)
        require(all(a > 0 for a in self.alphas), "alphas", "exponents > 0 (alpha 0 is the main run)", self.alphas)
        require(self.delta > 0 and self.pause_below > self.delta, "pause_below", f"a margin > delta={self.delta}",
                self.pause_below)
        require(0 <= self.warmup_individuals <= self.data.n_individuals, "warmup_individuals",
                f"0..data.n_individuals={self.data.n_individuals}", self.warmup_individuals)
        require(self.warmup_individuals == 0 or 0 < self.warmup_steps < self.train.steps, "warmup_steps",
                f"0 < warmup_steps < train.steps={self.train.steps} with warmup_individuals", self.warmup_steps)
        require(0 <= self.compare_steps <= self.train.steps, "compare_steps", f"0..train.steps={self.train.steps}",
                self.compare_steps)
        bad = [s for s in self.patch_steps if s > self.train.steps]
        require(not bad, "patch_steps", f"main-run steps <= train.steps={self.train.steps}", bad)
        require(self.patch_horizon >= 1, "patch_horizon", "a factor >= 1", self.patch_horizon)
        require(0 < self.replay_ratio <= 1, "replay_ratio", "a ratio in (0, 1]", self.replay_ratio)


# --- one training run (module-level so worker processes can run it) ------------------------------


def eval_batch(bios: Biographies, people: np.ndarray, seed: int, stream: int) -> Batch:
    """Held-out-template biographies of `people`, a pure function of (seed, stream)."""
    return bios.sample(people, np.random.default_rng([seed, stream]), heldout=True)


def eval_people(bios: Biographies, count: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng([seed, EVAL_STREAM]).choice(bios.trained, count, replace=False))


@dataclass(frozen=True)
class TrainJob:
    """One training run of the analysis: `kind` is main, n, alpha, warmup, patch or finetune.
    `pause` ends this call (not the run) once the seen loss is `pause_below` under the baseline."""

    name: str
    kind: str
    run_dir: str
    cfg: FactLearningConfig
    data: BiographiesConfig
    train: TrainConfig
    stop_step: int = 0
    pause: bool = False
    patch_from: str = ""
    replay: bool = False
    device: str = "cpu"
    resume: bool = False
    progress: bool = False


def run_job(job: TrainJob) -> str:
    cfg = job.cfg
    if job.pause and job.resume and Path(job.run_dir, CONFIG_FILE).exists():
        earlier = Run.open(job.run_dir)
        if earlier.steps and left_plateau_step(earlier, cfg) is not None:
            return str(earlier.path)  # paused (or finished) before: resuming would pause again later
    bios = Biographies(job.data)
    baseline = bios.baseline()
    patterns = None
    if job.patch_from:
        reference_run, _, step = job.patch_from.partition("@")
        patterns = pattern_patch(Run.open(reference_run).load(int(step), device=job.device))

    def evaluator(batch: Batch):
        # A patched model never trains its own queries and keys: it is evaluated as trained, patched.
        def evaluate(model) -> dict[str, float]:
            device_batch = {k: v.to(job.device) for k, v in batch.items()}
            return evaluate_attributes(model, device_batch, patterns=patterns(device_batch) if patterns else None)

        return evaluate

    known = eval_batch(bios, eval_people(bios, cfg.eval_individuals, cfg.seed), cfg.seed, EVAL_STREAM)
    data: Any = bios
    if job.kind == "finetune":
        new = eval_batch(bios, bios.finetune[: cfg.eval_individuals], cfg.seed, EVAL_STREAM)
        evaluators = {OLD: evaluator(known), NEW: evaluator(new)}
        data = bios.population(bios.finetune)
        if job.replay:
            rng = np.random.default_rng([cfg.seed, REPLAY_STREAM])
            pool = bios.sample(rng.choice(bios.trained, cfg.replay_pool), rng)
            data = Replay(data, pool, cfg.replay_ratio, seed=cfg.seed)
    else:
        evaluators = {SEEN: evaluator(known)}
        if job.kind == "main":  # hallucinations are measured on the main run only
            unseen = eval_batch(bios, bios.unseen[: cfg.eval_individuals], cfg.seed, EVAL_STREAM)
            evaluators[UNSEEN] = evaluator(unseen)

    def left_plateau(step: int, row: dict[str, float]) -> bool:
        return row[f"{SEEN}/loss"] < baseline - cfg.pause_below

    evaluated: dict[int, float] = {}

    def plateau_end_known(step: int, row: dict[str, float]) -> bool:
        # Known once the smoothing window around the detected end is complete; a resumed
        # run starts a new history, so it may only stop at its `stop_step`.
        evaluated[step] = row[f"{SEEN}/loss"]
        steps = np.array(list(evaluated))
        _, end = spans.phase_boundaries(steps, np.array(list(evaluated.values())), baseline, cfg.delta,
                                        cfg.smooth_window)
        return end is not None and int(np.flatnonzero(steps == end)[0]) + cfg.smooth_window // 2 < len(steps)

    def stop_when(step: int, row: dict[str, float]) -> bool:
        return ((job.kind in ("n", "patch") and plateau_end_known(step, row))
                or bool(job.stop_step and step >= job.stop_step))

    run = train(job.run_dir, cfg.model, job.train, data, evaluators=evaluators,
                config_extra={"biographies": to_dict(job.data), "kind": job.kind, "patch_from": job.patch_from,
                              "replay": job.replay, "baseline": baseline},
                batch_patterns=patterns, stop_when=stop_when, pause_when=left_plateau if job.pause else None,
                resume=job.resume, device=job.device, progress=job.progress)
    bios.vocab.save(run.path / "vocab.json")
    return str(run.path)


# --- measurements -------------------------------------------------------------------------------


def curve(run: Run, key: str, until: int = 0) -> tuple[np.ndarray, np.ndarray]:
    steps, values = run.series(key)
    keep = steps <= until if until else slice(None)
    return steps[keep], values[keep]


def phases(run: Run, cfg: FactLearningConfig, until: int = 0) -> dict[str, Any]:
    """Phase boundaries and final values of a run's eval curve (up to step `until` if given)."""
    steps, loss = curve(run, f"{SEEN}/loss", until)
    baseline = run.config["baseline"]
    phase1_end, plateau_end = spans.phase_boundaries(steps, loss, baseline, cfg.delta, cfg.smooth_window)
    plateau_length = None if phase1_end is None or plateau_end is None else plateau_end - phase1_end
    return {"baseline": baseline, "phase1_end": phase1_end, "plateau_end": plateau_end,
            "plateau_length": plateau_length,
            "plateau_over_phase1": None if plateau_length is None or not phase1_end else plateau_length / phase1_end,
            "final_loss": float(loss[-1]), "final_accuracy": float(curve(run, f"{SEEN}/accuracy", until)[1][-1]),
            "last_step": int(steps[-1])}


def power_law_fit(ns: np.ndarray, ends: np.ndarray) -> dict[str, float] | None:
    """`plateau_end ≈ c * N^b` by least squares in log-log space (None with < 2 points)."""
    if len(ns) < 2:
        return None
    x, y = np.log(ns), np.log(ends)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    total = ((y - y.mean()) ** 2).sum()
    return {"exponent": float(slope), "prefactor": float(np.exp(intercept)),
            "r2": float(1 - (residual**2).sum() / total) if total > 0 else 1.0}


def signature_probes(n_layers: int) -> dict[str, Any]:
    layers = range(n_layers)
    return {"attribute_to_name": circuits.attention_mass_probe(layers, "attribute_query", "name"),
            "attribute_to_text": circuits.attention_mass_probe(layers, "attribute_query", "text"),
            "name_to_name": circuits.attention_mass_probe(layers, "last_name", "same_name"),
            "sharpness": circuits.sharpness_probe(layers, "attribute_query")}


def attention_signatures(run: Run, bios: Biographies, cfg: FactLearningConfig, device: torch.device) -> dict:
    """Each signature per layer (mean over heads) at every checkpoint of `run`."""
    people = eval_people(bios, cfg.probe_individuals, cfg.seed + 1)
    batch = eval_batch(bios, people, cfg.seed, PROBE_STREAM)
    table = probe(run, signature_probes(cfg.model.n_layers), {**batch, **recall_masks(batch)}, device=device)
    out: dict[str, Any] = {"steps": table.steps.tolist()}
    for name in SIGNATURES:
        grid = table.head_grid(name, cfg.model.n_layers, cfg.model.n_heads)
        out[name] = {f"layer{layer}": grid[:, layer].mean(axis=1).tolist() for layer in range(cfg.model.n_layers)}
    return out


def left_plateau_step(run: Run, cfg: FactLearningConfig) -> int | None:
    """The first evaluation at which the seen loss is `pause_below` under the baseline
    (where the main run pauses, with a checkpoint); None if it never is."""
    steps, loss = curve(run, f"{SEEN}/loss")
    below = np.flatnonzero(loss < run.config["baseline"] - cfg.pause_below)
    return int(steps[below[0]]) if len(below) else None


def patch_references(main: Run, cfg: FactLearningConfig, main_phases: dict[str, Any],
                     after: int | None = None) -> dict[str, int]:
    """Checkpoints of the main run from before and inside the plateau, and `after` it
    (default: the last checkpoint)."""
    if cfg.patch_steps:
        return {f"step{s}": nearest(main.steps, s) for s in cfg.patch_steps}
    phase1_end = main_phases["phase1_end"] or cfg.train.steps // 10
    plateau_end = main_phases["plateau_end"] or cfg.train.steps // 2
    return {"before": nearest(main.steps, phase1_end // 2),
            "inside": nearest(main.steps, (phase1_end + plateau_end) // 2),
            "after": nearest(main.steps, after) if after else main.steps[-1]}


def nearest(steps: list[int], target: int) -> int:
    return min(steps, key=lambda s: (abs(s - target), s))


def finetune_summary(run: Run, baseline: float) -> dict[str, Any]:
    steps, old = curve(run, f"{OLD}/loss")
    _, old_acc = curve(run, f"{OLD}/accuracy")
    _, new = curve(run, f"{NEW}/loss")
    peak = int(np.argmax(old))
    rise = float(old[peak] - old[0])
    gap = baseline - float(old[0])
    halfway = np.flatnonzero(old - old[0] >= gap / 2) if gap > 0 else np.array([], int)
    return {"old_loss_before": float(old[0]), "old_loss_peak": float(old[peak]), "old_loss_peak_step": int(steps[peak]),
            "old_loss_after": float(old[-1]), "old_accuracy_before": float(old_acc[0]),
            "old_accuracy_after": float(old_acc[-1]), "old_accuracy_min": float(old_acc.min()),
            "new_loss_before": float(new[0]), "new_loss_after": float(new[-1]),
            "rise_over_gap_to_baseline": rise / gap if gap > 0 else None,
            "half_gap_step": int(steps[halfway[0]]) if len(halfway) else None}


# --- the analysis -------------------------------------------------------------------------------


def run(cfg: FactLearningConfig, out: Path, options: RunOptions) -> dict[str, Any]:
    runs_dir = out / "runs"
    device = str(options.device)
    backend = options.jobs(cfg.workers)
    base = replace(cfg.data, seed=cfg.seed)

    def job(name: str, kind: str, data: BiographiesConfig, **kw: Any) -> TrainJob:
        train_cfg = cfg.train if kind == "main" else replace(cfg.train, checkpoint_every=0, checkpoint_log=0)
        return TrainJob(name, kind, str(runs_dir / name), cfg, data, kw.pop("train", train_cfg), device=device,
                        resume=options.resume, **kw)

    # Three stages on one pool. The main run pauses once it has left its plateau, so the
    # patching runs, which need its phases and a post-plateau checkpoint, share the cores
    # with its second half; fine-tuning needs its end.
    main_job = job("main", "main", base, pause=not cfg.patch_steps,
                   progress=options.progress and backend == LocalBackend(1))
    # Longest runs first, so that the workers finish each stage together.
    budget = cfg.compare_steps or cfg.train.steps
    first = [main_job]
    first += [job(f"alpha{a:g}", "alpha", replace(base, distribution="power_law", alpha=a), stop_step=budget)
              for a in cfg.alphas]
    if cfg.warmup_individuals:
        first.append(job("warmup", "warmup", replace(base, warmup_individuals=cfg.warmup_individuals,
                                                     warmup_steps=cfg.warmup_steps), stop_step=budget))
    first += [job(f"n{n}", "n", replace(base, n_individuals=n)) for n in sorted(cfg.n_sweep, reverse=True)]
    paths = dict(zip([j.name for j in first], run_all(run_job, first, backend), strict=True))
    main = Run.open(paths["main"])
    paused_at = left_plateau_step(main, cfg)
    early_phases = phases(main, cfg, until=paused_at or 0)

    references = patch_references(main, cfg, early_phases, after=paused_at)
    horizon = int(cfg.patch_horizon * (early_phases["plateau_end"] or cfg.train.steps))
    second = [replace(main_job, pause=False, resume=True)]
    second += [job(f"patch-{label}", "patch", base, patch_from=f"{main.path}@{step}", stop_step=horizon)
               for label, step in references.items()]
    paths.update(zip([j.name for j in second], run_all(run_job, second, backend), strict=True))
    main_phases = phases(main, cfg)

    finetune_cfg = replace(cfg.finetune, init_from=str(main.path), seed=cfg.seed)
    third = [job(f"finetune-{'replay' if replay else 'none'}", "finetune", base, train=finetune_cfg, replay=replay)
             for replay in (False, True)]
    paths.update(zip([j.name for j in third], run_all(run_job, third, backend), strict=True))

    bios = Biographies(base)
    signatures = attention_signatures(main, bios, cfg, options.device)
    atomic_write_json(out / "signatures.json", signatures)
    runs = {name: Run.open(path) for name, path in paths.items()}
    results = summarize(cfg, runs, main_phases, references, signatures)
    figures = make_figures(cfg, out, runs, results, signatures)
    write_report(cfg, results, figures, out)
    return results


def at_step(signatures: dict[str, Any], step: int | None) -> dict[str, dict[str, float]]:
    """Signature values at the checkpoint nearest `step`."""
    if step is None:
        return {}
    index = signatures["steps"].index(nearest(signatures["steps"], step))
    return {name: {layer: round(values[index], 4) for layer, values in signatures[name].items()} for name in SIGNATURES}


def summarize(cfg: FactLearningConfig, runs: dict[str, Run], main_phases: dict[str, Any],
              references: dict[str, int], signatures: dict[str, Any]) -> dict[str, Any]:
    main = runs["main"]
    baseline = main_phases["baseline"]
    seen_steps, seen_max_prob = curve(main, f"{SEEN}/max_prob")
    _, unseen_max_prob = curve(main, f"{UNSEEN}/max_prob")
    _, unseen_loss = curve(main, f"{UNSEEN}/loss")
    _, seen_entropy = curve(main, f"{SEEN}/entropy")
    _, unseen_entropy = curve(main, f"{UNSEEN}/entropy")

    plateau_by_n = [{"n_individuals": cfg.data.n_individuals, **_phase_row(main_phases)}]
    plateau_by_n += [{"n_individuals": n, **_phase_row(phases(runs[f"n{n}"], cfg))} for n in cfg.n_sweep]
    plateau_by_n.sort(key=lambda row: row["n_individuals"])
    reached = [(r["n_individuals"], r["plateau_end"]) for r in plateau_by_n if r["plateau_end"]]
    fit = power_law_fit(np.array([n for n, _ in reached], float), np.array([e for _, e in reached], float))

    budget = cfg.compare_steps or cfg.train.steps
    alpha_sweep = [{"alpha": 0.0, **_phase_row(phases(main, cfg, budget))}]
    alpha_sweep += [{"alpha": a, **_phase_row(phases(runs[f"alpha{a:g}"], cfg, budget))} for a in cfg.alphas]
    warmup = _phase_row(phases(runs["warmup"], cfg, budget)) if cfg.warmup_individuals else None

    patching = [{"reference": label, "reference_step": step, **_phase_row(phases(runs[f"patch-{label}"], cfg))}
                for label, step in references.items()]
    finetune = {"none": finetune_summary(runs["finetune-none"], baseline),
                "replay": finetune_summary(runs["finetune-replay"], baseline)}
    return {
        "baseline": round(baseline, 4),
        "phase1_end": main_phases["phase1_end"],
        "plateau_end": main_phases["plateau_end"],
        "plateau_length": main_phases["plateau_length"],
        "plateau_over_phase1": main_phases["plateau_over_phase1"],
        "final_loss": main_phases["final_loss"],
        "final_accuracy": main_phases["final_accuracy"],
        "plateau_by_n": plateau_by_n,
        "plateau_power_law": fit,
        "compare_steps": budget,
        "alpha_sweep": alpha_sweep,
        "warmup": warmup,
        "unseen_loss_final": float(unseen_loss[-1]),
        "seen_max_prob_final": float(seen_max_prob[-1]),
        "unseen_max_prob_final": float(unseen_max_prob[-1]),
        "seen_entropy_final": float(seen_entropy[-1]),
        "unseen_entropy_final": float(unseen_entropy[-1]),
        "unseen_loss_at_plateau_end": _value_at(main, f"{UNSEEN}/loss", main_phases["plateau_end"]),
        "patching": patching,
        "finetune": finetune,
        "signatures_at_plateau_start": at_step(signatures, main_phases["phase1_end"]),
        "signatures_at_plateau_end": at_step(signatures, main_phases["plateau_end"]),
        "signatures_final": at_step(signatures, int(seen_steps[-1])),
    }


def _phase_row(p: dict[str, Any]) -> dict[str, Any]:
    keep = ("phase1_end", "plateau_end", "plateau_length", "final_loss", "final_accuracy", "last_step")
    return {k: (round(p[k], 4) if isinstance(p[k], float) else p[k]) for k in keep}


def _value_at(run: Run, key: str, step: int | None) -> float | None:
    if step is None:
        return None
    steps, values = curve(run, key)
    return float(values[np.searchsorted(steps, step)])


# --- figures and report -------------------------------------------------------------------------


def band_label(delta: float) -> str:
    return f"baseline ± {delta:g}"


def plateau_window(main: Run, cfg: FactLearningConfig, baseline: float, plateau_end: int | None) -> dict:
    """The seen-people loss minus the baseline, raw and smoothed as the phases are detected,
    from where the smoothed loss is first within 1 nat of the baseline to twice the plateau's end: the
    plateau at a scale where the ± delta band is visible."""
    steps, loss = curve(main, f"{SEEN}/loss")
    steps, excess, smoothed = near_baseline(steps, loss, baseline, cfg.smooth_window, 2 * (plateau_end or steps[-1]))
    return {"seen people": (steps, excess),
            f"smoothed over {cfg.smooth_window} evaluations": (steps, smoothed),
            band_label(cfg.delta): (steps, np.zeros(len(steps)))}


def near_baseline(steps: np.ndarray, loss: np.ndarray, baseline: float, window: int,
                  until: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(steps, loss - baseline, smoothed loss - baseline)` from where the smoothed loss is
    first within 1 nat of the baseline up to step `until`."""
    excess, smoothed = loss - baseline, spans.smooth(loss, window) - baseline
    keep = (np.arange(len(steps)) >= np.argmax(smoothed <= 1)) & (steps <= until)
    return steps[keep], excess[keep], smoothed[keep]


def make_figures(cfg: FactLearningConfig, out: Path, runs: dict[str, Run], results: dict[str, Any],
                 signatures: dict[str, Any]) -> dict[str, Path]:
    fig_dir = out / "figures"
    main = runs["main"]
    baseline = results["baseline"]
    marks = {k: results[k] for k in ("phase1_end", "plateau_end") if results[k] is not None}
    figures: dict[str, Path] = {}
    figures["phases"] = save_figure(plot_curves(
        {"held-out templates, seen people": curve(main, f"{SEEN}/loss"),
         "never-seen people": curve(main, f"{UNSEEN}/loss")},
        hlines={"no-knowledge baseline": baseline}, vlines=marks,
        title=f"Attribute loss, N = {cfg.data.n_individuals}", ylabel="attribute loss (nats)"),
        fig_dir / "phases.png")
    if results["phase1_end"] is not None:
        figures["plateau"] = save_figure(plot_curves(
            plateau_window(main, cfg, baseline, results["plateau_end"]),
            bands={band_label(cfg.delta): np.asarray(cfg.delta)}, vlines=marks,
            title="The plateau: attribute loss above the baseline", ylabel="attribute loss − baseline (nats)"),
            fig_dir / "plateau.png")
    figures["accuracy"] = save_figure(plot_curves(
        {"seen people": curve(main, f"{SEEN}/accuracy"), "never-seen people": curve(main, f"{UNSEEN}/accuracy")},
        vlines=marks, title="Attribute accuracy (held-out templates)", ylabel="accuracy"), fig_dir / "accuracy.png")

    by_n = {f"N = {cfg.data.n_individuals}": curve(main, f"{SEEN}/loss")}
    by_n.update({f"N = {n}": curve(runs[f"n{n}"], f"{SEEN}/loss") for n in cfg.n_sweep})
    figures["loss_by_n"] = save_figure(plot_curves(
        dict(sorted(by_n.items(), key=lambda kv: int(kv[0].split("= ")[1]))), hlines={"baseline": baseline},
        title="Attribute loss by number of individuals", ylabel="attribute loss (nats)"), fig_dir / "loss_by_n.png")
    reached = [r for r in results["plateau_by_n"] if r["plateau_end"]]
    if reached:
        ns = np.array([r["n_individuals"] for r in reached], float)
        series = {"plateau end": (ns, np.array([r["plateau_end"] for r in reached], float))}
        fit = results["plateau_power_law"]
        if fit:
            grid = np.geomspace(ns.min(), ns.max(), 50)
            series[f"{fit['prefactor']:.3g} N^{fit['exponent']:.2f} (R² {fit['r2']:.3f})"] = (
                grid, fit["prefactor"] * grid ** fit["exponent"])
        figures["plateau_by_n"] = save_figure(plot_curves(
            series, markers=True, logx=True, logy=True, title="Plateau end vs number of individuals",
            ylabel="plateau end (step)", xlabel="individuals N"), fig_dir / "plateau_by_n.png")

    budget = results["compare_steps"]
    distributions = {"uniform": curve(main, f"{SEEN}/loss", budget)}
    distributions.update({f"power law alpha={a:g}": curve(runs[f"alpha{a:g}"], f"{SEEN}/loss") for a in cfg.alphas})
    if cfg.warmup_individuals:
        distributions[f"warm-up ({cfg.warmup_individuals} people for {cfg.warmup_steps} steps)"] = curve(
            runs["warmup"], f"{SEEN}/loss")
    figures["distributions"] = save_figure(plot_curves(
        distributions, hlines={"baseline": baseline}, title="Sampling distributions at a fixed budget",
        ylabel="attribute loss, uniform over people (nats)"), fig_dir / "distributions.png")

    # At the scale of the delta band: the patched runs stop once their plateau is over.
    patched = {"no patching": curve(main, f"{SEEN}/loss")}
    patched.update({f"patterns of step {r['reference_step']} ({r['reference']})":
                    curve(runs[f"patch-{r['reference']}"], f"{SEEN}/loss") for r in results["patching"]})
    until = max(r["last_step"] for r in results["patching"])
    patched = {name: near_baseline(*series, baseline, cfg.smooth_window, until)[::2]
               for name, series in patched.items()}
    patched[band_label(cfg.delta)] = (np.array([0, until]), np.zeros(2))
    figures["patching"] = save_figure(plot_curves(
        patched, bands={band_label(cfg.delta): np.asarray(cfg.delta)},
        title="Training with attention patterns patched in",
        ylabel=f"attribute loss − baseline, smoothed over {cfg.smooth_window} (nats)"), fig_dir / "patching.png")

    steps = np.array(signatures["steps"])
    for name, label in (("attribute_to_name", "attention from the attribute query to the name"),
                        ("attribute_to_text", "attention from the attribute query to the other text"),
                        ("name_to_name", "attention from the last name token to the other name tokens"),
                        ("sharpness", "normalized attention entropy at the attribute query")):
        figures[name] = save_figure(plot_curves(
            {layer: (steps, np.array(v)) for layer, v in signatures[name].items()}, vlines=marks,
            title=label, ylabel="mean over heads"), fig_dir / f"signature_{name}.png")

    hallucination = {"seen: max probability": curve(main, f"{SEEN}/max_prob"),
                     "never seen: max probability": curve(main, f"{UNSEEN}/max_prob")}
    figures["confidence"] = save_figure(plot_curves(
        hallucination, vlines=marks, title="Confidence of the first value token",
        ylabel="max probability"), fig_dir / "confidence.png")

    finetune = {}
    for condition in ("none", "replay"):
        fine = runs[f"finetune-{condition}"]
        label = "with replay" if condition == "replay" else "no replay"
        finetune[f"original people, {label}"] = curve(fine, f"{OLD}/loss")
        finetune[f"new people, {label}"] = curve(fine, f"{NEW}/loss")
    figures["finetune"] = save_figure(plot_curves(
        finetune, hlines={"baseline": baseline}, title=f"Fine-tuning on {cfg.data.n_finetune} new people",
        ylabel="attribute loss (nats)", xlabel="fine-tuning step"), fig_dir / "finetune.png")
    return figures


def write_report(cfg: FactLearningConfig, results: dict[str, Any], figures: dict[str, Path], out: Path) -> None:
    m, t = cfg.model, cfg.train
    report = Report("Fact-learning dynamics on synthetic biographies")
    report.text(
        f"{m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads; {t.optimizer} at lr {t.lr:g} ({t.schedule}), "
        f"batch {t.batch_size}, {t.steps} steps, on fresh biographies of N = {cfg.data.n_individuals} people "
        f"(six attributes, shuffled sentences, training templates). Evaluation: held-out templates of "
        f"{cfg.eval_individuals} seen people and {cfg.eval_individuals} never-seen people every {t.eval_every} steps. "
        f"Phases use the loss smoothed over {cfg.smooth_window} evaluations and delta = {cfg.delta} nats.")
    report.table([
        ("no-knowledge baseline (nats)", results["baseline"]),
        ("end of phase 1 (step)", results["phase1_end"]),
        ("end of the plateau (step)", results["plateau_end"]),
        ("plateau length / phase 1 length", results["plateau_over_phase1"]),
        ("final attribute loss", results["final_loss"]),
        ("final accuracy, seen people, held-out templates", results["final_accuracy"]),
        ("final loss, never-seen people", results["unseen_loss_final"]),
        ("final max-probability, seen / never-seen",
         f"{results['seen_max_prob_final']:.3f} / {results['unseen_max_prob_final']:.3f}"),
        ("final entropy, seen / never-seen",
         f"{results['seen_entropy_final']:.3f} / {results['unseen_entropy_final']:.3f}"),
    ])
    report.figures(figures, out, {k: v for k, v in {
        "phases": "Three phases: the attribute loss against the no-knowledge baseline",
        "plateau": f"The plateau: within {cfg.delta:g} nats of the baseline from the end of phase 1 to its end",
        "accuracy": "Attribute accuracy"}.items() if k in figures})
    report.text("Plateau by number of individuals (sweep runs stop once their plateau end is known):")
    report.grid(["N", "phase 1 end", "plateau end", "final loss", "final accuracy", "last step"],
                [[r["n_individuals"], r["phase1_end"], r["plateau_end"], r["final_loss"], r["final_accuracy"],
                  r["last_step"]] for r in results["plateau_by_n"]])
    fit = results["plateau_power_law"]
    if fit:
        report.text(f"Power-law fit: plateau end ≈ {fit['prefactor']:.3g} · N^{fit['exponent']:.3f} "
                    f"(R² {fit['r2']:.3f}).")
    report.figures(figures, out, {k: v for k, v in {"loss_by_n": "Attribute loss by N",
                                                    "plateau_by_n": "Plateau end vs N"}.items() if k in figures})
    report.text(f"Sampling distributions at a budget of {results['compare_steps']} steps:")
    rows = [[f"power law alpha = {r['alpha']:g}" if r["alpha"] else "uniform", r["plateau_end"], r["final_loss"],
             r["final_accuracy"]] for r in results["alpha_sweep"]]
    if results["warmup"]:
        w = results["warmup"]
        rows.append([f"warm-up: {cfg.warmup_individuals} people for {cfg.warmup_steps} steps", w["plateau_end"],
                     w["final_loss"], w["final_accuracy"]])
    report.grid(["distribution", "plateau end", "final loss", "final accuracy"], rows)
    report.figures(figures, out, {"distributions": "Power-law sampling and the warm-up curriculum"})
    report.text("Attention-pattern patching (same initialization and batches; every layer's pattern from a "
                "main-run checkpoint):")
    report.grid(["reference", "reference step", "phase 1 end", "plateau end", "loss at stop", "last step"],
                [["none (main run)", "", results["phase1_end"], results["plateau_end"], "", ""]]
                + [[r["reference"], r["reference_step"], r["phase1_end"], r["plateau_end"], r["final_loss"],
                    r["last_step"]] for r in results["patching"]])
    report.figures(figures, out, {"patching": "Training with patched attention patterns"})
    report.text("Attention signatures (mean over heads, per layer) at the start and end of the plateau and at "
                "the end of training:")
    rows = []
    for when in ("signatures_at_plateau_start", "signatures_at_plateau_end", "signatures_final"):
        for name, layers in results[when].items():
            rows.append([when.removeprefix("signatures_").replace("_", " "), name,
                         ", ".join(f"{k} {v:.3f}" for k, v in layers.items())])
    report.grid(["when", "signature", "by layer"], rows)
    report.figures(figures, out, {k: f"Signature: {k.replace('_', ' ')}" for k in SIGNATURES})
    report.figures(figures, out, {"confidence": "Hallucination: confidence on seen vs never-seen people"})
    report.text(f"Fine-tuning on {cfg.data.n_finetune} new people at constant lr {cfg.finetune.lr:g} for "
                f"{cfg.finetune.steps} steps, without and with replay ({cfg.replay_ratio} old biographies per "
                "new one):")
    f = results["finetune"]
    report.grid(["", "old loss before", "old loss peak (step)", "old loss after", "old accuracy before / after",
                 "rise / gap to baseline", "half the gap at step", "new loss after"],
                [[c, f[c]["old_loss_before"], f"{f[c]['old_loss_peak']:.3f} ({f[c]['old_loss_peak_step']})",
                  f[c]["old_loss_after"], f"{f[c]['old_accuracy_before']:.3f} / {f[c]['old_accuracy_after']:.3f}",
                  f[c]["rise_over_gap_to_baseline"], f[c]["half_gap_step"], f[c]["new_loss_after"]]
                 for c in ("none", "replay")])
    report.figures(figures, out, {"finetune": "Fine-tuning on new people corrupts old memories"})
    report.write(out / "report.md")


# --- presets ------------------------------------------------------------------------------------


def _preset(data: BiographiesConfig, layers: int, width: int, heads: int, **kw: Any) -> FactLearningConfig:
    model = ModelConfig(n_layers=layers, d_model=width, n_heads=heads)  # vocabulary and context: from `data`
    return FactLearningConfig(data=data, model=model, **kw)


PRESETS = {
    # Calibrated on 2 CPU cores (see the issue notes and the README): with pools of 8 values,
    # 3500 people give a plateau over 3x as long as phase 1 (phase 1 is held at ~300 steps by
    # batch noise), and width 112 with 9000 cosine steps recalls them (accuracy over 0.8);
    # the whole analysis takes under 10 minutes.
    "quick": _preset(
        BiographiesConfig(n_individuals=3500, cities=8, universities=8, majors=8, companies=8, years=8),
        layers=2, width=112, heads=4,
        train=TrainConfig(steps=9000, batch_size=16, optimizer="adamw", lr=2e-3, beta2=0.95, weight_decay=0.1,
                          schedule="cosine", eval_every=50, log_every=50, checkpoint_log=0, checkpoint_every=100),
        n_sweep=(1000, 2000), alphas=(0.6,), warmup_individuals=700, warmup_steps=700, compare_steps=2100,
        patch_horizon=1.1, eval_individuals=96,
        finetune=TrainConfig(steps=300, batch_size=16, optimizer="adamw", lr=3e-4, beta2=0.95, weight_decay=0.1,
                             eval_every=20, log_every=20, checkpoint_log=0)),
    # Zucchet et al.'s setup on one GPU: their pools, 8 layers of width 512, AdamW 4e-4
    # (0.9, 0.95), cosine, 16k steps. They pack ~5 biographies into each 512-token sequence
    # of a 128-sequence batch; here one biography is one sequence, so a batch of 640 sees as
    # many biographies per step. Not yet run: cost unmeasured.
    "paper": _preset(
        BiographiesConfig(n_individuals=64000, n_unseen=1000, n_finetune=4000, first_names=900, middle_names=900,
                          last_names=1000, cities=800, universities=200, majors=100, companies=500, years=200),
        layers=8, width=512, heads=8,
        train=TrainConfig(steps=16000, batch_size=640, optimizer="adamw", lr=4e-4, beta2=0.95, weight_decay=0.1,
                          schedule="cosine", eval_every=100, log_every=100, checkpoint_log=0, checkpoint_every=500,
                          precision="bf16"),
        n_sweep=(16000, 32000), alphas=(0.4, 0.8), warmup_individuals=8000, warmup_steps=2000, compare_steps=8000,
        eval_individuals=512, probe_individuals=128, workers=1,
        finetune=TrainConfig(steps=1000, batch_size=640, optimizer="adamw", lr=3e-5, beta2=0.95, weight_decay=0.1,
                             eval_every=25, log_every=25, checkpoint_log=0, precision="bf16"),
    ),
    "tiny": _preset(
        BiographiesConfig(n_individuals=40, n_unseen=8, n_finetune=8, first_names=8, middle_names=8, last_names=8,
                          cities=10, universities=6, majors=5, companies=7, years=6),
        layers=1, width=16, heads=2,
        train=TrainConfig(steps=12, batch_size=4, eval_every=4, log_every=4, checkpoint_log=0, checkpoint_every=4),
        n_sweep=(20,), alphas=(0.5,), warmup_individuals=10, warmup_steps=4, eval_individuals=8,
        probe_individuals=4, replay_pool=16, workers=1,
        finetune=TrainConfig(steps=6, batch_size=4, lr=1e-3, eval_every=2, log_every=2, checkpoint_log=0),
    ),
}

ANALYSIS = Analysis(
    name="fact-learning",
    description="Synthetic biographies: plateau at the no-knowledge baseline, recall circuit, distributions, "
                "hallucinations, fine-tuning corruption",
    presets=PRESETS,
    run=run,
    headline=("plateau_end", "final_accuracy", "unseen_loss_final"),
)

__all__ = ["ANALYSIS", "FactLearningConfig", "TrainJob", "power_law_fit", "run_job"]

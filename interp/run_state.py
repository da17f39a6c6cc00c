"""What a run directory holds, read without hashing anything (`RunState`, from `Run.inspect`),
and the checks of its metrics log against the steps its trainer logs (`logged_steps`).

`RunState` tells an intact run from a damaged one, and the leftovers of a killed writer, which a
resume removes, from damage, which it refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interp.errors import listing
from interp.files import JsonlScan
from interp.run_layout import CHECKPOINTS_DIR, CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, RunDamagedError, step_dirname


def logged_steps(train: Mapping[str, Any], last: int, evaluated: bool) -> tuple[set[int], set[int]] | None:
    """`(required, allowed)`: the steps up to `last` at which the trainer of a run with
    `train` (its `TrainConfig` as in `config.json`) must have logged a row, and those at which
    it may have; None when `train` does not say. Rows come at every `log_every` steps and the
    end, and with evaluators also at step 0 and every `eval_every` steps (where a stop or
    pause condition can end the run)."""
    total, log_every, eval_every = (train.get(k) for k in ("steps", "log_every", "eval_every"))
    if not all(isinstance(v, int) and v > 0 for v in (total, log_every)) or not isinstance(eval_every, int):
        return None
    required = set(range(log_every, last + 1, log_every)) | ({total} if last == total else set())
    evaluations = {0, *(range(eval_every, last + 1, eval_every) if eval_every > 0 else ()), total}
    if evaluated:
        required |= {s for s in evaluations if s <= last}
    allowed = required | {s for s in evaluations if s <= last}
    return required, allowed


_TRAINING_KEYS = {"step", "train/loss", "lr"}


@dataclass(frozen=True)
class RunState:
    """What a run directory holds, read without hashing anything (`Run.inspect`).

    `damage()` lists what no write of the toolkit leaves behind, even when killed (a run
    resumed over it could mix two runs or lose logged rows): `train(resume=True)` refuses
    it. `repairs()` lists the leftovers of a killed writer, which a resume removes
    provably: each belongs to work after the last checkpoint, which is redone."""

    path: Path
    exists: bool
    """The directory holds config.json, checkpoints/, metrics.jsonl or manifest.json."""
    config_error: str | None
    """Why config.json cannot be used (missing or unreadable), or None."""
    manifest_error: str | None
    steps: list[int]
    """Committed checkpoints: the steps manifest.json lists (with whatever files they keep)."""
    step_dirs: list[int]
    """Steps with a directory under checkpoints/."""
    metrics: JsonlScan
    missing_rows: list[int] = field(default_factory=list)
    unexpected_rows: list[int] = field(default_factory=list)
    repeated_rows: list[int] = field(default_factory=list)
    """Steps logged more than once, every time with the same values (before checkpoint 0
    was written, earlier versions logged step 0's row again on resume)."""
    conflicting_rows: list[int] = field(default_factory=list)
    stepless_rows: int = 0
    leftovers: list[Path] = field(default_factory=list)
    """Temporary files and directories of interrupted atomic writes."""
    local_steps: list[int] = field(default_factory=list)
    """Committed checkpoints that keep files in their own directory under checkpoints/ (not
    those whose files a checkpoint policy released, nor weights shared with another run)."""
    released: list[Path] = field(default_factory=list)
    """Files (and emptied directories) of committed checkpoints that the manifest no longer
    lists: a checkpoint policy released them and the writer was killed before deleting them."""

    @property
    def last_step(self) -> int | None:
        return self.steps[-1] if self.steps else None

    @property
    def uncommitted(self) -> list[int]:
        """Checkpoint directories manifest.json does not list."""
        return [s for s in self.step_dirs if s not in self.steps]

    @property
    def residue(self) -> int | None:
        """The one uncommitted checkpoint directory that a kill while saving it leaves (it is
        after the last committed step); None when there is none, or more than a kill leaves."""
        uncommitted = self.uncommitted
        last = self.last_step
        if len(uncommitted) == 1 and (last is None or uncommitted[0] > last):
            return uncommitted[0]
        return None

    @property
    def unborn(self) -> bool:
        """Killed while being created: no config.json and nothing trained or logged yet."""
        return (self.config_error == "missing" and self.manifest_error is None and not self.steps
                and not self.uncommitted and not self.metrics.rows and not self.metrics.bad_lines)

    def damage(self) -> list[str]:
        """What a resume cannot repair, each naming its file (empty: none)."""
        path, out = self.path, []
        if self.config_error and not self.unborn:
            out.append(f"{path / CONFIG_FILE} is {self.config_error}")
        if self.manifest_error:
            out.append(f"{path / MANIFEST_FILE} is {self.manifest_error}")
        gone = [s for s in self.local_steps if s not in self.step_dirs]
        if gone:
            out.append(f"{path / MANIFEST_FILE} lists steps {listing(gone)} that have no directory under "
                       f"{path / CHECKPOINTS_DIR}")
        if self.uncommitted and self.residue is None:
            where = (f"{path / MANIFEST_FILE} is missing" if not (path / MANIFEST_FILE).exists()
                     else f"{path / MANIFEST_FILE} does not list them")
            out.append(f"{path / CHECKPOINTS_DIR} holds steps {listing(self.uncommitted)}, but {where}")
        metrics = path / METRICS_FILE
        if self.metrics.bad_lines:
            out.append(str(self.metrics.first_bad_line_error()))
        if self.stepless_rows:
            out.append(f"{metrics}: {self.stepless_rows} rows have no integer step")
        if self.missing_rows:
            out.append(f"{metrics} lacks the rows of steps {listing(self.missing_rows)}, logged before the last "
                       f"checkpoint (step {self.last_step})")
        if self.conflicting_rows:
            out.append(f"{metrics} logs steps {listing(self.conflicting_rows)} more than once with different "
                       "values (two runs in one directory?)")
        if self.unexpected_rows:
            out.append(f"{metrics} has rows at steps {listing(self.unexpected_rows)}, where this run's config "
                       "logs none (two runs in one directory?)")
        return out

    def repairs(self) -> list[str]:
        """The leftovers of a killed writer that a resume removes, each naming its file."""
        out = []
        if self.exists and self.unborn:
            out.append(f"{self.path / CONFIG_FILE} is missing (killed while the run was created)")
        if self.metrics.torn_line is not None:
            out.append(f"{self.path / METRICS_FILE}: line {self.metrics.torn_line} is torn (killed mid-append)")
        if self.repeated_rows:
            out.append(f"{self.path / METRICS_FILE} repeats the rows of steps {listing(self.repeated_rows)}")
        if self.residue is not None:
            out.append(f"{self.path / CHECKPOINTS_DIR / step_dirname(self.residue)} was never listed in "
                       f"{MANIFEST_FILE} (killed while saving it)")
        if self.leftovers:
            out.append(f"{len(self.leftovers)} temporary files of interrupted writes, e.g. {self.leftovers[0]}")
        if self.released:
            out.append(f"{len(self.released)} checkpoint files that {MANIFEST_FILE} no longer lists (released by the "
                       f"checkpoint policy, killed before they were deleted), e.g. {self.released[0]}")
        return out

    def problems(self) -> list[str]:
        """Everything out of the ordinary: `damage()`, then `repairs()`."""
        return self.damage() + self.repairs()


def row_problems(rows: list[dict[str, Any]], config: Mapping[str, Any] | None, last: int | None) -> dict[str, Any]:
    """The row problems of a metrics log against its run's config and last checkpoint."""
    stepless = sum(not isinstance(r.get("step"), int) for r in rows)
    by_step: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        if isinstance(row.get("step"), int) and (last is None or row["step"] <= last):
            by_step.setdefault(row["step"], []).append(row)
    repeated = sorted(s for s, rs in by_step.items() if len(rs) > 1 and all(r == rs[0] for r in rs))
    conflicting = sorted(s for s, rs in by_step.items() if len(rs) > 1 and any(r != rs[0] for r in rs))
    missing: list[int] = []
    unexpected: list[int] = []
    train = config.get("train") if isinstance(config, Mapping) else None
    if last is not None and isinstance(train, Mapping):
        evaluated = any(set(r) - _TRAINING_KEYS for r in rows)
        expected = logged_steps(train, last, evaluated)
        if expected is not None:
            required, allowed = expected
            missing = sorted(required - set(by_step))
            unexpected = sorted(set(by_step) - allowed)
    return dict(missing_rows=missing, unexpected_rows=unexpected, repeated_rows=repeated,
                conflicting_rows=conflicting, stepless_rows=stepless)



def check_metrics_log(path: Path, rows: list[dict[str, Any]], config: Mapping[str, Any] | None,
                      last: int | None) -> None:
    """Refuse the rows of metrics log `path` when they lack rows logged before the last
    checkpoint `last`, or log a step twice with different values (`RunDamagedError`): a curve
    drawn from them would be shortened, or zigzag between two runs."""
    problems = row_problems(rows, config, last)
    if problems["missing_rows"]:
        raise RunDamagedError(f"{path} lacks the rows of steps {listing(problems['missing_rows'])}, logged before "
                              f"the last checkpoint (step {last}); the log is damaged")
    if problems["conflicting_rows"]:
        raise RunDamagedError(f"{path} logs steps {listing(problems['conflicting_rows'])} more than once with "
                              "different values (two runs in one directory?); the log is damaged")

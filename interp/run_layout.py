"""What a run directory is made of, and the errors of one that is missing, damaged or busy.

Layout (see README):

    config.json          everything needed to re-run
    metrics.jsonl        one JSON object per logged step
    manifest.json        step -> file -> sha256; a checkpoint exists once listed here, and lists
                         the files it keeps (a checkpoint policy may release some, see
                         `interp.train_config.CheckpointPolicy`); "shared": step -> "run_dir@step" for
                         weights that are another run's checkpoint (run_dir relative to this run)
    checkpoints/step_000123/weights.safetensors   model weights
    checkpoints/step_000123/state.pt              optimizer state, step, running loss (no code)
    probes/*.jsonl, figures/*.png, report.md, results.json
    .lock                the pid of the process writing the run (see `interp.locking.run_lock`)

The names live here, below the modules that write and check them (`interp.files`,
`interp.locking`, `interp.run_state`) and the run directory itself (`interp.checkpoints.Run`),
so that each of those can name a run's files and raise its errors without importing the others.
"""

from __future__ import annotations

from interp.errors import InterpError

WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
SHARED_KEY = "shared"  # in the manifest: checkpoints whose weights are another run's (a fine-tuning run's step 0)
CONFIG_FILE = "config.json"
ANALYSIS_FILE = "analysis.json"  # beside runs/ in an analysis directory: its name, preset and config
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"
CHECKPOINTS_DIR = "checkpoints"
PROBES_DIR = "probes"


class CheckpointError(InterpError, RuntimeError):
    """A checkpoint or run directory is missing, incomplete, damaged or fails its hash check."""


class RunDamagedError(CheckpointError):
    """A run directory is inconsistent in a way no write of the toolkit can leave it."""

    resumable = False


def step_dirname(step: int) -> str:
    return f"step_{step:06d}"

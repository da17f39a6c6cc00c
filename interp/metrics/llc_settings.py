"""What an LLC estimate is asked for: its SGLD settings (`LLCSettings`) and the key the whole
model's LLC is cached under, apart from the sampler (`interp.metrics.llc`) so that `interp`'s
parser shows the defaults without importing torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from interp.errors import InputError

LLC_KEY = "llc"
"""The key the whole model's LLC is cached under (`probes/llc.jsonl`), one computation per
sampler setting and batch."""


@dataclass(frozen=True)
class LLCSettings:
    """SGLD settings of an LLC estimate. `nbeta` None: devinterp's recommendation for the
    batch size, `batch_size / log(batch_size)`. `restrict_to`: parameter-name patterns
    (`fnmatch`, e.g. `"blocks.0.attn.*"`) of the only weights sampled (refined LLC); empty:
    all of them."""

    lr: float = 1e-3
    gamma: float = 100.0
    nbeta: float | None = None
    chains: int = 4
    draws: int = 200
    burn_in: int = 100
    batch_size: int = 64
    seed: int = 0
    restrict_to: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("lr", "nbeta"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InputError(f"{name}: expected a positive finite number, got {value!r}")
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise InputError(f"gamma: expected a finite number >= 0, got {self.gamma!r}")
        for name, least in (("chains", 1), ("draws", 3), ("burn_in", 0), ("batch_size", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < least:
                raise InputError(f"{name}: expected an integer >= {least}, got {value!r}")
        if isinstance(self.restrict_to, str) or not all(isinstance(p, str) and p for p in self.restrict_to):
            raise InputError(f"restrict_to: expected a tuple of parameter-name patterns, got {self.restrict_to!r}")

    @property
    def effective_nbeta(self) -> float:
        from devinterp.utils import default_nbeta  # devinterp (xarray, zarr) loads only when an estimate is made

        return float(default_nbeta(self.batch_size)) if self.nbeta is None else self.nbeta

    def canonical(self) -> str:
        """The settings as text, part of the probe's name and so of its cache key."""
        restrict = "|".join(self.restrict_to) or "all"
        return (f"lr={self.lr!r},gamma={self.gamma!r},nbeta={self.effective_nbeta!r},chains={self.chains},"
                f"draws={self.draws},burn_in={self.burn_in},batch_size={self.batch_size},seed={self.seed},"
                f"restrict_to={restrict}")

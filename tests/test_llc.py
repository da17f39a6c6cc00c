"""Known answers for the LLC estimate (`interp.metrics.llc`) and its probe's caching.

For a loss that is exactly quadratic around the weights, `L(w) = L* + 1/2 (w-w*)^T H (w-w*)`,
the localized tempered posterior is Gaussian and `nbeta * E[L - L*]` is
`1/2 * sum_i nbeta h_i / (nbeta h_i + gamma)` over the eigenvalues `h_i` of `H`: d/2 for a
regular model (all `h_i` = 1 here), and k/2 when only k directions change the loss (the
learning coefficient of a linear model on data spanning k of its d input dimensions).

TOLERANCE = 15%, from the estimator's known biases with SETTINGS (nbeta = 64/log 64 = 15.4):
localization `gamma/nbeta` = 0.6% low; SGLD discretization `lr * nbeta / 4` = 2% high;
minibatch gradient noise about `lr * nbeta^2 / (4 * batch)` = 0.5% high; and the statistical
error of 4 chains x 2000 draws with an autocorrelation of ~13 steps, about 3% (1 sigma).
15% is more than four of those sigmas beyond the biases, yet a fourfold mis-scaling (test
below) lands 75% off.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from interp import probing
from interp.metrics import llc as llc_module
from interp.metrics.llc import LLCSettings, estimate_llc, llc_probe

TOLERANCE = 0.15
D = 6
N = 4000
SETTINGS = LLCSettings(lr=5e-3, gamma=0.1, chains=4, draws=2000, burn_in=200, batch_size=64, seed=0)


def gaussian_nll(model: nn.Module, rows) -> torch.Tensor:
    """Negative log-likelihood (up to a constant) of y given x under unit Gaussian noise."""
    return 0.5 * ((model(rows["x"]).squeeze(-1) - rows["y"]) ** 2).mean()


def regression_at_minimum(x: torch.Tensor, seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A bias-free linear model set to the least-squares solution on `y = w . x + noise`; its
    minimum-norm one where x spans fewer dimensions (float32 rounding must not count as data)."""
    g = torch.Generator().manual_seed(seed)
    y = x @ torch.randn(D, generator=g) + torch.randn(len(x), generator=g)
    model = nn.Linear(D, 1, bias=False)
    with torch.no_grad():
        solution = torch.linalg.lstsq(x.double(), y.double(), rcond=1e-6, driver="gelsd").solution
        model.weight.copy_(solution.float().unsqueeze(0))
    return model, {"x": x, "y": y}


def regular() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    return regression_at_minimum(torch.randn(N, D, generator=torch.Generator().manual_seed(1)))


def degenerate(k: int = 2) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The same model on inputs spanning only k of the d dimensions (orthonormal basis), so
    d - k directions of the weights provably do not affect the loss: lambda = k/2."""
    g = torch.Generator().manual_seed(2)
    basis = torch.linalg.qr(torch.randn(D, k, generator=g)).Q  # d x k, orthonormal columns
    return regression_at_minimum(torch.randn(N, k, generator=g) @ basis.T)


@pytest.fixture(scope="module")
def regular_estimate():
    model, data = regular()
    return estimate_llc(model, gaussian_nll, data, SETTINGS)


@pytest.fixture(scope="module")
def degenerate_estimate():
    model, data = degenerate()
    return estimate_llc(model, gaussian_nll, data, SETTINGS)


def test_regular_model_llc_is_half_its_dimension(regular_estimate):
    assert regular_estimate.llc == pytest.approx(D / 2, rel=TOLERANCE), regular_estimate
    assert regular_estimate.trustworthy, regular_estimate.problems
    assert len(regular_estimate.loss_traces) == SETTINGS.chains
    assert all(len(t) == SETTINGS.burn_in + SETTINGS.draws for t in regular_estimate.loss_traces)


def test_degenerate_model_llc_counts_only_the_directions_that_matter(degenerate_estimate):
    assert degenerate_estimate.llc == pytest.approx(2 / 2, rel=TOLERANCE), degenerate_estimate
    assert degenerate_estimate.trustworthy, degenerate_estimate.problems


def test_the_more_degenerate_model_ranks_lower(regular_estimate, degenerate_estimate):
    low, high = degenerate_estimate, regular_estimate
    assert low.llc + 2 * low.llc_std < high.llc - 2 * high.llc_std


def test_a_mis_scaled_estimator_fails_the_known_answer():
    """Sample at 4x the inverse temperature the estimate is read out at (the gradient of the
    loss scaled, its value not): the estimate drops to d/8 and the tolerance catches it."""
    model, data = regular()

    def four_times_the_gradient(m: nn.Module, rows) -> torch.Tensor:
        loss = gaussian_nll(m, rows)
        return loss + 3 * (loss - loss.detach())

    estimate = estimate_llc(model, four_times_the_gradient, data, SETTINGS)
    assert abs(estimate.llc - D / 2) > TOLERANCE * D / 2, estimate.llc


def test_estimate_is_deterministic_and_leaves_the_model_and_global_rng_alone():
    model, data = regular()
    before = model.weight.detach().clone()
    settings = LLCSettings(lr=5e-3, gamma=0.1, chains=2, draws=30, burn_in=5, batch_size=32, seed=3)
    rng_state = torch.random.get_rng_state()
    first = estimate_llc(model, gaussian_nll, data, settings)
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    assert torch.equal(model.weight, before) and model.weight.requires_grad and model.weight.grad is None
    assert estimate_llc(model, gaussian_nll, data, settings) == first


def test_a_diverging_chain_is_reported_not_trusted():
    model, data = regular()
    estimate = estimate_llc(model, gaussian_nll, data, LLCSettings(lr=5.0, gamma=0.1, chains=2, draws=20,
                                                                   burn_in=0, batch_size=32))
    assert not estimate.trustworthy
    assert any("diverged" in p for p in estimate.problems), estimate.problems
    assert math.isnan(estimate.llc)


def test_a_restriction_matching_no_weight_is_refused():
    model, data = regular()
    with pytest.raises(ValueError, match="restrict_to"):
        estimate_llc(model, gaussian_nll, data, LLCSettings(restrict_to=("nothing.*",)))


@pytest.mark.parametrize("field, value", [("lr", 0.0), ("gamma", -1.0), ("chains", 0), ("draws", 2),
                                          ("batch_size", 1), ("nbeta", math.inf), ("restrict_to", "blocks.*")])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}: expected"):
        LLCSettings(**{field: value})


def test_settings_text_changes_with_every_setting():
    base = LLCSettings()
    others = [LLCSettings(lr=2e-3), LLCSettings(gamma=10.0), LLCSettings(nbeta=3.0), LLCSettings(chains=2),
              LLCSettings(draws=100), LLCSettings(burn_in=10), LLCSettings(batch_size=32), LLCSettings(seed=1),
              LLCSettings(restrict_to=("blocks.0.*",))]
    texts = {s.canonical() for s in [base, *others]}
    assert len(texts) == len(others) + 1
    assert base.canonical() == LLCSettings(nbeta=64 / math.log(64)).canonical()


def test_probe_caches_per_checkpoint(trained_run, run_copy, monkeypatch):
    settings = LLCSettings(lr=1e-4, gamma=100.0, chains=2, draws=6, burn_in=2, batch_size=2, seed=0)
    probes = {"llc": llc_probe(settings)}
    batch = {"tokens": trained_run.tokens}
    table = probing.probe(run_copy, probes, batch, device="cpu")
    assert set(table.columns) == {"llc/llc", "llc/llc_std", "llc/init_loss", "llc/trustworthy"}
    assert len(table.steps) == len(run_copy.steps)
    assert set(table["llc/trustworthy"]) <= {0.0, 1.0}

    def no_recompute(*args, **kwargs):
        raise AssertionError("the second probe() call recomputed the LLC")

    monkeypatch.setattr(llc_module, "estimate_llc", no_recompute)
    again = probing.probe(run_copy, probes, batch, device="cpu")
    assert (again.values == table.values)[~(table.values != table.values)].all()
    changed = {"llc": llc_probe(LLCSettings(lr=1e-4, gamma=100.0, chains=2, draws=6, burn_in=2, batch_size=2,
                                            seed=1))}
    with pytest.raises(AssertionError, match="recomputed"):
        probing.probe(run_copy, changed, batch, device="cpu")

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
below) lands 75% off. A refined LLC over a group of k of the weights has the same biases and a
statistical error about sqrt(d/k) times larger (fewer directions average out): 3.7% for k = 4.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from interp import probing
from interp.metrics import llc as llc_module
from interp.metrics.llc import (
    LLCSettings,
    component_masks,
    estimate_llc,
    language_model_loss,
    llc_probe,
    load_llc_traces,
    load_llc_traces_meta,
    loss_on_positions,
    refined_llc_probe,
)
from interp.metrics.llc_calibration import calibrate_llc

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
    y = x @ torch.randn(x.shape[1], generator=g) + torch.randn(len(x), generator=g)
    model = nn.Linear(x.shape[1], 1, bias=False)
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


def test_each_checkpoint_draws_its_own_streams_and_the_probe_passes_its_step(trained_run, run_copy):
    """Estimates at different checkpoints have independent errors (their chains' spreads pool
    into one noise level for the stage boundaries): the same weights at steps 5 and 6 give other
    traces, while one step's stream is reproducible; the probe samples with the checkpoint's step."""
    model, data = regular()
    settings = LLCSettings(lr=5e-3, gamma=0.1, chains=2, draws=30, burn_in=5, batch_size=32, seed=3)
    at_five = estimate_llc(model, gaussian_nll, data, settings, step=5)
    assert estimate_llc(model, gaussian_nll, data, settings, step=5) == at_five
    assert estimate_llc(model, gaussian_nll, data, settings, step=6).loss_traces != at_five.loss_traces
    assert estimate_llc(model, gaussian_nll, data, settings).loss_traces != at_five.loss_traces

    small = LLCSettings(lr=1e-4, gamma=100.0, chains=2, draws=6, burn_in=2, batch_size=2, seed=0)
    batch = {"tokens": trained_run.tokens}
    step = run_copy.steps[-1]
    table = probing.probe(run_copy, {"llc": llc_probe(small)}, batch, steps=[step], device="cpu").select("llc")
    direct = estimate_llc(run_copy.load(step, device="cpu"), language_model_loss, batch, small, step=step)
    assert table["llc"][0] == pytest.approx(direct.llc, rel=1e-5)


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
    assert set(table.columns) == {"llc/llc", "llc/llc_std", "llc/init_loss", "llc/trustworthy", "llc/llc_chain0",
                                  "llc/llc_chain1"}
    assert len(table.steps) == len(run_copy.steps)
    assert set(table["llc/trustworthy"]) <= {0.0, 1.0}
    traces = load_llc_traces(run_copy, "llc", probes["llc"], batch, device="cpu")
    assert sorted(traces) == sorted(run_copy.steps)
    for row, step in enumerate(table.steps):
        assert traces[int(step)].shape == (settings.chains, settings.burn_in + settings.draws)
        assert_chains_read_from_traces(table.select("llc"), row, "", traces[int(step)], settings)

    def no_recompute(*args, **kwargs):
        raise AssertionError("the second probe() call recomputed the LLC")

    monkeypatch.setattr(llc_module, "estimate_llc", no_recompute)
    again = probing.probe(run_copy, probes, batch, device="cpu")
    assert (again.values == table.values)[~(table.values != table.values)].all()
    changed = {"llc": llc_probe(LLCSettings(lr=1e-4, gamma=100.0, chains=2, draws=6, burn_in=2, batch_size=2,
                                            seed=1))}
    with pytest.raises(AssertionError, match="recomputed"):
        probing.probe(run_copy, changed, batch, device="cpu")


def assert_chains_read_from_traces(table, row: int, suffix: str, traces, settings: LLCSettings) -> None:
    """Each chain's column is `nbeta * (mean post-burn-in loss of its saved trace - init_loss)`."""
    init_loss = table["init_loss"][row]
    for chain, trace in enumerate(traces):
        expected = settings.effective_nbeta * (float(trace[settings.burn_in:].astype(float).mean()) - init_loss)
        assert table[f"llc_chain{chain}{suffix}"][row] == pytest.approx(expected, abs=1e-4)


# --- refined LLC ---------------------------------------------------------------------------------


def only(columns: slice, width: int) -> dict[str, torch.Tensor]:
    mask = torch.zeros(1, width, dtype=torch.bool)
    mask[:, columns] = True
    return {"weight": mask}


def test_refined_llc_of_each_weight_group_is_half_its_size():
    """A regular regression in 12 dimensions, its weights split 4 + 8: sampling one group with
    the other held at the minimum is a regular model of that group's size (its block of the
    Hessian is positive definite), so lambda = 2 and 4."""
    model, data = regression_at_minimum(torch.randn(N, 12, generator=torch.Generator().manual_seed(4)))
    for columns, size in ((slice(0, 4), 4), (slice(4, 12), 8)):
        estimate = estimate_llc(model, gaussian_nll, data, SETTINGS, only(columns, 12))
        assert estimate.sampled_entries == size
        assert estimate.llc == pytest.approx(size / 2, rel=TOLERANCE), (size, estimate)
        assert estimate.trustworthy, estimate.problems


def test_weights_that_do_not_affect_the_loss_have_refined_llc_near_zero():
    """Inputs whose last two coordinates are 0: those weights never change the loss, so the
    chain's loss is the minibatch loss at the minimum and the estimate is only the noise of
    drawing rows: within 5 of its standard deviations, `nbeta * std(row loss) / sqrt(rows drawn)`."""
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(5))
    x[:, 4:] = 0
    model, data = regression_at_minimum(x)
    settings = LLCSettings(lr=5e-3, gamma=0.1, chains=4, draws=500, burn_in=100, batch_size=64, seed=0)
    estimate = estimate_llc(model, gaussian_nll, data, settings, only(slice(4, 6), D))
    with torch.no_grad():
        row_losses = 0.5 * (model(data["x"]).squeeze(-1) - data["y"]) ** 2
    noise = settings.effective_nbeta * float(row_losses.std()) / math.sqrt(
        settings.batch_size * settings.draws * settings.chains)
    assert abs(estimate.llc) < 5 * noise, (estimate.llc, noise)
    relevant = estimate_llc(model, gaussian_nll, data, settings, only(slice(0, 4), D))
    assert relevant.llc > 20 * noise


def test_masked_entries_never_move_and_sampled_ones_do():
    model, data = regular()
    start = model.weight.detach().clone()
    seen = []

    def recording_nll(m: nn.Module, rows) -> torch.Tensor:
        if torch.is_grad_enabled():  # a sampling step, not the initial loss
            seen.append(m.weight.detach().clone())
        return gaussian_nll(m, rows)

    settings = LLCSettings(lr=5e-3, gamma=0.1, chains=2, draws=20, burn_in=5, batch_size=32)
    estimate = estimate_llc(model, recording_nll, data, settings, only(slice(1, 3), D))
    assert estimate.sampled_entries == 2
    weights = torch.stack(seen)
    assert len(seen) == settings.chains * (settings.burn_in + settings.draws)
    fixed = torch.ones(D, dtype=torch.bool)
    fixed[1:3] = False
    assert torch.equal(weights[:, 0, fixed], start[0, fixed].expand(len(seen), -1))
    assert (weights[:, 0, 1:3] != start[0, 1:3]).any(dim=1).sum() > len(seen) // 2
    assert torch.equal(model.weight, start)


@pytest.mark.parametrize("masks, settings, match", [
    ({"bias": torch.ones(1, D, dtype=torch.bool)}, LLCSettings(), "masks: no parameter named 'bias'"),
    ({"weight": torch.ones(D, dtype=torch.bool)}, LLCSettings(), "masks: expected a bool mask of shape"),
    ({"weight": torch.ones(1, D)}, LLCSettings(), "masks: expected a bool mask"),
    ({"weight": torch.zeros(1, D, dtype=torch.bool)}, LLCSettings(), "masks: expected at least one"),
    ({"weight": torch.ones(1, D, dtype=torch.bool)}, LLCSettings(restrict_to=("weight",)), "masks: give"),
])
def test_bad_masks_are_refused_naming_the_field(masks, settings, match):
    model, data = regular()
    with pytest.raises(ValueError, match=f"^{match}"):
        estimate_llc(model, gaussian_nll, data, settings, masks)


def test_component_masks_split_the_weights_as_the_bridge_does():
    from helpers import tiny_model_config

    from interp.ids import EMBED, LOGITS, HeadId, MlpId
    from interp.model import build_model, named_trainable_parameters

    model = build_model(tiny_model_config(), device="cpu")  # d_model 16, 2 heads of 8
    head = component_masks(model, HeadId(1, 0))
    assert set(head) == {f"blocks.1.attn.{p}.{kind}" for p in "qkv" for kind in ("weight", "bias")} | {
        "blocks.1.attn.o.weight"}
    assert head["blocks.1.attn.q.weight"][:8].all() and not head["blocks.1.attn.q.weight"][8:].any()
    assert head["blocks.1.attn.o.weight"][:, :8].all() and not head["blocks.1.attn.o.weight"][:, 8:].any()
    assert int(head["blocks.1.attn.v.bias"].sum()) == 8
    assert set(component_masks(model, MlpId(0))) == {"blocks.0.ln2.weight", "blocks.0.ln2.bias",
                                                     "blocks.0.mlp.in.weight", "blocks.0.mlp.in.bias",
                                                     "blocks.0.mlp.out.weight", "blocks.0.mlp.out.bias"}
    assert set(component_masks(model, EMBED)) == {"embed.weight", "pos_embed.weight"}
    assert set(component_masks(model, LOGITS)) == {"ln_final.weight", "ln_final.bias", "unembed.weight"}
    # every entry is in at most one component; those in none are the heads' shared ones
    owners = {name: torch.zeros(p.shape, dtype=torch.int64) for name, p in named_trainable_parameters(model)}
    for component in (EMBED, LOGITS, *(HeadId(layer, h) for layer in range(2) for h in range(2)), MlpId(0), MlpId(1)):
        for name, mask in component_masks(model, component).items():
            owners[name] += mask
    assert all(int(count.max()) <= 1 for count in owners.values())
    assert {name for name, count in owners.items() if not count.all()} == {
        f"blocks.{layer}.{p}" for layer in range(2) for p in ("ln1.weight", "ln1.bias", "attn.o.bias")}
    with pytest.raises(ValueError, match="^component: expected one of"):
        component_masks(model, HeadId(2, 0))


def test_loss_on_positions_reads_only_the_chosen_positions(trained_run):
    from interp.model import build_model, forward, token_losses

    model = build_model(trained_run.model_cfg, device="cpu")
    tokens = trained_run.tokens
    chosen = torch.zeros(tokens.shape, dtype=torch.bool)
    chosen[:, 3] = True
    chosen[0, 7] = True
    rows = {"tokens": tokens, "repeated": chosen}
    with torch.no_grad():
        expected = token_losses(forward(model, rows), rows)[chosen].mean()
        assert float(loss_on_positions("repeated")(model, rows)) == pytest.approx(float(expected), rel=1e-6)
        everywhere = {"tokens": tokens, "all": torch.ones(tokens.shape, dtype=torch.bool)}
        assert float(loss_on_positions("all")(model, everywhere)) == pytest.approx(
            float(language_model_loss(model, everywhere)), rel=1e-6)
    for bad in ({"tokens": tokens}, {"tokens": tokens, "repeated": chosen.long()}):
        with pytest.raises(ValueError, match="^batch: expected a bool mask 'repeated'"):
            loss_on_positions("repeated")(model, bad)


def test_refined_probe_reads_as_a_head_grid_and_keeps_its_traces(trained_run, run_copy):
    from interp.ids import HeadId, MlpId

    settings = LLCSettings(lr=1e-4, gamma=100.0, chains=2, draws=6, burn_in=2, batch_size=2, seed=0)
    components = [HeadId(0, 0), HeadId(0, 1), HeadId(1, 0), HeadId(1, 1), MlpId(0)]
    probe_obj = refined_llc_probe(settings, components)
    batch = {"tokens": trained_run.tokens}
    table = probing.probe(run_copy, {"rllc": probe_obj}, batch, device="cpu")
    grid = table.head_grid("rllc/llc", 2, 2)
    assert grid.shape == (len(run_copy.steps), 2, 2) and np.isfinite(grid).all()
    assert grid[:, 1, 0].tolist() == table["rllc/llc/L1H0"].tolist()
    assert {"rllc/llc/MLP0", "rllc/llc_std/MLP0", "rllc/trustworthy/L0H1", "rllc/llc_chain1/L0H0",
            "rllc/init_loss"} <= set(table.columns)
    traces = load_llc_traces(run_copy, "rllc", probe_obj, batch, device="cpu")
    meta = load_llc_traces_meta(run_copy, "rllc", probe_obj, batch, device="cpu")
    assert meta["components"] == [str(c) for c in components] and meta["axes"][0] == "component"
    sub = table.select("rllc")
    for row, step in enumerate(table.steps):
        assert traces[int(step)].shape == (len(components), settings.chains, settings.burn_in + settings.draws)
        for index, component in enumerate(components):
            assert_chains_read_from_traces(sub, row, f"/{component}", traces[int(step)][index], settings)


@pytest.mark.parametrize("overrides", [{}, {"attn_only": True, "n_layers": 3}, {"positional": "rotary", "n_heads": 4}])
def test_a_heads_refined_llc_runs_only_the_head_and_equals_the_whole_model_path(overrides):
    """Known answer for the head path (the block's input and the other heads' part computed once,
    each step running the head's attention and the blocks above it): the whole-model path's
    estimate with the same noise and minibatches, to float rounding (1e-4 of each chain's LLC),
    in every layer, with an MLP, attention-only and under rotary positions, on the full and a
    position-restricted loss."""
    from helpers import D_VOCAB, tiny_model_config

    from interp.ids import HeadId, MlpId
    from interp.model import build_model

    model = build_model(tiny_model_config(**overrides), device="cpu")
    tokens = torch.randint(0, D_VOCAB, (24, 12), generator=torch.Generator().manual_seed(3))
    data = {"tokens": tokens, "repeated": torch.rand(tokens.shape, generator=torch.Generator().manual_seed(4)) < 0.5}
    settings = LLCSettings(lr=1e-3, gamma=100.0, chains=2, draws=12, burn_in=4, batch_size=4, seed=3)
    for loss in (language_model_loss, loss_on_positions("repeated")):
        for head in (HeadId(0, 1), HeadId(model.cfg.n_layers - 1, 0)):
            masks = component_masks(model, head)
            assert llc_module._sampled_head(model, loss, masks) == head
            fast = estimate_llc(model, loss, data, settings, masks)
            whole = estimate_llc(model, lambda m, rows, loss=loss: loss(m, rows), data, settings, masks)
            assert fast.init_loss == whole.init_loss and fast.sampled_entries == whole.sampled_entries
            assert fast.llc_per_chain == pytest.approx(whole.llc_per_chain, rel=1e-4), (head, loss)
            assert np.allclose(fast.loss_traces, whole.loss_traces, rtol=1e-5, atol=0), (head, loss)
    # anything but exactly one head's weights, or a loss not of the logits, takes the whole-model path
    part = {**component_masks(model, HeadId(0, 0)), "blocks.0.attn.q.bias": torch.zeros(
        model.cfg.n_heads * model.cfg.head_dim, dtype=torch.bool)}
    for masks, loss in ((component_masks(model, HeadId(0, 0)), gaussian_nll), (part, language_model_loss),
                        (component_masks(model, MlpId(0)) if not model.cfg.attn_only else None, language_model_loss)):
        assert llc_module._sampled_head(model, loss, masks) is None


def test_refined_probe_refuses_bad_components_and_restrictions():
    from interp.ids import HeadId

    with pytest.raises(ValueError, match="^components: expected distinct"):
        refined_llc_probe(LLCSettings(), [HeadId(0, 0), HeadId(0, 0)])
    with pytest.raises(ValueError, match="^restrict_to:"):
        refined_llc_probe(LLCSettings(restrict_to=("blocks.*",)))


def test_loading_traces_never_saved_names_the_folder(run_copy, trained_run):
    with pytest.raises(FileNotFoundError, match="no saved LLC traces"):
        load_llc_traces(run_copy, "llc", llc_probe(LLCSettings()), {"tokens": trained_run.tokens}, device="cpu")


# --- pinned to devinterp's own estimator ---------------------------------------------------------


def test_estimate_agrees_with_devinterps_llc(tmp_path):
    """devinterp's `llc()` (2.0.1: sampling plus `compute_llc`) on the same regression, settings
    and SGLD optimizer. Its data is a dataset of `input_ids`, so each row is its index (and a
    dummy second token: one per-token loss per row). It averages every step's loss, burn-in
    included, so both run without burn-in; its initial loss covers the whole data set when
    `num_init_loss_batches * batch_size` = the rows. The two differ only in which rows each
    step draws (devinterp: an epoch without replacement, replayed; here: with replacement) and
    in the noise, so their means agree within the spread of a difference of two 4-chain means:
    3 standard errors, `3 * sqrt((s1^2 + s2^2) / 4)` from the chains' own spreads."""
    from datasets import Dataset
    from devinterp.slt.llc import llc as devinterp_llc

    rows = 2048
    model, data = regression_at_minimum(torch.randn(rows, D, generator=torch.Generator().manual_seed(1)))
    settings = LLCSettings(lr=5e-3, gamma=0.1, chains=4, draws=500, burn_in=0, batch_size=64, seed=0)
    ours = estimate_llc(model, gaussian_nll, data, settings)

    def per_row_nll(m: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        index = input_ids[:, 0]
        return (0.5 * (m(data["x"][index]).squeeze(-1) - data["y"][index]) ** 2).unsqueeze(-1)

    theirs = devinterp_llc(
        model, Dataset.from_dict({"input_ids": [[i, 0] for i in range(rows)]}).with_format("torch"), {},
        lr=settings.lr, n_beta=settings.effective_nbeta, localization=settings.gamma, num_chains=settings.chains,
        num_draws=settings.draws, batch_size=settings.batch_size, num_burnin_steps=0,
        num_init_loss_batches=rows // settings.batch_size, init_seed=0, loss_fn=per_row_nll, device="cpu",
        output_path=tmp_path / "samples.zarr")
    assert float(theirs.init_loss) == pytest.approx(ours.init_loss, rel=1e-5)
    their_chains = np.asarray(theirs.llc_per_chain.values, dtype=float)
    spread = 3 * math.sqrt((np.var(ours.llc_per_chain, ddof=1) + np.var(their_chains, ddof=1)) / settings.chains)
    assert abs(ours.llc - float(theirs.llc_mean)) < spread, (ours.llc, float(theirs.llc_mean), spread)
    assert ours.llc == pytest.approx(D / 2, rel=TOLERANCE)


# --- calibration ---------------------------------------------------------------------------------


CALIBRATION_BASE = LLCSettings(lr=1e-3, gamma=0.1, chains=4, draws=600, burn_in=200, batch_size=64, seed=0)


def test_calibration_picks_the_largest_step_size_that_passes_and_it_gives_the_known_answer():
    """lr 5 diverges; 5e-3 (0.04 of a relaxation time, `2 / (lr * nbeta)`, per step) passes and is
    the largest that does, so it is chosen (2e-3 may pass or not: its trace drifts more over 600
    draws); its estimate is d/2."""
    model, data = regular()
    calibration = calibrate_llc(model, gaussian_nll, data, CALIBRATION_BASE, lrs=(2e-3, 5e-3, 5.0))
    assert [t.settings.lr for t in calibration.trials] == [2e-3, 5e-3, 5.0]
    assert not calibration.trials[2].passed and "diverged" in calibration.trials[2].estimate.problems[0]
    assert calibration.passed and calibration.chosen == replace(CALIBRATION_BASE, lr=5e-3), calibration.reason
    assert calibration.chosen_estimate.llc == pytest.approx(D / 2, rel=TOLERANCE)
    assert "largest step size that passed" in calibration.reason


def test_calibration_with_only_a_divergent_step_size_says_none_passed():
    model, data = regular()
    calibration = calibrate_llc(model, gaussian_nll, data, replace(CALIBRATION_BASE, draws=30, burn_in=0),
                                lrs=(5.0,), gammas=(0.1, 1.0))
    assert not calibration.passed and calibration.chosen is None and calibration.chosen_estimate is None
    assert len(calibration.trials) == 2
    assert calibration.reason.startswith("none passed") and "diverged" in calibration.reason


@pytest.mark.parametrize("grid, match", [({"lrs": ()}, "^lrs: expected"), ({"lrs": (-1.0,)}, "^lr: expected"),
                                         ({"gammas": ()}, "^gammas: expected"), ({"nbetas": (0.0,)}, "^nbeta:")])
def test_calibration_refuses_a_bad_grid(grid, match):
    model, data = regular()
    with pytest.raises(ValueError, match=match):
        calibrate_llc(model, gaussian_nll, data, CALIBRATION_BASE, **grid)

"""Sweep files without Ray: parsing, validation before any trial, dedup of conditional keys, sizing, CLI errors.

The grid dedup is checked against a closed form: Normal/MIRROR x PPOTS{off,on} x p_model{EPR,AP} has
2 x (1 + 2) = 6 distinct trials (p_model is ignored when PPOTS is off), not the naive 8; LoRA's rank 0 runs once
whatever its alpha and dropout.
"""

from __future__ import annotations

import itertools

import pytest

from mdm.platform.config import load_config
from mdm.platform.config_ops import with_overrides
from mdm.platform.tuner.space import SweepError, load_sweep, parse_sweep
from mdm.platform.commands.tune import main
from mdm.platform.runs import sweep_name
from mdm.platform.sweep.sweep import run_sweep
from mdm.platform.tuner.tuner import TrialResources


def max_concurrent(c, cluster):
    """A sweep's trials at once: each a Ray Train job, under `tune.max_concurrent_trials` when set."""
    return TrialResources.train_job(c.tune, c.ray).max_concurrent(cluster, c.tune.max_concurrent_trials)


@pytest.fixture(scope="module")
def cfg():
    return load_config()


def test_grid_is_crossed_and_p_model_deduped_when_ppots_off(cfg):
    space = parse_sweep({"train.train_mode": {"grid": ["Normal", "MIRROR"]}, "train.PPOTS": {"grid": [False, True]},
                         "train.p_model": {"grid": ["EPR", "AP"]}}, cfg)
    assert space.n_grid_raw == 8
    assert len(space.trials) == 6
    sigs = {tuple(sorted(t.items())) for t in space.trials}
    assert len(sigs) == 6
    for mode, (ppots, p) in itertools.product(["Normal", "MIRROR"], [(False, cfg.train.p_model), (True, "EPR"),
                                                                     (True, "AP")]):
        assert {"train.train_mode": mode, "train.PPOTS": ppots, "train.p_model": p} in space.trials
    # Every trial config a person would reproduce is a valid config.
    for t in space.trials:
        with_overrides(cfg, t)


def test_fixed_ppots_off_collapses_p_model_grid(cfg):
    space = parse_sweep({"train.PPOTS": False, "train.p_model": {"grid": ["EPR", "AP"]},
                         "train.lr": {"grid": [1e-4, 1e-3]}}, cfg)
    assert len(space.trials) == 2 and {t["train.p_model"] for t in space.trials} == {cfg.train.p_model}


def test_lora_grid_runs_rank_0_once(cfg):
    # r 0 is a full fine-tune: alpha and dropout change nothing, so (0, 8) x alpha (16, 32) x dropout (0, 0.1) = 1 + 4
    space = parse_sweep({"model.lora.r": {"grid": [0, 8]}, "model.lora.alpha": {"grid": [16.0, 32.0]},
                         "model.lora.dropout": {"grid": [0.0, 0.1]}}, cfg)
    assert space.n_grid_raw == 8 and len(space.trials) == 5
    off = [t for t in space.trials if t["model.lora.r"] == 0]
    assert off == [{"model.lora.r": 0, "model.lora.alpha": cfg.model.lora.alpha,
                    "model.lora.dropout": cfg.model.lora.dropout}]
    assert sweep_name(cfg, space) == sweep_name(cfg, parse_sweep({"model.lora.r": {"grid": [0, 8]},
                                                                  "model.lora.alpha": {"grid": [16.0, 32.0]},
                                                                  "model.lora.dropout": {"grid": [0.0, 0.1]}}, cfg))


def test_random_draws_of_an_ignored_key_are_canonicalised_in_the_trial(cfg):
    space = parse_sweep({"train.PPOTS": {"grid": [False, True]}, "train.p_model": {"choice": ["EPR", "AP"]},
                         "train.lr": {"loguniform": [1e-5, 1e-3]}}, cfg)
    assert len(space.trials) == 2
    off = space.overrides_for({"grid": {"train.PPOTS": False}, "sample": {"train.p_model": "AP", "train.lr": 3e-4}})
    on = space.overrides_for({"grid": {"train.PPOTS": True}, "sample": {"train.p_model": "AP", "train.lr": 3e-4}})
    assert off["train.p_model"] == cfg.train.p_model and on["train.p_model"] == "AP"
    assert off["train.lr"] == 3e-4


def test_nested_yaml_and_types_follow_the_schema(cfg, tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("train:\n  lr: {loguniform: [1e-5, 1e-3]}\n  max_steps: {randint: [2, 6]}\n"
                    "  PPOTS: {grid: ['true', false]}\n  batch_size_per_gpu: 4\n")
    space = load_sweep(path, cfg)
    dims = {d.key: d for d in space.dims}
    assert dims["train.lr"].args == [1e-5, 1e-3] and dims["train.max_steps"].args == [2, 6]
    assert dims["train.PPOTS"].args == [True, False]  # the string 'true' became the bool the schema wants
    assert space.fixed == {"train.batch_size_per_gpu": 4}
    ps = space.param_space("random")
    assert ps["grid"] == {"grid_search": space.trials}
    lr = ps["sample"]["train.lr"]
    draws = [lr.sample() for _ in range(200)]
    assert all(1e-5 <= x <= 1e-3 for x in draws)
    # log-uniform: about half the draws below the geometric mean 1e-4 (binomial, n=200: 5 sigma ~ 35)
    assert abs(sum(x < 1e-4 for x in draws) - 100) < 35
    optuna_space = space.param_space("optuna")
    assert "grid" not in optuna_space and set(optuna_space["sample"]) == set(dims)


@pytest.mark.parametrize("sweep, key, words", [
    ({"train.lrr": {"loguniform": [1e-5, 1e-3]}}, "train.lrr", "did you mean train.lr"),
    ({"trian.lr": 1e-3}, "trian", "did you mean train"),
    ({"train.lr": {"normal": [0, 1]}}, "train.lr", "bad distribution"),
    ({"train.lr": {"loguniform": [0, 1e-3]}}, "train.lr", "> 0"),
    ({"train.lr": {"uniform": [1e-3, 1e-5]}}, "train.lr", "low < high"),
    ({"train.lr": {"uniform": [1e-3]}}, "train.lr", "[low, high]"),
    ({"train.train_mode": {"grid": ["Normal", "MIROR"]}}, "train.train_mode", "valid: Normal, MIRROR"),
    ({"train.p_model": {"choice": ["EPX"]}}, "train.p_model", "unknown p_models 'EPX'"),
    ({"train.max_steps": {"randint": [1.5, 3]}}, "train.max_steps", "integers"),
    ({"train.PPOTS": {"grid": []}}, "train.PPOTS", "non-empty list"),
    ({"conditions": {"train.lr": {"train.PPOTZ": True}}}, "train.PPOTZ", "unknown key"),
])
def test_invalid_sweep_names_the_key(cfg, sweep, key, words):
    with pytest.raises(SweepError) as e:
        parse_sweep(sweep, cfg)
    assert key in str(e.value) and words in str(e.value)


def test_invalid_sweep_fails_before_any_trial(cfg, tmp_path, capsys):
    import ray

    base = with_overrides(cfg, {"ray.storage_path": str(tmp_path / "ray"), "tracking.tracking_uri":
                                f"sqlite:///{tmp_path}/ml.db"})
    with pytest.raises(SweepError, match="train.warmup"):
        run_sweep(base, {"train.lr": {"grid": [1e-4]}, "train.warmup": {"grid": [1, 2]}})
    assert not ray.is_initialized() and not (tmp_path / "ray").exists() and not (tmp_path / "ml.db").exists()

    (tmp_path / "bad.yaml").write_text("train.lr: {loguniform: [1e-3, 1e-5]}\n")
    (tmp_path / "base.yaml").write_text(f"ray: {{storage_path: {tmp_path / 'ray'}}}\n")
    rc = main(["--config", str(tmp_path / "base.yaml"), "--sweep", str(tmp_path / "bad.yaml")])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.yaml" in err and "train.lr" in err and "low < high" in err
    assert not ray.is_initialized() and not (tmp_path / "ray").exists()


def test_concurrency_from_cluster_resources(cfg):
    c = with_overrides(cfg, {"tune.cpus_per_trial": 0.1, "ray.cpus_per_worker": 0.4, "ray.num_workers": 2,
                             "tune.reserve_cpus": 1.0})
    assert max_concurrent(c, {"CPU": 8.0}) == 7  # (8 - 1) / (0.1 + 2 x 0.4) = 7.8 -> 7
    assert max_concurrent(c, {"CPU": 1.5}) == 1         # never below one
    g = with_overrides(c, {"ray.use_gpu": True, "ray.gpus_per_worker": 1.0})
    assert max_concurrent(g, {"CPU": 64.0, "GPU": 4.0}) == 2
    assert max_concurrent(with_overrides(c, {"tune.max_concurrent_trials": 3}), {"CPU": 64.0}) == 3


def test_sweep_name_is_deterministic_and_depends_on_the_space(cfg):
    a = parse_sweep({"train.lr": {"grid": [1e-4, 1e-3]}}, cfg)
    b = parse_sweep({"train.lr": {"grid": [1e-4, 1e-2]}}, cfg)
    assert sweep_name(cfg, a) == sweep_name(cfg, parse_sweep({"train.lr": {"grid": [1e-4, 1e-3]}}, cfg))
    assert sweep_name(cfg, a) != sweep_name(cfg, b)
    assert sweep_name(with_overrides(cfg, {"tune.name": "mine"}), a) == "mine"


def test_optuna_searcher_draws_from_the_space_with_grid_keys_as_categories(cfg):
    from mdm.platform.sweep.sweep import _searcher

    space = parse_sweep({"train.lr": {"loguniform": [1e-5, 1e-3]}, "train.PPOTS": {"grid": [False, True]},
                         "train.p_model": {"grid": ["EPR", "AP"]}}, cfg)
    searcher = _searcher(with_overrides(cfg, {"tune.searcher": "optuna"}))
    assert searcher.set_search_properties("eval/loss", "min", space.param_space("optuna"))
    for i in range(8):
        suggested = searcher.suggest(f"t{i}")
        params = space.overrides_for(suggested)
        assert 1e-5 <= params["train.lr"] <= 1e-3 and params["train.PPOTS"] in (False, True)
        drawn = suggested["sample"]["train.p_model"]
        assert params["train.p_model"] == (drawn if params["train.PPOTS"] else cfg.train.p_model)
        with_overrides(cfg, params)

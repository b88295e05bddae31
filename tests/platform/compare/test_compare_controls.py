"""Positive-control arms of a comparison (`compare.control_batch_multipliers`), against hand computation.

The control arms are the baseline configuration again with k x its batch: one per seed (and learning rate),
labelled "<baseline> batch×k", training round(k x batch) sequences per micro-batch after the equal-forwards
rule; a baseline that the grid does not contain is refused, naming what the grid has.
"""

from __future__ import annotations

import pytest

from mdm.platform.config import load_config
from mdm.platform.config_ops import flatten
from mdm.platform.fields import ConfigError
from mdm.platform.compare.compare_space import cell_label, cell_overrides, comparison_space, group_label

GRID = "compare.grid={train.train_mode: [Normal, MIRROR], train.PPOTS: [false, true], train.p_model: [EPR]}"


def _cfg(*overrides: str):
    return load_config([], [GRID, "train.batch_size_per_gpu=8", "compare.seeds=[1, 2]", *overrides])


def test_control_arms_are_the_baseline_with_k_times_the_batch():
    cfg = _cfg("compare.control_batch_multipliers=[1.6, 2]", "compare.lrs=[1.0e-3, 3.0e-4]")
    space = comparison_space(cfg)
    flat = flatten(cfg)
    assert len(space.trials) == (4 + 2) * 2 * 2  # 4 configurations + 2 controls, x 2 lrs x 2 seeds
    batch = {}
    for t in space.trials:
        label = group_label({**flat, **t}, space)
        batch.setdefault(label, set()).add(cell_overrides(cfg, t).get("train.batch_size_per_gpu"))
    assert batch == {"Standard lr=1e-3": {8}, "Standard lr=3e-4": {8}, "MIRROR lr=1e-3": {4}, "MIRROR lr=3e-4": {4},
                     "PPOTS(EPR) lr=1e-3": {8}, "PPOTS(EPR) lr=3e-4": {8},
                     "MIRROR+PPOTS(EPR) lr=1e-3": {4}, "MIRROR+PPOTS(EPR) lr=3e-4": {4},
                     "Standard lr=1e-3 batch×1.6": {13}, "Standard lr=3e-4 batch×1.6": {13},  # round(12.8)
                     "Standard lr=1e-3 batch×2": {16}, "Standard lr=3e-4 batch×2": {16}}
    control = next(t for t in space.trials if t.get("compare.batch_multiplier") == 2.0)
    assert cell_label({**flat, **control}, space) == f"Standard lr={'1e-3'} batch×2 seed={control['train.seed']}"


def test_controls_follow_the_baseline_and_equal_batch():
    cfg = _cfg("compare.control_batch_multipliers=[2]", "compare.baseline=MIRROR", "compare.equalize=batch")
    space = comparison_space(cfg)
    flat = flatten(cfg)
    controls = [t for t in space.trials if t.get("compare.batch_multiplier")]
    assert {group_label({**flat, **t}, space) for t in controls} == {"MIRROR batch×2"}
    assert {cell_overrides(cfg, t)["train.batch_size_per_gpu"] for t in controls} == {16}
    assert sorted(t["train.seed"] for t in controls) == [1, 2]


def test_bad_control_settings_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"baseline 'Plain'.*configurations: MIRROR, MIRROR\+PPOTS\(EPR\)"):
        comparison_space(_cfg("compare.control_batch_multipliers=[2]", "compare.baseline=Plain"))
    with pytest.raises((ConfigError, ValueError), match="control_batch_multipliers"):
        _cfg("compare.control_batch_multipliers=[1.0]")
    with pytest.raises((ConfigError, ValueError), match="max_seeds"):
        _cfg("compare.max_seeds=1")

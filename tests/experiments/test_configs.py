"""Every YAML in experiments/configs loads, and every registered name builds (torchtune's test_configs).

    pytest tests/experiments/test_configs.py -q
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mdm.platform.config import load_config
from mdm.platform.config_ops import dump_config, with_overrides
from mdm.platform.registry import get_registry, load_builtins

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "experiments" / "configs"
BASE = CONFIGS / "base.yaml"
OVERLAYS = sorted(p for p in CONFIGS.glob("*.yaml") if p != BASE and not p.name.startswith("sweep_"))
SWEEPS = sorted(CONFIGS.glob("sweep_*.yaml"))
load_builtins()


def test_the_expected_files_exist() -> None:
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {"base.yaml", "tiny.yaml", "llada_8b.yaml", "gsm8k.yaml", "arithmetic.yaml",
            "sweep_gsm8k.yaml"} <= names


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_loads_on_base_and_round_trips(overlay: Path, tmp_path: Path) -> None:
    cfg = load_config([str(BASE), str(overlay)])
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(dump_config(cfg))
    assert load_config([str(dumped)]) == cfg


def test_presets_compose_as_the_scripts_use_them() -> None:
    tiny = load_config([str(BASE), str(CONFIGS / "tiny.yaml"), str(CONFIGS / "gsm8k.yaml")])
    assert tiny.train.task == "gsm8k" and tiny.train.model == "tiny" and not tiny.ray.use_gpu
    big = load_config([str(BASE), str(CONFIGS / "llada_8b.yaml"), str(CONFIGS / "gsm8k.yaml")])
    assert big.train.model == "GSAI-ML/LLaDA-8B-Instruct" == big.data.tokenizer
    assert big.deepspeed.zero_stage in (2, 3) and big.deepspeed.precision == "bf16" and big.ray.use_gpu


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.name)
def test_sweep_space_validates_against_the_config(sweep: Path) -> None:
    from mdm.platform.tuner.space import load_sweep

    cfg = load_config([str(BASE), str(CONFIGS / "tiny.yaml"), str(CONFIGS / "gsm8k.yaml")])
    space = load_sweep(sweep, cfg)
    assert space.trials, "the grid expands to at least one trial"
    # PPOTS off makes p_model irrelevant: the 2 x 2 x 3 grid deduplicates to 2 x (1 + 3) = 8 trials.
    assert len(space.trials) == 8
    for trial in space.trials:
        with_overrides(cfg, trial)


@pytest.mark.parametrize("name", get_registry("tasks").names())
def test_every_task_builds_and_is_selectable(name: str, shared_dir: Path) -> None:
    cls = get_registry("tasks").get(name)
    task = cls(data_dir=str(shared_dir / "data" / "gsm8k") if name == "gsm8k" else None)
    assert task.name == name and task.splits
    cfg = with_overrides(load_config([str(BASE)]), {"train.task": name, "eval.task": name})
    assert cfg.train.task == name
    if name in ("gsm8k", "arithmetic"):  # offline: one example round-trips through scoring
        ex = task.to_example(next(task.load_split(task.splits[-1])), 0)
        assert task.score(ex.response, ex.gold_raw) == 1.0


@pytest.mark.parametrize("name", get_registry("p_models").names())
def test_every_p_model_fits_a_density(name: str) -> None:
    grid = np.linspace(0.02, 0.98, 16)
    w = 1.0 + 4.0 * grid * (1 - grid)  # a smooth positive w(t)
    density = get_registry("p_models").get(name)().fit(grid, w, n_starts=2, seed=0)
    t = np.linspace(0.0, 1.0, 2001)
    integral = float(np.trapezoid(density.pdf(t), t))
    assert abs(integral - 1.0) < 1e-2, f"{name}: fitted p(t) integrates to {integral}"
    with_overrides(load_config([str(BASE)]), {"train.PPOTS": True, "train.p_model": name})


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    spec = get_registry("engines").get("llada_plus")
    mcfg = spec.model_config(d_model=32, n_layers=1, n_heads=2, mlp_hidden_size=64, vocab_size=40,
                             mask_token_id=39, eos_token_id=0, pad_token_id=1, max_sequence_length=64)
    torch.manual_seed(0)
    return spec.build_model(mcfg, "tiny").eval()


@pytest.mark.parametrize("engine", get_registry("engines").names())
def test_every_engine_builds_model_and_objective(engine: str, tiny_model: torch.nn.Module) -> None:
    spec = get_registry("engines").get(engine)
    objective = spec.build_objective(spec.train_config())
    ids = torch.randint(2, 39, (2, 12))
    labels = ids.clone()
    labels[:, :4] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    loss, _ = objective.loss(tiny_model, batch, torch.Generator().manual_seed(0))
    # An untrained model over 40 tokens is near uniform: the masked CE sits near log(40).
    assert torch.isfinite(loss) and 0.5 * np.log(40) < loss.item() < 2.0 * np.log(40)


@pytest.mark.parametrize("name", get_registry("samplers").names())
def test_every_sampler_fills_every_masked_position(name: str, tiny_model: torch.nn.Module) -> None:
    spec = get_registry("engines").get("llada_plus")
    scfg = spec.sampler_config(name=name, gen_length=8, block_length=4, steps=8)
    out = get_registry("samplers").get(name)(tiny_model, [[5, 6, 7], [8, 9]], scfg, mask_id=39, eos_id=None,
                                             generator=torch.Generator().manual_seed(0))
    assert len(out.tokens) == 2 and out.nfe >= 1
    for toks in out.tokens:
        assert len(toks) == 8 and 39 not in toks

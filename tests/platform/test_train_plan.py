"""Driver-side planning that needs no Ray: step plan, LR schedule, DeepSpeed config, precision checks."""

from __future__ import annotations

import math

import pytest

from mdm.platform.config import load_config
from mdm.platform.ds_setup import build_ds_config, check_precision, lr_factor
from mdm.platform.trainer import derive_run_name, plan_steps, run


def test_plan_steps_epochs_and_max_steps():
    cfg = load_config([], ["train.batch_size_per_gpu=8", "train.grad_accum=2", "train.epochs=3"])
    # 100 rows -> 13 micro-batches an epoch, 6 per worker (equal split); 2 accumulated -> 3 steps an epoch.
    assert plan_steps(100, cfg.train, world=2) == (9, 3, 3)
    assert plan_steps(100, cfg.train, world=3) == (6, 2, 3)  # 4 per worker per epoch, 12 // 2
    capped = load_config([], ["train.batch_size_per_gpu=8", "train.grad_accum=2", "train.max_steps=20"])
    assert plan_steps(100, capped.train, world=2) == (20, 3, math.ceil(20 * 2 / 6))
    with pytest.raises(ValueError, match="fewer than one step"):
        plan_steps(5, cfg.train, world=2)


def test_lr_schedule_shapes():
    assert [lr_factor(s, "cosine", 2, 10) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, "cosine", 2, 10) == 1.0 and lr_factor(10, "cosine", 2, 10) == pytest.approx(0.0)
    assert lr_factor(6, "cosine", 2, 10) == pytest.approx(0.5)
    assert lr_factor(6, "linear", 2, 10) == pytest.approx(0.5) and lr_factor(7, "constant", 0, 10) == 1.0


def test_deepspeed_config_follows_train_keys(tmp_path):
    cfg = load_config([], ["deepspeed.zero_stage=3", "deepspeed.offload_optimizer=true", "train.grad_accum=4",
                           "train.batch_size_per_gpu=2", "train.max_grad_norm=0.5"])
    conf = build_ds_config(cfg.deepspeed, cfg.train, world_size=2)
    assert conf["train_batch_size"] == 16 and conf["gradient_clipping"] == 0.5
    assert conf["zero_optimization"]["stage"] == 3 and conf["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    user = tmp_path / "ds.json"
    user.write_text('{"zero_optimization": {"stage": 1}, "gradient_accumulation_steps": 99}')
    cfg = load_config([], [f"deepspeed.config_path={user}", "train.grad_accum=4"])
    conf = build_ds_config(cfg.deepspeed, cfg.train, world_size=1)
    assert conf["zero_optimization"] == {"stage": 1} and conf["gradient_accumulation_steps"] == 4


def test_fp16_on_cpu_is_rejected_before_anything_starts(tmp_path, capsys):
    cfg = load_config([], ["deepspeed.precision=fp16", "train.train_data_path=x.jsonl",
                           f"ray.storage_path={tmp_path / 'ray'}"])
    with pytest.raises(ValueError, match="fp16 is not supported on CPU.*deepspeed.precision: fp32 or bf16"):
        check_precision(cfg.deepspeed, on_gpu=False)
    assert run(cfg) == 2
    assert "deepspeed.precision: fp16 is not supported on CPU" in capsys.readouterr().err
    assert not (tmp_path / "ray").exists()


def test_run_name_is_derived_from_the_run_defining_keys():
    a = load_config([], ["train.train_data_path=data/gsm8k.jsonl"])
    assert derive_run_name(a) == derive_run_name(load_config([], ["train.train_data_path=data/gsm8k.jsonl",
                                                                   "ray.max_failures=3"]))
    assert derive_run_name(a).startswith("gsm8k-")
    for change in ("train.lr=0.01", "ray.num_workers=4"):
        assert derive_run_name(load_config([], ["train.train_data_path=data/gsm8k.jsonl", change])) != \
            derive_run_name(a), change

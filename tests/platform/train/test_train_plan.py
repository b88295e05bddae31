"""Driver-side planning that needs no Ray: step plan, LR schedule, DeepSpeed config, precision checks."""

from __future__ import annotations

import math

import pytest

from mdm.platform.config import load_config
from mdm.platform.fields import ConfigError
from mdm.platform.train.lr_schedule import build_lr_scheduler
from mdm.platform.train.updater import build_ds_config, check_precision
from mdm.platform.runs import derive_run_name
from mdm.platform.commands.train import run
from mdm.platform.train.driver import eval_note
from mdm.platform.train.workload import plan_steps


def test_plan_steps_epochs_and_max_steps():
    cfg = load_config([], ["train.batch_size_per_gpu=8", "train.grad_accum=2", "train.epochs=3"])
    # 100 rows -> 13 micro-batches an epoch, 6 per worker (equal split); 2 accumulated -> 3 steps an epoch.
    assert plan_steps(100, cfg.train, world=2) == (9, 3, 3)
    assert plan_steps(100, cfg.train, world=3) == (6, 2, 3)  # 4 per worker per epoch, 12 // 2
    capped = load_config([], ["train.batch_size_per_gpu=8", "train.grad_accum=2", "train.max_steps=20"])
    assert plan_steps(100, capped.train, world=2) == (20, 3, math.ceil(20 * 2 / 6))
    with pytest.raises(ValueError, match="fewer than one step"):
        plan_steps(5, cfg.train, world=2)


def _lrs(overrides: list[str], total: int = 10) -> list[float]:
    import torch

    cfg = load_config([], ["train.lr=1.0", *overrides])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    sched = build_lr_scheduler(opt, cfg.train, total)
    out = []
    for _ in range(total + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_lr_schedules_are_hugging_faces_curves():
    """The closed forms of HF's schedules (warmup from 0, then the named decay over the total steps)."""
    import math

    cos = _lrs(["train.lr_scheduler_type=cosine", "train.warmup_steps=2"])
    assert cos[:3] == [0.0, 0.5, 1.0] and cos[6] == pytest.approx(0.5) and cos[10] == pytest.approx(0.0)
    lin = _lrs(["train.lr_scheduler_type=linear", "train.warmup_steps=2"])
    assert lin[6] == pytest.approx(0.5) and lin[10] == 0.0
    assert _lrs(["train.lr_scheduler_type=constant"]) == [1.0] * 11
    assert _lrs(["train.lr_scheduler_type=constant_with_warmup", "train.warmup_steps=4"])[:6] == \
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    floor = _lrs(["train.lr_scheduler_type=cosine_with_min_lr", "train.warmup_steps=2",
                  "train.lr_scheduler_kwargs={min_lr_rate: 0.1}"])
    assert floor[10] == pytest.approx(0.1) and floor[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_lr_schedule_mistakes_are_named():
    with pytest.raises(ConfigError, match="train.warmup_steps is 5 .* constant_with_warmup"):
        load_config([], ["train.lr_scheduler_type=constant", "train.warmup_steps=5"])
    with pytest.raises(ConfigError, match="bad value 'cosine_to_zero' for train.lr_scheduler_type"):
        load_config([], ["train.lr_scheduler_type=cosine_to_zero"])
    with pytest.raises(ValueError, match="train.lr_scheduler_kwargs"):
        _lrs(["train.lr_scheduler_type=cosine", "train.lr_scheduler_kwargs={bogus: 1}"])


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


def test_eval_note_when_the_eval_split_gives_fewer_micro_batches_than_workers():
    note = eval_note(12, 16, 2)  # 12 eval rows: one micro-batch of 16, and Ray Train splits them equally over 2
    assert note and "12 rows make 1 micro-batch" in note and "fewer than the 2 workers" in note
    assert "train.train_ratio" in note and "eval/loss is NaN" in note
    assert eval_note(32, 16, 2) is None and eval_note(0, 16, 2) is None

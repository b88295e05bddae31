"""The planner's suggestions (mdm.platform.train.plan_advice): a config that does not fit gets changes that the
planner itself, asked again about the changed config, says fit; each is the least drastic of its kind.

LLaDA-8B's architecture is planned without weights or a download (memory.py falls back to llada_8b_config).

    pytest tests/platform/train/test_plan_advice.py -q      # a few seconds
"""

from __future__ import annotations

import pytest

from mdm.platform.config import load_config
from mdm.platform.config_ops import with_overrides
from mdm.platform.train.memory_plan import plan_memory
from mdm.platform.train.plan_advice import kinds, report, suggestions

LLADA_8B = ["experiments/configs/base.yaml", "experiments/configs/llada_8b.yaml"]


def replan(cfg, s, gpu_gib):
    return plan_memory(with_overrides(cfg, s.changes) if s.changes else cfg, gpus=s.gpus or 1, gpu_gib=gpu_gib)


def test_suggestions_for_a_full_8b_fine_tune_on_one_gpu_fit_when_planned_again():
    cfg = load_config(LLADA_8B)
    base = plan_memory(cfg, gpus=1, gpu_gib=80)
    assert not base.fits and base.memory.params > 8e9
    found = suggestions(cfg, base)
    assert found
    for s in found:
        again = replan(cfg, s, 80)
        assert again.fits and again.total == s.plan.total, s.line()
    lines = [s.line() for s in found]
    assert any("model.lora.r=64" in x for x in lines) and any("deepspeed.offload_optimizer=true" in x for x in lines)
    gpus = next(s for s in found if s.gpus)
    assert not plan_memory(cfg, gpus=gpus.gpus - 1, gpu_gib=80).fits  # the fewest GPUs that fit


def test_when_no_single_change_fits_pairs_are_offered_and_fit():
    cfg = load_config(LLADA_8B, ["deepspeed.zero_stage=0"])
    base = plan_memory(cfg, gpus=1, gpu_gib=24)
    found = suggestions(cfg, base)
    assert found and all(len(s.changes) + bool(s.gpus) >= 2 for s in found)
    for s in found:
        assert replan(cfg, s, 24).fits, s.line()
    for options in kinds(cfg):  # none of the single changes fits
        for changes in options:
            assert not plan_memory(with_overrides(cfg, changes), gpus=1, gpu_gib=24).fits, changes


def test_the_least_drastic_option_of_a_kind_is_the_one_offered():
    cfg = load_config(LLADA_8B, ["model.gradient_checkpointing=false", "model.lora.r=16"])
    base = plan_memory(cfg, gpus=1, gpu_gib=40)
    assert not base.fits
    batch = next(s for s in suggestions(cfg, base) if "train.batch_size_per_gpu" in s.changes)
    b = batch.changes["train.batch_size_per_gpu"]
    assert b * batch.changes["train.grad_accum"] == 4 * 4  # the global batch is kept
    larger = [d for d in (2, 4) if d > b]
    for d in larger:  # a larger micro-batch would not fit
        assert not plan_memory(with_overrides(cfg, {"train.batch_size_per_gpu": d}), gpus=1, gpu_gib=40).fits


def test_options_name_only_what_changes_and_a_user_json_keeps_its_stage(tmp_path):
    cfg = load_config(LLADA_8B)
    for options in kinds(cfg):
        for option in options:
            assert option and "deepspeed.enabled" not in option  # already on
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 2}}')
    assert not any("deepspeed.zero_stage" in o for k in kinds(load_config(LLADA_8B, [f"deepspeed.config_path={path}"]))
                   for o in k)


@pytest.mark.parametrize("lora", [False, True])
def test_report_names_every_part_and_the_verdict(lora):
    cfg = load_config(LLADA_8B, ["model.lora.r=16"] if lora else [])
    text = report(plan_memory(cfg, gpus=8, gpu_gib=80))
    for part in ("weights", "gradients", "optimizer state", "DeepSpeed buffers", "activations", "reserve",
                 "total", "fits", "ZeRO-3 over 8 GPU(s)"):
        assert part in text, part
    assert ("4-bit base (model.load_in_4bit: true" in text) == lora

"""`mdm train`'s memory plan (mdm.platform.train.plan_check): one line before a GPU run, its numbers those of
`plan_memory`; a plan that does not fit refused (exit status 2) unless `--force`; the GPU size from
`ray.gpu_mem_gib`, the driver's CUDA device or Ray's accelerator type; CPU runs print nothing (their plan is
only logged). No Ray is started: Ray's resources are passed in, and the driver's Ray start is replaced by no-ops
where the driver runs.

    pytest tests/platform/train/test_plan_check.py -q      # a few seconds
"""

from __future__ import annotations

import pytest
import torch

from mdm.platform.config import load_config
from mdm.platform.train import plan_check
from mdm.platform.train.gpu_cards import accelerator_gib, card_gib
from mdm.platform.train.memory_plan import GIB, plan_memory
from mdm.platform.train.plan_advice import gib
from mdm.platform.train.plan_check import PlanError, check_plan

LLADA_8B = ["experiments/configs/base.yaml", "experiments/configs/llada_8b.yaml"]  # 8 GPUs, ZeRO-3, bf16


def no_resources():
    raise AssertionError("Ray's resources were asked for although the GPU size was known")


@pytest.fixture
def no_driver_gpu(monkeypatch):
    """The driver has no CUDA device (as on this test machine; said, not assumed)."""
    monkeypatch.setattr(plan_check, "driver_cuda_gib", lambda: (None, "no CUDA device on the driver"))


def test_the_line_carries_plan_memorys_numbers(capsys):
    cfg = load_config(LLADA_8B, ["ray.gpu_mem_gib=80"])
    checked = check_plan(cfg, vocab_size=None, resources=no_resources)
    plan = plan_memory(cfg, gpus=8, gpu_gib=80)  # what `mdm plan --gpu-mem 80 --gpus 8` plans
    assert checked.plan == plan and checked.fits is True
    line = capsys.readouterr().err.strip()
    s = plan.state
    assert line.startswith(f"mdm train: memory plan per GPU: {gib(plan.total, 0)} GiB of 80.00 GiB (ray.gpu_mem_gib):")
    for part, value in (("weights", s.weights), ("gradients", s.gradients), ("optimizer", s.optimizer),
                        ("DeepSpeed buffers", s.buffers), ("activations", plan.activations),
                        ("reserve", plan.reserve)):
        assert f"{part} {gib(value, 0)}," in line or f"{part} {gib(value, 0)};" in line, part
    assert "DeepSpeed ZeRO-3 over 8 GPU(s)" in line and line.endswith("-- fits") and "\n" not in line
    assert checked.params() == {"plan/total_gib": round(plan.total / GIB, 2), "plan/gpu_gib": 80.0,
                                "plan/fits": True}


def test_a_plan_that_does_not_fit_is_refused_unless_forced(capsys, no_driver_gpu):
    cfg = load_config(LLADA_8B, ["ray.num_workers=1"])  # a full 8B fine-tune on one 24 GiB card
    resources = {"CPU": 16.0, "GPU": 1.0, "accelerator_type:L4": 1.0}
    plan = plan_memory(cfg, gpus=1, gpu_gib=24)
    over = gib(plan.total - 24 * GIB, 0)
    with pytest.raises(PlanError, match=rf"needs {gib(plan.total, 0)} GiB per GPU, {over} GiB more than the 24.00 "
                                        r"GiB of Ray's accelerator_type:L4; `mdm plan` .* --gpu-mem 24.00 --gpus 1"):
        check_plan(cfg, vocab_size=None, resources=lambda: resources)
    assert f"-- does not fit ({over} GiB over)" in capsys.readouterr().err
    checked = check_plan(cfg, vocab_size=None, force=True, resources=lambda: resources)
    assert checked.fits is False and checked.params()["plan/fits"] is False
    assert capsys.readouterr().err.strip().endswith(f"-- does not fit ({over} GiB over); --force: training anyway")


def test_an_unknown_gpu_size_gives_the_estimate_without_a_verdict(capsys, no_driver_gpu):
    cfg = load_config(LLADA_8B)
    checked = check_plan(cfg, vocab_size=None, resources=lambda: {"CPU": 8.0, "GPU": 8.0})
    line = capsys.readouterr().err.strip()
    assert checked.fits is None and checked.params()["plan/gpu_gib"] == "unknown"
    assert line.startswith(f"mdm train: memory plan per GPU: {gib(checked.plan.total, 0)} GiB: weights")
    assert line.endswith("-- GPU size unknown (no CUDA device on the driver, no accelerator_type in Ray's "
                         "resources): set ray.gpu_mem_gib for a verdict")
    check_plan(cfg, vocab_size=None, resources=lambda: {"accelerator_type:A100": 1.0})  # 40 or 80 GB: not guessed
    assert "accelerator_type A100 (40 or 80 GB) does not say which): set ray.gpu_mem_gib" in capsys.readouterr().err


def test_the_gpu_size_from_rays_accelerator_type():
    assert accelerator_gib({"CPU": 96.0, "GPU": 8.0, "accelerator_type:A100-80G": 1.0}) == \
        (80.0, "Ray's accelerator_type:A100-80G")
    assert accelerator_gib({"accelerator_type:H100": 2.0, "accelerator_type:A100-40G": 1.0}) == \
        (40.0, "Ray's accelerator_type:A100-40G")  # the smallest card of the cluster
    assert accelerator_gib({"accelerator_type:A100-80G": 1.0, "accelerator_type:RTX-PRO-6000": 1.0})[0] is None
    assert accelerator_gib({"CPU": 4.0})[0] is None and accelerator_gib({"accelerator_type:V100": 1.0})[0] is None
    assert [card_gib(n) for n in ("GeForce-RTX-4090", "AMD-Instinct-MI300X-OAM", "L40S", "a10g", "h100")] == \
        [24.0, 192.0, 48.0, 24.0, 80.0]


def test_the_size_comes_from_the_key_then_the_driver_then_ray(monkeypatch):
    cfg = load_config(LLADA_8B, ["ray.gpus_per_worker=0.5"])
    monkeypatch.setattr(plan_check, "driver_cuda_gib", lambda: (79.19, "the driver's NVIDIA H100 80GB HBM3"))
    assert plan_check.gpu_memory(cfg.ray, no_resources) == \
        (79.19 * 0.5, "the driver's NVIDIA H100 80GB HBM3, x0.5 per worker (ray.gpus_per_worker)")
    # on a cluster the driver's GPU is not the workers': Ray's accelerator type decides
    assert plan_check.gpu_memory(cfg.ray, lambda: {"accelerator_type:H200": 2.0}, local=False) == \
        (141.0 * 0.5, "Ray's accelerator_type:H200, x0.5 per worker (ray.gpus_per_worker)")
    keyed = load_config(LLADA_8B, ["ray.gpu_mem_gib=40"])
    assert plan_check.gpu_memory(keyed.ray, no_resources) == (40.0, "ray.gpu_mem_gib")
    with pytest.raises(Exception, match="ray.gpu_mem_gib must be > 0"):
        load_config([], ["ray.gpu_mem_gib=0"])


def test_cpu_runs_print_nothing_and_log_the_plan(capsys):
    cfg = load_config([], ["ray.use_gpu=false", "ray.gpu_mem_gib=0.5", "model.lora.r=8", "ray.num_workers=2"])
    checked = check_plan(cfg, vocab_size=None, resources=no_resources)
    assert capsys.readouterr() == ("", "")
    plan = plan_memory(cfg, gpus=2, gpu_gib=1)  # never judged against the (GPU) size
    assert checked.plan == plan and checked.fits is None
    assert checked.params() == {"plan/total_gib": round(plan.total / GIB, 2), "plan/gpu_gib": "cpu",
                                "plan/fits": "cpu"}


def test_mdm_train_refuses_before_ray_starts_and_force_reaches_the_driver(monkeypatch, tmp_path, capsys,
                                                                         arithmetic_data):
    """The real driver path of `mdm train` with Ray's start and worker sizing replaced by no-ops: a tiny model
    on a 0.5 GiB GPU (below the planner's 1 GiB reserve) is refused with exit status 2, one line each."""
    from mdm.platform.cli import main as cli_main
    from mdm.platform.commands import train as train_cmd
    from mdm.platform.runtime import ray_runtime

    monkeypatch.setattr(ray_runtime, "ensure_ray", lambda rcfg: False)
    monkeypatch.setattr(ray_runtime, "check_worker_fit", lambda rcfg: None)
    sets = ["ray.use_gpu=true", "ray.gpu_mem_gib=0.5", "tracking.enabled=false", "deepspeed.enabled=false",
            f"ray.storage_path={tmp_path}", f"train.train_data_path={arithmetic_data['train']}",
            f"data.tokenizer={arithmetic_data['tokenizer']}"]
    assert train_cmd.main([*(a for s in sets for a in ("--set", s))]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-2].startswith("mdm train: memory plan per GPU:") and "-- does not fit" in err[-2]
    assert err[-1].startswith("mdm train: error: the memory plan needs") and "--force" in err[-1]

    class Done:
        metrics = {"step": 1}

    seen = []
    monkeypatch.setattr(train_cmd, "train_driver", lambda cfg, force: seen.append(force) or Done())
    assert train_cmd.main(["--force"]) == 0 and train_cmd.main([]) == 0
    assert cli_main(["train", "--force"]) == 0  # `mdm train` and `python -m mdm.train`
    assert seen == [True, False, True]


def test_a_4bit_base_is_refused_in_one_line_before_any_work(tmp_path, capsys, arithmetic_data):
    """`model.load_in_4bit` (QLoRA) on a run without GPUs: `mdm train` exits 2 with one line before the lease,
    the tokenizer or Ray; without adapters, on the tiny model or under ZeRO-3 likewise; and a worker without CUDA
    (this machine) refuses to load one."""
    import ray

    from mdm.engines.llada_plus.quantized import quantized_load_kwargs
    from mdm.platform.commands import train as train_cmd
    from mdm.platform.train.plan_check import check_runnable

    sets = ["model.load_in_4bit=true", "model.lora.r=8", "train.model=GSAI-ML/LLaDA-8B-Instruct",
            "tracking.enabled=false", f"ray.storage_path={tmp_path}", f"train.train_data_path={arithmetic_data['train']}",
            "data.tokenizer=/nonexistent/tokenizer"]
    assert train_cmd.main([a for s in sets for a in ("--set", s)]) == 2
    assert capsys.readouterr().err.strip() == (
        "mdm train: error: model.load_in_4bit: true needs CUDA GPUs (bitsandbytes' 4-bit kernels) and this run "
        "(ray.use_gpu: false) has none: run on GPU workers (ray.use_gpu: true) or set model.load_in_4bit: false")
    assert not ray.is_initialized() and not list(tmp_path.iterdir())  # no Ray, no lease, nothing written
    gpu = ["model.load_in_4bit=true", "model.lora.r=8", "train.model=/ckpt/llada", "ray.use_gpu=true"]
    check_runnable(load_config([], gpu))  # a GPU run with adapters on a pretrained base passes
    for extra, says in ((["model.lora.r=0"], "set model.lora.r > 0"), (["train.model=tiny"], "set train.model"),
                        (["deepspeed.enabled=true", "deepspeed.zero_stage=3"], "use deepspeed.zero_stage 0-2")):
        with pytest.raises(ValueError, match=says):
            check_runnable(load_config([], gpu + extra))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="this worker has none"):
            quantized_load_kwargs(load_config([], gpu).model, torch.bfloat16)

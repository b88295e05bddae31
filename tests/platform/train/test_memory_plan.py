"""The memory plan's state bytes (mdm.platform.train.memory_plan) against what a live model and optimizer hold.

- plain torch (ZeRO 0, in this process): the planned bytes of weights, gradients and optimizer state equal the
  sum of numel x element size of the model's parameters, of their gradients after a backward, and of AdamW's
  state after a real optimizer step through the Trainer's updater: full fine-tune and LoRA, float32 and
  bfloat16 weights;
- the sharding arithmetic: ZeRO 1/2/3 divide optimizer state / gradients / weights by the GPU count,
  mixed precision adds the float32 master copy, offload moves state to the host, and a user's DeepSpeed JSON
  (`deepspeed.config_path`) decides the stage;
- the DeepSpeed case at ZeRO 0-3 on one process is in test_memory_plan_deepspeed.py.

    pytest tests/platform/train/test_memory_plan.py -q      # a few seconds
"""

from __future__ import annotations

import json

import pytest
import torch

from mdm.engines.llada_plus.loss import diffusion_loss
from mdm.engines.llada_plus.model_build import build_model
from mdm.platform.config import load_config
from mdm.platform.engine_api import ModelMemory
from mdm.platform.train.memory_plan import GIB, Sharding, plan_memory, state_bytes
from mdm.platform.train.updater import build_updater

V = 96
TINY = ["model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.mlp_hidden_size=96",
        f"model.vocab_size={V}", f"model.mask_token_id={V - 1}", "model.eos_token_id=2", "model.pad_token_id=0",
        "train.batch_size_per_gpu=2", "train.max_len=16", "deepspeed.enabled=false", "train.lr=1e-2"]


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def live_state(cfg) -> dict[str, int]:
    """What a model and its updater hold: weights, gradients after one backward, AdamW state after the step."""
    torch.manual_seed(0)
    model = build_model(cfg.model, "tiny")
    updater = build_updater(model, cfg.deepspeed, cfg.train, total_steps=3, on_gpu=False)
    ids = torch.randint(3, V - 1, (2, 16), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    loss, _ = diffusion_loss(model, batch, torch.full((2,), 0.5), None, mask_id=V - 1,
                             generator=torch.Generator().manual_seed(2))
    updater.backward(loss)
    grads = nbytes(p.grad for p in model.parameters() if p.grad is not None)
    assert updater.step()  # a real optimizer step: AdamW creates its state
    state = [v for s in updater.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return {"weights": nbytes(model.parameters()), "gradients": grads, "optimizer": nbytes(state)}


@pytest.mark.parametrize("overrides", [[], ["model.dtype=bfloat16"], ["model.lora.r=4"],
                                       ["model.lora.r=2", "model.lora.target_modules=[q_proj,ff_out]",
                                        "model.dtype=bfloat16"]],
                         ids=["full-fp32", "full-bf16", "lora-fp32", "lora-subset-bf16"])
def test_planned_state_equals_the_live_model_and_optimizer(overrides):
    cfg = load_config([], TINY + overrides)
    plan = plan_memory(cfg, gpus=1, gpu_gib=80)
    planned = {"weights": plan.state.weights, "gradients": plan.state.gradients, "optimizer": plan.state.optimizer}
    assert planned == live_state(cfg)
    assert plan.state.buffers == plan.state.host == 0 and plan.fits


def mem(params: int = 1000, trainable: int = 1000, tensors: int = 10, w: int = 2) -> ModelMemory:
    return ModelMemory(params=params, trainable=trainable, trainable_tensors=tensors, weight_bytes=w,
                       weight_dtype="bfloat16", trainable_bytes=w, quantizable=params // 2, largest_unit=100, hidden=16,
                       activations_plain=0, activations_checkpointed=0, checkpointing=False, other_forwards=0,
                       other_what="", rows=1, tokens=1)


def zero(stage: int, mixed: bool = True, opt: bool = False, params: bool = False) -> Sharding:
    return Sharding(True, stage, mixed, opt, params, reduce_bucket=50, prefetch_bucket=20)


def test_zero_stages_divide_what_they_shard():
    m = mem()
    z0, z1, z2, z3 = (state_bytes(m, zero(s), 8) for s in range(4))
    assert (z0.weights, z0.gradients, z0.optimizer) == (2000, 2000, 12 * 1000 + 4 * 10)   # fp32 master + m + v
    assert (z1.weights, z1.gradients, z1.optimizer) == (2000, 2000, 12 * 1000 // 8 + 4)
    assert (z2.weights, z2.gradients, z2.buffers) == (2000, 2000 // 8, 50 * 2)
    assert (z3.weights, z3.gradients, z3.buffers) == (2000 // 8, 2000 // 8, 50 * 2 + (100 + 20) * 2)
    fp32 = state_bytes(mem(w=4), zero(0, mixed=False), 8)
    assert fp32.optimizer == 8 * 1000 + 4 * 10  # no master copy: AdamW's m and v only
    lora = state_bytes(mem(trainable=10, tensors=4), zero(1), 1)
    assert (lora.gradients, lora.optimizer) == (20, 12 * 10 + 4)


def test_offload_moves_state_to_the_host():
    m = mem()
    opt = state_bytes(m, zero(2, opt=True), 4)
    assert opt.optimizer == 0 and opt.host == 12 * 1000 // 4 + 4 + 4 * 1000 // 4
    both = state_bytes(m, zero(3, opt=True, params=True), 4)
    assert both.weights == 0 and both.host == opt.host + 2000 // 4 and both.buffers > 0  # the working set stays


def test_a_user_deepspeed_json_decides_stage_offload_and_precision(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
                                "bf16": {"enabled": True}, "train_micro_batch_size_per_gpu": "auto"}))
    cfg = load_config([], TINY + ["deepspeed.enabled=true", f"deepspeed.config_path={path}"])
    plan = plan_memory(cfg, gpus=2, gpu_gib=80)
    sh = plan.sharding
    assert (sh.stage, sh.mixed, sh.offload_optimizer, sh.offload_params) == (2, True, True, False)
    assert plan.memory.weight_bytes == 2 and plan.state.optimizer == 0 and plan.state.host > 0
    assert "ZeRO-2 over 2 GPU(s), mixed precision, offload optimizer" in sh.describe(2)


def test_total_adds_the_parts_and_a_reserve_and_the_verdict_follows():
    cfg = load_config([], TINY)
    plan = plan_memory(cfg, gpus=1, gpu_gib=80)
    s = plan.state
    parts = s.weights + s.gradients + s.optimizer + s.buffers + plan.activations
    assert plan.total == parts + plan.reserve and plan.reserve == int(GIB + 0.05 * parts)
    assert plan.activations == max(plan.memory.activations, plan.memory.other_forwards)
    assert not plan_memory(cfg, gpus=1, gpu_gib=plan.total / GIB * 0.99).fits
    assert plan_memory(cfg, gpus=1, gpu_gib=plan.total / GIB * 1.01).fits
    with pytest.raises(ValueError, match="--gpus must be >= 1"):
        plan_memory(cfg, gpus=0, gpu_gib=80)


@pytest.mark.parametrize("stage", [0, 2])
def test_a_4bit_base_holds_its_block_weights_in_nf4(stage):
    """With `model.load_in_4bit` the plan's weights are the frozen block weights at NF4's 4.5 bits plus the rest at
    the model's width, and its total is what the LoRA plan's "with a 4-bit base" estimate says."""
    from mdm.platform.train.memory_plan import NF4_BYTES

    sets = ["model.lora.r=8", "model.d_model=256", "model.n_layers=4", "model.n_heads=4", "model.mlp_hidden_size=512",
            f"model.vocab_size={V}", "ray.use_gpu=true", f"deepspeed.enabled={stage > 0}", f"deepspeed.zero_stage={stage}"]
    lora = plan_memory(load_config([], sets), gpus=2, gpu_gib=80)
    four = plan_memory(load_config([], sets + ["model.load_in_4bit=true"]), gpus=2, gpu_gib=80)
    m = four.memory
    assert m.four_bit and not lora.memory.four_bit and m.quantizable > 0
    frozen = m.params - m.trainable
    assert four.state.weights == (frozen - m.quantizable) * m.weight_bytes + int(m.quantizable * NF4_BYTES) \
        + m.trainable * m.trainable_bytes
    assert four.state.weights < lora.state.weights and four.state.optimizer == lora.state.optimizer
    assert four.four_bit_total() is None and abs(lora.four_bit_total() - four.total) <= 2

"""The optimisation engine of a Train worker: DeepSpeed (ZeRO 0-3, offload, bf16) or a plain torch loop.

    engine = setup_engine(model, cfg.deepspeed, cfg.train, total_steps=1000, device=device, world_size=2)
    for micro_batch in ...:
        loss = objective.loss(engine.module, batch, gen)[0]
        engine.backward(loss)
        if engine.step():                 # True on a gradient-accumulation boundary (an optimizer step)
            print(engine.global_step, engine.lr, engine.grad_norm)
    engine.save(ckpt_dir); engine.load(ckpt_dir)   # every rank calls both

The DeepSpeed JSON is generated from the `deepspeed` section plus `train.batch_size_per_gpu`, `grad_accum`
and `max_grad_norm`, or read from `deepspeed.config_path` with those same train keys filled in over it, so
the two never disagree. Optimizer (AdamW or DeepSpeedCPUAdam) and LR schedule (`train.lr_scheduler_type` with
`train.warmup_steps`) are built here unless the JSON names its own. `deepspeed.enabled: false` gives the same
interface with a torch optimizer; with several workers it averages gradients with one all-reduce per tensor.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

import torch
import torch.distributed as dist


def check_precision(ds_cfg: Any, on_gpu: bool) -> None:
    """Reject settings that cannot run on this device, naming the key to change."""
    if ds_cfg.precision == "fp16" and not on_gpu:
        raise ValueError("deepspeed.precision: fp16 is not supported on CPU (DeepSpeed: 'Type fp16 is not "
                         "supported on your device'); use deepspeed.precision: fp32 or bf16")
    if ds_cfg.offload_params and ds_cfg.zero_stage != 3:
        raise ValueError(f"deepspeed.offload_params needs deepspeed.zero_stage: 3 (got {ds_cfg.zero_stage})")
    if ds_cfg.precision != "fp32" and not ds_cfg.enabled:
        raise ValueError("deepspeed.precision other than fp32 needs deepspeed.enabled: true")


def build_ds_config(ds_cfg: Any, train_cfg: Any, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config dict for this run (see the module docstring for what wins)."""
    if ds_cfg.config_path:
        with open(ds_cfg.config_path) as f:
            conf: dict[str, Any] = json.load(f)
    else:
        zero: dict[str, Any] = {"stage": ds_cfg.zero_stage}
        if ds_cfg.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if ds_cfg.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        conf = {"zero_optimization": zero,
                "bf16": {"enabled": ds_cfg.precision == "bf16"},
                "fp16": {"enabled": ds_cfg.precision == "fp16"}}
    conf.update({
        "train_micro_batch_size_per_gpu": train_cfg.batch_size_per_gpu,
        "gradient_accumulation_steps": train_cfg.grad_accum,
        "train_batch_size": train_cfg.batch_size_per_gpu * train_cfg.grad_accum * world_size,
        "gradient_clipping": train_cfg.max_grad_norm,
    })
    conf.setdefault("steps_per_print", 1 << 30)   # our own logging reports progress
    conf.setdefault("zero_allow_untested_optimizer", True)
    conf.setdefault("zero_force_ds_cpu_optimizer", False)  # torch AdamW with offload is allowed (slower)
    return conf


def make_optimizer(params: Any, ds_cfg: Any, train_cfg: Any) -> torch.optim.Optimizer:
    """AdamW (fused on GPU) or DeepSpeedCPUAdam with `train.lr` and `train.weight_decay`."""
    if ds_cfg.enabled and ds_cfg.optimizer == "cpu_adam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, adamw_mode=True)
    fused = torch.cuda.is_available() and not (ds_cfg.enabled and ds_cfg.offload_optimizer)
    return torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, fused=fused or None)


def lr_factor(step: int, kind: str, warmup_steps: int, total_steps: int) -> float:
    """The LR multiplier after `step` optimizer steps: linear warmup, then constant, linear or cosine to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, train_cfg: Any, total_steps: int) -> Any:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, train_cfg.lr_scheduler_type, train_cfg.warmup_steps, total_steps))


class PlainEngine:
    """A torch optimizer step with gradient accumulation and clipping (no DeepSpeed)."""

    def __init__(self, model: torch.nn.Module, ds_cfg: Any, train_cfg: Any, total_steps: int, world_size: int):
        self.module = model
        self.optimizer = make_optimizer(model.parameters(), ds_cfg, train_cfg)
        self.scheduler = make_scheduler(self.optimizer, train_cfg, total_steps)
        self.grad_accum, self.max_grad_norm, self.world_size = train_cfg.grad_accum, train_cfg.max_grad_norm, world_size
        self.micro, self.global_step, self.grad_norm = 0, 0, float("nan")

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def step(self) -> bool:
        self.micro += 1
        if self.micro % self.grad_accum:
            return False
        params = [p for p in self.module.parameters() if p.grad is not None]
        if self.world_size > 1:
            for p in params:
                dist.all_reduce(p.grad)
                p.grad.div_(self.world_size)
        self.grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        return True

    def save(self, directory: str, rank: int) -> None:
        if rank == 0:  # all ranks hold the same replica
            torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(), "global_step": self.global_step},
                       os.path.join(directory, "plain_engine.pt"))

    def load(self, directory: str) -> None:
        state = torch.load(os.path.join(directory, "plain_engine.pt"), map_location="cpu", weights_only=False)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.global_step = state["global_step"]
        self.micro = self.global_step * self.grad_accum


class DeepSpeedEngine:
    """`deepspeed.initialize` around the model; every rank saves and loads its own shard."""

    TAG = "ds"

    def __init__(self, model: torch.nn.Module, ds_cfg: Any, train_cfg: Any, total_steps: int, world_size: int):
        import deepspeed

        conf = build_ds_config(ds_cfg, train_cfg, world_size)
        optimizer = None if "optimizer" in conf else make_optimizer(model.parameters(), ds_cfg, train_cfg)
        scheduler = None if optimizer is None or "scheduler" in conf else make_scheduler(optimizer, train_cfg,
                                                                                         total_steps)
        # Ray Train already created the process group (gloo on CPU, nccl on GPU); DeepSpeed reuses it.
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=conf, dist_init_required=False)
        self.module = self.engine.module
        self.grad_norm = float("nan")

    @property
    def global_step(self) -> int:
        return int(self.engine.global_steps)

    @property
    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> bool:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        if boundary:
            norm = self.engine.get_global_grad_norm()
            self.grad_norm = float(norm) if norm is not None else float("nan")
        return boundary

    def save(self, directory: str, rank: int) -> None:
        self.engine.save_checkpoint(directory, tag=self.TAG, save_latest=False)

    def load(self, directory: str) -> None:
        path, _ = self.engine.load_checkpoint(directory, tag=self.TAG)
        if path is None:
            raise RuntimeError(f"no DeepSpeed checkpoint (tag {self.TAG!r}) under {directory}")


def setup_engine(model: torch.nn.Module, ds_cfg: Any, train_cfg: Any, *, total_steps: int, world_size: int,
                 on_gpu: Optional[bool] = None) -> "PlainEngine | DeepSpeedEngine":
    """Wrap `model` (already on its device) for training per the `deepspeed` section."""
    check_precision(ds_cfg, torch.cuda.is_available() if on_gpu is None else on_gpu)
    cls = DeepSpeedEngine if ds_cfg.enabled else PlainEngine
    return cls(model, ds_cfg, train_cfg, total_steps, world_size)

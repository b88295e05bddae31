"""The model updater of a training loop: DeepSpeed (ZeRO 0-3, offload, bf16) or plain torch, one interface.

    updater = build_updater(model, cfg.deepspeed, cfg.train, total_steps=1000, world_size=2)
    for micro_batch in ...:
        updater.backward(loss)            # loss: a scalar computed with updater.module (trainer.py)
        if updater.step():                # True on a gradient-accumulation boundary (an optimizer step)
            print(updater.global_step, updater.lr, updater.grad_norm)
    updater.save(ckpt_dir, rank); updater.load(ckpt_dir)   # every rank calls both; loads never unpickle code

("Engine" in this project names a model family, `mdm.engines`; DeepSpeed's own `DeepSpeedEngine` is wrapped
here.) The one Trainer (trainer.py) trains through it for every caller, so an optimizer step and
its LR schedule (`lr_schedule.py`, Hugging Face's curves) mean the same everywhere.

The DeepSpeed JSON is generated from the `deepspeed` section plus `train.batch_size_per_gpu`, `grad_accum`
and `max_grad_norm`, or read from `deepspeed.config_path` with those same train keys filled in over it and
"auto" resolved as Hugging Face's integration does (`ds_config.py`), so the two never disagree. Optimizer
(AdamW or DeepSpeedCPUAdam) and LR schedule (`train.lr_scheduler_type` with `train.warmup_steps`) are built
here unless the JSON names its own; the optimizer gets only the parameters that require grad (with LoRA, the
adapters: adapters.py), and a checkpoint keeps only those weights (`adapters.trainable_state`; the frozen
base comes back from where the model is built): the plain updater writes them as `model.safetensors` beside
the optimizer and scheduler state (`plain_updater.pt`), DeepSpeed leaves frozen parameters out of its files. `deepspeed.enabled: false` gives the same interface with a torch
optimizer; with several workers it averages gradients with one all-reduce per tensor.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

import torch
import torch.distributed as dist

from mdm.platform.engine_api import BaseTrainConfig
from mdm.platform.train.adapters import load_trainable_state, trainable_state
from mdm.platform.train.deepspeed_config import DeepSpeedConfig
from mdm.platform.train.ds_config import build_ds_config  # noqa: F401  (the DeepSpeed JSON; re-exported)
from mdm.platform.train.lr_schedule import build_lr_scheduler
from mdm.platform.train.safe_load import install_safe_deepspeed_loader, load_plain

if TYPE_CHECKING:
    from torch.optim.optimizer import ParamsT


def check_precision(ds_cfg: DeepSpeedConfig, on_gpu: bool) -> None:
    """Reject settings that cannot run on this device, naming the key to change."""
    if ds_cfg.precision == "fp16" and not on_gpu:
        raise ValueError("deepspeed.precision: fp16 is not supported on CPU (DeepSpeed: 'Type fp16 is not "
                         "supported on your device'); use deepspeed.precision: fp32 or bf16")
    if ds_cfg.offload_params and ds_cfg.zero_stage != 3:
        raise ValueError(f"deepspeed.offload_params needs deepspeed.zero_stage: 3 (got {ds_cfg.zero_stage})")
    if ds_cfg.precision != "fp32" and not ds_cfg.enabled:
        raise ValueError("deepspeed.precision other than fp32 needs deepspeed.enabled: true")


def trainable_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that require grad (all of them, or an adapter's); ValueError when there are none."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter that requires grad: nothing to train")
    return params


def make_optimizer(params: ParamsT, ds_cfg: DeepSpeedConfig, train_cfg: BaseTrainConfig) -> torch.optim.Optimizer:
    """AdamW (fused on GPU) or DeepSpeedCPUAdam with `train.lr`, `adam_beta1/2`, `adam_epsilon`, `weight_decay`."""
    betas = (train_cfg.adam_beta1, train_cfg.adam_beta2)
    if ds_cfg.enabled and ds_cfg.optimizer == "cpu_adam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, lr=train_cfg.lr, betas=betas, eps=train_cfg.adam_epsilon,
                                weight_decay=train_cfg.weight_decay, adamw_mode=True)
    fused = torch.cuda.is_available() and not (ds_cfg.enabled and ds_cfg.offload_optimizer)
    return torch.optim.AdamW(params, lr=train_cfg.lr, betas=betas, eps=train_cfg.adam_epsilon,
                             weight_decay=train_cfg.weight_decay, fused=fused or None)


WEIGHTS_FILE = "model.safetensors"  # the plain updater's trained weights in a checkpoint


class PlainUpdater:
    """A torch optimizer step with gradient accumulation and clipping (no DeepSpeed); with several workers
    it averages gradients with one all-reduce per tensor."""

    def __init__(self, model: torch.nn.Module, ds_cfg: DeepSpeedConfig, train_cfg: BaseTrainConfig, total_steps: int,
                 world_size: int) -> None:
        self.module = model
        self.optimizer = make_optimizer(trainable_params(model), ds_cfg, train_cfg)
        self.scheduler = build_lr_scheduler(self.optimizer, train_cfg, total_steps)
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
        """The weights that train as safetensors, the optimizer/scheduler state as plain data (rank 0)."""
        from safetensors.torch import save_file

        if rank == 0:  # all ranks hold the same replica
            weights = {k: v.detach().to("cpu", copy=True).contiguous()
                       for k, v in trainable_state(self.module).items()}
            save_file(weights, os.path.join(directory, WEIGHTS_FILE))
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "global_step": self.global_step}, os.path.join(directory, "plain_updater.pt"))

    def load(self, directory: str, display: Optional[str] = None) -> None:
        """Restore from `directory` (`display`: its address in storage, for messages)."""
        from safetensors.torch import load_file

        where = display or directory
        state = load_plain(os.path.join(directory, "plain_updater.pt"), display=f"{where}/plain_updater.pt")
        if "model" in state:  # written by mdm before the weights moved to model.safetensors
            self.module.load_state_dict(state["model"])
        else:
            load_trainable_state(self.module, load_file(os.path.join(directory, WEIGHTS_FILE)),
                                 where=f"{where}/{WEIGHTS_FILE}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.global_step = state["global_step"]
        self.micro = self.global_step * self.grad_accum


class DeepSpeedUpdater:
    """`deepspeed.initialize` around the model; every rank saves and loads its own shard."""

    TAG = "ds"

    def __init__(self, model: torch.nn.Module, ds_cfg: DeepSpeedConfig, train_cfg: BaseTrainConfig, total_steps: int,
                 world_size: int) -> None:
        import deepspeed

        first = next(model.parameters())
        hidden = getattr(getattr(model, "config", None), "hidden_size", None) or \
            getattr(getattr(model, "config", None), "d_model", None)
        conf = build_ds_config(ds_cfg, train_cfg, world_size, total_steps=total_steps, hidden_size=hidden,
                               on_gpu=first.is_cuda)
        optimizer = None if "optimizer" in conf else make_optimizer(trainable_params(model), ds_cfg, train_cfg)
        scheduler = None if optimizer is None or "scheduler" in conf else build_lr_scheduler(optimizer, train_cfg,
                                                                                         total_steps)
        # Ray Train already created the process group (gloo on CPU, nccl on GPU); DeepSpeed reuses it.
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=conf, dist_init_required=False)
        install_safe_deepspeed_loader(self.engine)  # DeepSpeed's own loader unpickles (weights_only=False)
        self.module = self.engine.module
        self.frozen = any(not p.requires_grad for p in model.parameters())  # adapters: the base is not saved
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
        self.engine.save_checkpoint(directory, tag=self.TAG, save_latest=False,
                                    exclude_frozen_parameters=self.frozen)

    def load(self, directory: str, display: Optional[str] = None) -> None:
        path, _ = self.engine.load_checkpoint(directory, tag=self.TAG, load_module_strict=not self.frozen)
        if path is None:
            raise RuntimeError(f"no DeepSpeed checkpoint (tag {self.TAG!r}) under {directory}")


def build_updater(model: torch.nn.Module, ds_cfg: DeepSpeedConfig, train_cfg: BaseTrainConfig, *, total_steps: int,
                  world_size: int = 1, on_gpu: Optional[bool] = None) -> "PlainUpdater | DeepSpeedUpdater":
    """Wrap `model` (already on its device) for training per the `deepspeed` section."""
    check_precision(ds_cfg, torch.cuda.is_available() if on_gpu is None else on_gpu)
    cls = DeepSpeedUpdater if ds_cfg.enabled else PlainUpdater
    return cls(model, ds_cfg, train_cfg, total_steps, world_size)

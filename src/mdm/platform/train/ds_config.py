"""The DeepSpeed JSON of a run: generated from the `deepspeed` section, or read from `deepspeed.config_path`.

    conf = build_ds_config(cfg.deepspeed, cfg.train, world_size=2, total_steps=1000, hidden_size=4096)
    notes = ds_config_notes(cfg.deepspeed, cfg.train, world_size=2, total_steps=1000, on_gpu=False)

A user's JSON (the seed's `zero2_cpu_offload.json`, say) is used as written, with these changes:
- batch and accumulation are the trainer's: `train_micro_batch_size_per_gpu` = `train.batch_size_per_gpu`,
  `gradient_accumulation_steps` = `train.grad_accum`, `train_batch_size` = their product x workers, and
  `gradient_clipping` = `train.max_grad_norm` (an explicit value that differs is replaced, with a note);
- `"auto"` is resolved as Hugging Face's DeepSpeed integration does (`HfTrainerDeepSpeedConfig`'s
  `trainer_config_process` / `trainer_config_finalize`): `optimizer.params` lr/betas/eps/weight_decay from
  `train.lr`, `adam_beta1/2`, `adam_epsilon`, `weight_decay`; `scheduler.params` warmup_min_lr 0,
  warmup_max_lr `train.lr`, total_num_steps the run's steps, warmup_num_steps max(1, `train.warmup_steps`);
  `fp16.enabled` / `bf16.enabled` from `deepspeed.precision`; `zero_optimization.reduce_bucket_size` hidden^2
  and, with ZeRO-3, `stage3_prefetch_bucket_size` 0.9 hidden^2 and `stage3_param_persistence_threshold`
  10 hidden. As in Hugging Face's, an explicit optimizer or scheduler value that disagrees with the train key
  is an error (say "auto" or make them equal); an explicit `fp16`/`bf16` is the JSON's choice;
- `pin_memory` of an offload is turned off when there is no GPU (pinned host memory needs CUDA), with a note;
- any other "auto" is an error naming its key.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Optional

import torch

if TYPE_CHECKING:
    from mdm.platform.engine_api import BaseTrainConfig
    from mdm.platform.train.deepspeed_config import DeepSpeedConfig

HIDDEN_KEYS = ("zero_optimization.reduce_bucket_size", "zero_optimization.stage3_prefetch_bucket_size",
               "zero_optimization.stage3_param_persistence_threshold")


def _node(conf: dict[str, Any], dotted: str) -> tuple[Optional[dict[str, Any]], str]:
    """(the dict holding the last part of `dotted`, that part), or (None, part) when a parent is missing."""
    *parents, last = dotted.split(".")
    node: Any = conf
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
        if node is None:
            return None, last
    return (node if isinstance(node, dict) else None), last


class _Filler:
    """Hugging Face's `fill_match` / `fill_only` over a plain dict, with our source names in messages."""

    def __init__(self, conf: dict[str, Any], path: str) -> None:
        self.conf, self.path, self.mismatches, self.notes = conf, path, [], []

    def fill(self, dotted: str, value: object, ours: str, must_match: bool = True, override: bool = False) -> None:
        node, key = _node(self.conf, dotted)
        if node is None or key not in node:
            return
        if node[key] == "auto":
            node[key] = value
        elif override and node[key] != value:
            self.notes.append(f"deepspeed.config_path {self.path}: {dotted} {node[key]} -> {value} ({ours})")
            node[key] = value
        elif must_match and node[key] != value:
            self.mismatches.append(f"{dotted}={node[key]} vs {ours}={value}")


def _autos(obj: object, prefix: str = "") -> list[str]:
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in _autos(v, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if obj == "auto" else []


def _resolve(conf: dict[str, Any], path: str, ds_cfg: DeepSpeedConfig, train_cfg: BaseTrainConfig, world_size: int,
             total_steps: Optional[int], hidden_size: Optional[int], notes: list[str]) -> None:
    f = _Filler(conf, path)
    batch = train_cfg.batch_size_per_gpu
    for key, value, ours in (
            ("train_micro_batch_size_per_gpu", batch, "train.batch_size_per_gpu"),
            ("gradient_accumulation_steps", train_cfg.grad_accum, "train.grad_accum"),
            ("train_batch_size", batch * train_cfg.grad_accum * world_size, "batch x grad_accum x workers"),
            ("gradient_clipping", train_cfg.max_grad_norm, "train.max_grad_norm")):
        f.fill(key, value, ours, override=True)
    f.fill("optimizer.params.lr", train_cfg.lr, "train.lr")
    f.fill("optimizer.params.betas", [train_cfg.adam_beta1, train_cfg.adam_beta2], "train.adam_beta1/2")
    f.fill("optimizer.params.eps", train_cfg.adam_epsilon, "train.adam_epsilon")
    f.fill("optimizer.params.weight_decay", train_cfg.weight_decay, "train.weight_decay")
    f.fill("scheduler.params.warmup_min_lr", 0, "0", must_match=False)
    f.fill("scheduler.params.warmup_max_lr", train_cfg.lr, "train.lr")
    if total_steps is not None:
        f.fill("scheduler.params.total_num_steps", total_steps, "the run's steps")
    f.fill("scheduler.params.warmup_num_steps", max(1, train_cfg.warmup_steps), "max(1, train.warmup_steps)")
    f.fill("fp16.enabled", ds_cfg.precision == "fp16", "deepspeed.precision", must_match=False)
    f.fill("bf16.enabled", ds_cfg.precision == "bf16", "deepspeed.precision", must_match=False)
    if hidden_size is not None:
        f.fill("zero_optimization.reduce_bucket_size", hidden_size * hidden_size, "hidden^2", must_match=False)
        if conf.get("zero_optimization", {}).get("stage") == 3:
            f.fill("zero_optimization.stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size),
                   "0.9 hidden^2", must_match=False)
            f.fill("zero_optimization.stage3_param_persistence_threshold", 10 * hidden_size, "10 hidden",
                   must_match=False)
    if f.mismatches:
        raise ValueError(f"deepspeed.config_path {path}: values that disagree with the train keys: "
                         f"{'; '.join(f.mismatches)} (set them to \"auto\" or make them equal)")
    left = [k for k in _autos(conf) if not (k in HIDDEN_KEYS and hidden_size is None)
            and not (k == "scheduler.params.total_num_steps" and total_steps is None)]
    if left:
        raise ValueError(f"deepspeed.config_path {path}: \"auto\" at {', '.join(left)} has no value to take "
                         f"(mdm fills the keys Hugging Face's Trainer fills); give a number")
    notes += f.notes


def _unpin(conf: dict[str, Any], path: str, notes: list[str]) -> None:
    zero = conf.get("zero_optimization") or {}
    pinned = [k for k in ("offload_optimizer", "offload_param")
              if isinstance(zero.get(k), dict) and zero[k].get("pin_memory")]
    for k in pinned:
        zero[k]["pin_memory"] = False
    if pinned:
        notes.append(f"deepspeed.config_path {path}: pin_memory turned off for "
                     f"{' and '.join('zero_optimization.' + k for k in pinned)} (no GPU: pinned memory needs CUDA)")


def json_precision(conf: dict[str, Any]) -> str:
    """The precision a DeepSpeed config asks for: fp16, bf16 or fp32."""
    for name in ("fp16", "bf16"):
        if (conf.get(name) or {}).get("enabled") is True:
            return name
    return "fp32"


def build_ds_config(ds_cfg: DeepSpeedConfig, train_cfg: BaseTrainConfig, world_size: int, *,
                    total_steps: Optional[int] = None, hidden_size: Optional[int] = None, on_gpu: Optional[bool] = None,
                    notes: Optional[list[str]] = None) -> dict[str, Any]:
    """The DeepSpeed config dict for this run (see the module docstring for what wins); `notes` collects
    one line per change made to a user's JSON."""
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    notes = [] if notes is None else notes
    if ds_cfg.config_path:
        try:
            with open(ds_cfg.config_path) as fh:
                conf: dict[str, Any] = json.load(fh)
        except OSError as e:
            raise ValueError(f"deepspeed.config_path {ds_cfg.config_path}: cannot read it ({e.strerror})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"deepspeed.config_path {ds_cfg.config_path}:{e.lineno}: not valid JSON ({e.msg})") \
                from None
        _resolve(conf, ds_cfg.config_path, ds_cfg, train_cfg, world_size, total_steps, hidden_size, notes)
        conf.update({"train_micro_batch_size_per_gpu": train_cfg.batch_size_per_gpu,
                     "gradient_accumulation_steps": train_cfg.grad_accum,
                     "train_batch_size": train_cfg.batch_size_per_gpu * train_cfg.grad_accum * world_size,
                     "gradient_clipping": train_cfg.max_grad_norm})
        if json_precision(conf) == "fp16" and not on_gpu:
            raise ValueError(f"deepspeed.config_path {ds_cfg.config_path}: fp16.enabled is not supported on CPU "
                             "(DeepSpeed: 'Type fp16 is not supported on your device'); use bf16 or fp32")
        if not on_gpu:
            _unpin(conf, ds_cfg.config_path, notes)
    else:
        zero: dict[str, Any] = {"stage": ds_cfg.zero_stage}
        if ds_cfg.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
        if ds_cfg.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
        conf = {"zero_optimization": zero,
                "bf16": {"enabled": ds_cfg.precision == "bf16"},
                "fp16": {"enabled": ds_cfg.precision == "fp16"},
                "train_micro_batch_size_per_gpu": train_cfg.batch_size_per_gpu,
                "gradient_accumulation_steps": train_cfg.grad_accum,
                "train_batch_size": train_cfg.batch_size_per_gpu * train_cfg.grad_accum * world_size,
                "gradient_clipping": train_cfg.max_grad_norm}
    conf.setdefault("steps_per_print", 1 << 30)   # our own logging reports progress
    conf.setdefault("zero_allow_untested_optimizer", True)
    conf.setdefault("zero_force_ds_cpu_optimizer", False)  # torch AdamW with offload is allowed (slower)
    return conf


def ds_config_notes(ds_cfg: DeepSpeedConfig, train_cfg: BaseTrainConfig, world_size: int, *, total_steps: int,
                    on_gpu: bool) -> list[str]:
    """Check a user's DeepSpeed JSON on the driver (errors before any worker starts) and return the notes
    to print once; [] when DeepSpeed is off or the config is generated."""
    if not (ds_cfg.enabled and ds_cfg.config_path):
        return []
    notes: list[str] = []
    build_ds_config(ds_cfg, train_cfg, world_size, total_steps=total_steps, on_gpu=on_gpu, notes=notes)
    return notes

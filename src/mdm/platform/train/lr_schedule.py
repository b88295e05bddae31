"""The learning-rate schedule of every training loop here: `transformers.get_scheduler`, by HF's names.

    scheduler = build_lr_scheduler(optimizer, train_cfg, total_steps=1000)   # a torch LambdaLR
    scheduler.step()                                                          # after each optimizer step

`train.lr_scheduler_type` takes Hugging Face's names with Hugging Face's curves (the seed trained with the HF
Trainer, so the same name means the same curve), over `total_steps` optimizer steps with `train.warmup_steps`
of linear warmup from 0 (the first step runs at lr 0, as in HF); `train.lr_scheduler_kwargs` are passed as
`scheduler_specific_kwargs`:
- `constant`: lr throughout (no warmup: HF's `constant` ignores it, so warmup_steps > 0 is refused at load);
- `constant_with_warmup`: warmup, then lr;
- `linear`: warmup, then linear decay to 0 at the last step;
- `cosine`: warmup, then half a cosine to 0 (`num_cycles`: 0.5);
- `cosine_with_min_lr`: warmup, then cosine to `min_lr_rate` x lr (or `min_lr`), e.g. {min_lr_rate: 0.1};
- `cosine_with_restarts`: warmup, then `num_cycles` hard-restarted cosines to 0;
- `polynomial`: warmup, then (1 - progress)^`power` from lr to `lr_end` (default 1e-7);
- `inverse_sqrt`: warmup, then lr x sqrt(`timescale` / (step + `timescale`)) (timescale defaults to warmup);
- `warmup_stable_decay`: warmup, lr, then a decay over `num_decay_steps` (required) to `min_lr_ratio`.
"""

from __future__ import annotations

from typing import Any

import torch

from mdm.platform.engine_api import BaseTrainConfig  # its LR_SCHEDULERS: the names accepted (not
# reduce_lr_on_plateau, which needs a metric each step, nor greedy)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, train_cfg: BaseTrainConfig, total_steps: int) -> Any:
    """`get_scheduler(train.lr_scheduler_type, optimizer, warmup_steps, total_steps, lr_scheduler_kwargs)`."""
    from transformers import get_scheduler

    kwargs = dict(train_cfg.lr_scheduler_kwargs or {})
    try:
        return get_scheduler(train_cfg.lr_scheduler_type, optimizer, num_warmup_steps=train_cfg.warmup_steps,
                             num_training_steps=total_steps, scheduler_specific_kwargs=kwargs or None)
    except (TypeError, ValueError) as e:
        raise ValueError(f"train.lr_scheduler_type {train_cfg.lr_scheduler_type!r} with train.lr_scheduler_kwargs "
                         f"{kwargs}: {e}") from None

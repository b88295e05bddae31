"""The LLaDA denoising schedule: blocks, steps per block, and how many tokens each step commits.

    nb, spb = check_schedule(gen_length=128, block_length=32, steps=128)   # -> (4 blocks, 32 steps each)
    k = transfer_counts(torch.tensor([32, 30]), spb)                     # [2, 32] commits per row and step

Shared by the `llada` and `fast` samplers so both follow the upstream rule: a block's masks are split into
equal numbers per step, the remainder going to the first steps.
"""

from __future__ import annotations

import torch


def check_schedule(gen_length: int, block_length: int, steps: int) -> tuple[int, int]:
    """(number of blocks, steps per block); a ValueError naming the sampler keys when they do not divide."""
    for key, value in (("gen_length", gen_length), ("block_length", block_length), ("steps", steps)):
        if value < 1:
            raise ValueError(f"sampler.{key} must be >= 1, got {value}")
    if gen_length % block_length:
        raise ValueError(f"sampler.gen_length ({gen_length}) must be a multiple of sampler.block_length "
                         f"({block_length})")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"sampler.steps ({steps}) must be a multiple of the number of blocks "
                         f"(gen_length / block_length = {num_blocks}); steps is the total over all blocks")
    return num_blocks, steps // num_blocks


def transfer_counts(mask_counts: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to commit per step: mask_counts [B] long -> [B, steps] long, summing to mask_counts per row.

    base = n // steps per step, and the first n % steps steps commit one more (upstream's rule)."""
    base = (mask_counts // steps)[:, None]
    rem = (mask_counts % steps)[:, None]
    return base + (torch.arange(steps, device=mask_counts.device)[None, :] < rem).long()

"""The padded batch the samplers denoise: prompts of different lengths, left-padded, with masks after them.

    batch = SampleBatch.build(prompts, gen_length=128, mask_id=m, pad_id=0, device="cpu")
    batch.x              # [B, P + G] long: pad..pad prompt [MASK]*G (every row's generation starts at column P)
    batch.attention_mask # [B, P + G] long, 0 on the left padding (None when no row is padded)
    batch.position_ids   # [B, P + G] long, 0 at each row's first real token, so a row sees what it would alone

Left padding keeps the blocks of all rows on the same columns, so one forward serves a whole batch and each
row's logits equal running it alone (padding keys are never attended to).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

import torch


@dataclass
class SampleBatch:
    x: torch.Tensor
    attention_mask: Optional[torch.Tensor]
    position_ids: torch.Tensor
    prompt_mask: torch.Tensor  # [B, T] bool: real prompt tokens (what CFG's unconditional pass masks)
    gen_start: int

    @classmethod
    def build(cls, prompts: Sequence[Sequence[int]], gen_length: int, mask_id: int, pad_id: int,
              device: torch.device | str) -> "SampleBatch":
        if not prompts:
            raise ValueError("no prompts given")
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        width = int(lengths.max())
        total = width + gen_length
        x = torch.full((len(prompts), total), pad_id, dtype=torch.long, device=device)
        for i, p in enumerate(prompts):
            if len(p):
                x[i, width - len(p):width] = torch.as_tensor(list(p), dtype=torch.long, device=device)
        x[:, width:] = mask_id
        cols = torch.arange(total, device=device)[None, :]
        real = cols >= (width - lengths)[:, None]
        padded = bool((lengths < width).any())
        position_ids = (real.long().cumsum(1) - 1).clamp(min=0) if padded else cols.expand(len(prompts), total)
        return cls(x=x, attention_mask=real.long() if padded else None, position_ids=position_ids,
                   prompt_mask=real & (cols < width), gen_start=width)

    def generated(self) -> list[list[int]]:
        """The generated part of each row (masks still there if it was not fully denoised)."""
        return self.x[:, self.gen_start:].tolist()


def rows_finished(gen: torch.Tensor, end_ids: Sequence[int], mask_id: int) -> torch.Tensor:
    """[B] bool: the row has no mask left in `gen` [B, n], holds an end token, and only end tokens after it.

    Such a row's text (cut at its first end token) can no longer change, so the remaining masks may be
    filled with end tokens without running the model."""
    is_end = torch.zeros_like(gen, dtype=torch.bool)
    for t in end_ids:
        is_end |= gen == t
    # after the first end token everything is an end token <=> the end flags are non-decreasing along the row
    seen = is_end.long().cummax(dim=1).values.bool()
    return is_end.any(dim=1) & (seen == is_end).all(dim=1) & ~(gen == mask_id).any(dim=1)


def row_generators(prompts: Sequence[Sequence[int]], generator: Optional[torch.Generator],
                   device: torch.device | str) -> list[torch.Generator]:
    """One random stream per row, seeded from one draw of `generator` (or the global RNG) and the row's
    prompt (plus its occurrence index among equal prompts), so a row samples the same tokens alone or in any
    batch, repeated prompts in one batch still differ, and each call advances `generator` by one draw."""
    where = generator.device if generator is not None else "cpu"
    base = int(torch.randint(0, 2**62, (1,), device=where, generator=generator))
    seen: dict[tuple[int, ...], int] = {}
    gens = []
    for p in prompts:
        key = tuple(int(t) for t in p)
        seen[key] = seen.get(key, -1) + 1
        digest = hashlib.sha256(f"{base}|{seen[key]}|{key}".encode()).digest()
        gens.append(torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1))
    return gens

"""GPU cards by name: their memory as sold (`CARDS`), read from a card name as a person or Ray spells it.

    card_gib("h100"), card_gib("A100-80G"), card_gib("GeForce-RTX-4090")    # 80.0, 80.0, 24.0; None: unknown
    accelerator_gib(ray.cluster_resources())   # (80.0, "Ray's accelerator_type:A100-80G"), or (None, why)

`mdm plan --gpu-mem` takes the names; `mdm train`'s memory plan (plan_check.py) reads Ray's
`accelerator_type:<NAME>` resources when it has no other size. Nothing here imports torch or Ray.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

# GPU memory as sold (GB on the box; the usable GiB are close to it for HBM cards), by card name: `mdm plan
# --gpu-mem` and Ray's accelerator types (`card_gib`).
CARDS = {"a100-40": 40, "a100-80": 80, "a100": 80, "a80": 80, "h100": 80, "h100-80": 80, "h100-94": 94,
         "h200": 141, "b200": 180, "l4": 24, "l40s": 48, "a10g": 24, "a10": 24, "t4": 16, "v100-16": 16,
         "v100-32": 32, "a6000": 48, "3090": 24, "4090": 24, "5090": 32, "mi300x": 192}
# Cards sold with two memory sizes that Ray names alike (its GPU detection reads "A100" off either): a size
# read from Ray's name alone would be a guess, so it is not made.
AMBIGUOUS = {"a100": "40 or 80", "v100": "16 or 32"}
ACCELERATOR = "accelerator_type:"  # Ray's resource per node type, e.g. accelerator_type:A100-80G
# How Ray spells some cards (ray.util.accelerators): vendor prefixes, a "-80G" memory suffix, a form factor.
RAY_SPELLING = ((re.compile(r"^(nvidia-|geforce-rtx-|geforce-|rtx-|amd-instinct-)"), ""),
                (re.compile(r"-(\d+)g$"), r"-\1"), (re.compile(r"-(oam|hf)$"), ""))


def card_gib(name: str) -> Optional[float]:
    """The GiB of a card named as in `CARDS` or as Ray's accelerator types spell it (A100-80G,
    GeForce-RTX-4090, AMD-Instinct-MI300X-OAM); None when the table does not know it."""
    key = name.strip().lower()
    for pattern, repl in RAY_SPELLING:
        key = pattern.sub(repl, key)
    found = CARDS.get(name.strip().lower(), CARDS.get(key))
    return float(found) if found is not None else None


def accelerator_gib(resources: Mapping[str, float]) -> tuple[Optional[float], str]:
    """From `ray.cluster_resources()`: the GiB of the smallest `accelerator_type:<NAME>` card and where that
    came from; (None, why) when there is none, or one is not in `CARDS` or is `AMBIGUOUS`."""
    names = sorted(k[len(ACCELERATOR):] for k in resources if k.startswith(ACCELERATOR))
    if not names:
        return None, "no accelerator_type in Ray's resources"
    both = [f"{n} ({AMBIGUOUS[n.lower()]} GB)" for n in names if n.lower() in AMBIGUOUS]
    if both:
        return None, f"Ray's accelerator_type {', '.join(both)} does not say which"
    sizes = {n: card_gib(n) for n in names}
    unknown = [n for n, g in sizes.items() if g is None]
    if unknown:
        return None, f"Ray's accelerator_type {', '.join(unknown)} is not a known card"
    name = min(names, key=lambda n: sizes[n])
    return sizes[name], f"Ray's {ACCELERATOR}{name}"

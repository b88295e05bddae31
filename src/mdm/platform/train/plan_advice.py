"""What `mdm plan` says: the breakdown of a memory plan (memory_plan.py), and the smallest changes that fit.

    print(report(plan))                             # per GPU: weights, gradients, optimizer, ..., total, verdict
    for s in suggestions(cfg, plan): print(s.line())   # "  --set deepspeed.zero_stage=3: 41.2 GiB, fits"

A change is tried from each kind, least drastic first, and the first that fits is offered: a higher ZeRO
stage, CPU offload, a smaller micro-batch (`train.grad_accum` raised to keep the global batch), the engine's
own knobs (`EngineSpec.memory_knobs`: LLaDA+'s gradient checkpointing and LoRA ranks) and more GPUs (the
fewest that fit). When no single change fits, pairs of kinds are tried. Every suggestion carries the total
the planner itself computes for the changed config.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from mdm.platform.config_ops import flatten, with_overrides
from mdm.platform.registry import get_registry
from mdm.platform.train.memory_plan import GIB, Plan, plan_memory

if TYPE_CHECKING:
    from mdm.platform.config import RunConfig

MAX_GPUS = 4096
SHOWN_PAIRS = 4


def gib(n: float, width: int = 8) -> str:
    """Bytes as GiB with two decimals, right-aligned in `width` characters (0: no padding)."""
    return f"{n / GIB:{width}.2f}"


def report(plan: Plan) -> str:
    """The breakdown per GPU, one line per kind, and the verdict."""
    m, s = plan.memory, plan.state
    other = "" if m.other_forwards <= m.activations else f"; {m.other_what}: {gib(m.other_forwards).strip()}"
    lora = "" if m.trainable == m.params else f" ({m.trainable / m.params:.2%})"
    lines = [f"model: {m.params / 1e9:.3f}B parameters, {m.trainable / 1e9:.3f}B trained{lora}; "
             f"weights in {m.weight_dtype}",
             f"setup: {plan.sharding.describe(plan.gpus)}",
             f"micro-batch: {m.rows} forward rows, {m.tokens} tokens (worst case: every response token masked)",
             "per GPU (GiB):",
             f"  weights           {gib(s.weights)}",
             f"  gradients         {gib(s.gradients)}",
             f"  optimizer state   {gib(s.optimizer)}" + ("   (fp32 master + m + v)" if plan.sharding.mixed or
                                                          plan.sharding.stage else "   (AdamW m + v)"),
             f"  DeepSpeed buffers {gib(s.buffers)}",
             f"  activations       {gib(plan.activations)}   (checkpointing {'on' if m.checkpointing else 'off'}; "
             f"with: {gib(m.activations_checkpointed).strip()}, without: {gib(m.activations_plain).strip()}{other})",
             f"  reserve           {gib(plan.reserve)}   (CUDA context + allocator slack: assumed, not measured)",
             f"  total             {gib(plan.total)}   of {plan.gpu_bytes / GIB:.2f}: "
             f"{'fits' if plan.fits else 'does not fit'}"]
    if s.host:
        lines.append(f"on the host (CPU memory, per GPU): {gib(s.host).strip()} GiB offloaded")
    four = plan.four_bit_total()
    if four is not None:
        lines.append(f"with a 4-bit base (model.load_in_4bit: true, CUDA only; declared estimate): total "
                     f"{gib(four).strip()} GiB")
    lines += [f"note: {n}" for n in m.notes]
    return "\n".join(lines)


@dataclass
class Suggestion:
    """A change (`--set` overrides and a GPU count) and the plan of the changed config."""

    changes: dict[str, Any] = field(default_factory=dict)
    gpus: Optional[int] = None
    plan: Optional[Plan] = None

    def line(self) -> str:
        sets = " ".join(f"--set {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in self.changes.items())
        what = " ".join(x for x in (sets, f"--gpus {self.gpus}" if self.gpus else "") if x)
        p = self.plan
        return f"  {what}: {gib(p.total).strip()} GiB, {'fits' if p.fits else 'does not fit'}"


def kinds(cfg: RunConfig) -> list[list[dict[str, Any]]]:
    """Candidate overrides per kind, least drastic first (platform kinds, then the engine's)."""
    ds, t = cfg.deepspeed, cfg.train
    out: list[list[dict[str, Any]]] = []
    if not ds.config_path:  # a user's JSON decides stage and offload: they are edited there
        stage = ds.zero_stage if ds.enabled else -1
        out.append([{"deepspeed.enabled": True, "deepspeed.zero_stage": z} for z in range(max(stage + 1, 1), 4)])
        offload = []
        if not ds.offload_optimizer:
            offload.append({"deepspeed.enabled": True, "deepspeed.zero_stage": max(ds.zero_stage, 1),
                            "deepspeed.offload_optimizer": True})
        if not ds.offload_params:
            offload.append({"deepspeed.enabled": True, "deepspeed.zero_stage": 3, "deepspeed.offload_optimizer": True,
                            "deepspeed.offload_params": True})
        out.append(offload)
    b = t.batch_size_per_gpu
    out.append([{"train.batch_size_per_gpu": d, "train.grad_accum": t.grad_accum * b // d}
                for d in range(b - 1, 0, -1) if b % d == 0])
    spec = get_registry("engines").get(cfg.engine)
    flat = flatten(cfg)
    if spec.memory_knobs is not None:
        out += spec.memory_knobs(flat)
    # each option names only what it changes
    out = [[{k: v for k, v in option.items() if flat.get(k) != v} for option in options] for options in out]
    return [k for k in out if k]


def _plan(cfg: RunConfig, base: Plan, changes: dict[str, Any], gpus: int, vocab_size: Optional[int]) -> Plan:
    changed = with_overrides(cfg, changes) if changes else cfg
    engine_keys = any(not k.startswith("deepspeed.") for k in changes)
    return plan_memory(changed, gpus=gpus, gpu_gib=base.gpu_bytes / GIB, vocab_size=vocab_size,
                       memory=None if engine_keys else base.memory)


def fewest_gpus(cfg: RunConfig, base: Plan, changes: dict[str, Any], vocab_size: Optional[int]) -> Optional[Plan]:
    """The plan on the fewest GPUs (more than now, up to MAX_GPUS) that fits with `changes`, else None."""
    first = _plan(cfg, base, changes, MAX_GPUS, vocab_size)
    if not first.fits:
        return None
    lo, hi = base.gpus, MAX_GPUS  # per-GPU memory does not grow with the GPU count: bisect
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _plan(cfg, base, changes, mid, vocab_size).fits else (mid, hi)
    return _plan(cfg, base, changes, hi, vocab_size)


def suggestions(cfg: RunConfig, base: Plan, vocab_size: Optional[int] = None) -> list[Suggestion]:
    """The smallest fitting change of each kind; when none fits alone, fitting pairs (see the module docstring)."""
    out: list[Suggestion] = []
    candidates = kinds(cfg)
    for options in candidates:
        for changes in options:
            plan = _plan(cfg, base, changes, base.gpus, vocab_size)
            if plan.fits:
                out.append(Suggestion(changes, None, plan))
                break
    more = fewest_gpus(cfg, base, {}, vocab_size)
    if more is not None:
        out.append(Suggestion({}, more.gpus, more))
    if out:
        return out
    return pairs(cfg, base, candidates, vocab_size)


def pairs(cfg: RunConfig, base: Plan, candidates: list[list[dict[str, Any]]],
          vocab_size: Optional[int]) -> list[Suggestion]:
    """Fitting changes of two kinds (per pair of kinds, the least drastic fitting options) or of one kind with
    more GPUs, the fewest GPUs and then the smallest totals first."""
    found: list[Suggestion] = []
    for a, b in itertools.combinations(candidates, 2):
        for x, y in sorted(itertools.product(range(len(a)), range(len(b))), key=sum):
            plan = _plan(cfg, base, {**a[x], **b[y]}, base.gpus, vocab_size)
            if plan.fits:
                found.append(Suggestion({**a[x], **b[y]}, None, plan))
                break
    for option in (o for options in candidates for o in options):
        more = fewest_gpus(cfg, base, option, vocab_size)
        if more is not None:
            found.append(Suggestion(option, more.gpus, more))
    unique = {s.line(): s for s in found}
    return sorted(unique.values(), key=lambda s: (s.gpus or base.gpus, s.plan.total))[:SHOWN_PAIRS]

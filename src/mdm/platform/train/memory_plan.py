"""Will a training config fit its GPUs? The platform's half of `mdm plan`: where DeepSpeed (or plain torch) puts
weights, gradients and optimizer state, per GPU, under the run's ZeRO stage and offload, over the engine's
model arithmetic (`EngineSpec.model_memory`: parameters, activations; the engine never appears here by name).

    plan = plan_memory(cfg, gpus=8, gpu_gib=80.0)        # Plan: bytes per GPU by kind, on the host, the verdict
    plan.total, plan.fits, plan.memory.params
    state = state_bytes(mem, ds, gpus=8)                  # the sharding arithmetic alone (StateBytes)

The DeepSpeed settings are those the run would use: the JSON `build_ds_config` makes from the `deepspeed`
section, or the user's `deepspeed.config_path` (its stage, offload and precision). Per GPU, with P parameters,
Pt of them trained (an adapter's only, with LoRA), w bytes per weight (the trained ones' own size where it
differs: PEFT's float32 adapters on a half-precision base), N GPUs:
- plain torch (`deepspeed.enabled: false`, every GPU a replica): weights P w, gradients Pt w, AdamW m and v
  2 Pt w plus a float32 step counter per trained tensor;
- DeepSpeed ZeRO 0: the same, and with bf16/fp16 a float32 master copy (4 Pt), its m and v in float32 (8 Pt);
- ZeRO 1-3: float32 master, m and v, 12 Pt, split over N GPUs (1+); gradients split too (2+), weights too
  (3); DeepSpeed's own buffers at its defaults (not set by mdm): the gradient reduce bucket (2+,
  `reduce_bucket_size`, 5e8 elements), and under ZeRO-3 the gathered working set (one block plus the
  prefetch bucket, `stage3_prefetch_bucket_size`, 5e7 elements);
- offload: `offload_optimizer` moves the optimizer state (and a float32 gradient partition) to the host,
  `offload_params` (ZeRO-3) the weights, the working set staying on the GPU.
Activations are the engine's (a training micro-batch, or the larger forward before training). A reserve for
the CUDA context and allocator slack (1 GiB plus 5%: an assumption, not measured) completes the total.
tests/platform/train/test_memory_plan.py checks the state bytes against a live model and optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from mdm.platform.engine_api import ModelMemory
from mdm.platform.registry import get_registry
from mdm.platform.train.ds_config import build_ds_config, json_precision

if TYPE_CHECKING:
    from mdm.platform.config import RunConfig
    from mdm.platform.train.deepspeed_config import DeepSpeedConfig

GIB = 1 << 30
# DeepSpeed's defaults for what mdm's generated config leaves unset (deepspeed/runtime/zero/config.py).
DS_REDUCE_BUCKET = 500_000_000
DS_PREFETCH_BUCKET = 50_000_000
RESERVE_FIXED, RESERVE_FRACTION = GIB, 0.05
NF4_BYTES = 4.5 / 8  # a 4-bit weight with a float32 absmax per 64 weights (bitsandbytes' NF4, no double quant)


@dataclass(frozen=True)
class Sharding:
    """What the run's DeepSpeed config says about memory (or plain torch)."""

    enabled: bool
    stage: int
    mixed: bool               # bf16/fp16 weights with a float32 master copy
    offload_optimizer: bool
    offload_params: bool
    reduce_bucket: int
    prefetch_bucket: int

    def describe(self, gpus: int) -> str:
        if not self.enabled:
            return f"plain torch (no DeepSpeed), {gpus} GPU(s) each a replica"
        off = [name for name, on in (("optimizer", self.offload_optimizer), ("params", self.offload_params)) if on]
        return (f"DeepSpeed ZeRO-{self.stage} over {gpus} GPU(s), {'mixed' if self.mixed else 'fp32'} precision, "
                f"{'offload ' + ' + '.join(off) if off else 'no offload'}")


@dataclass(frozen=True)
class StateBytes:
    """Bytes per GPU of weights, gradients, optimizer state and DeepSpeed buffers; `host`: offloaded, per GPU."""

    weights: int
    gradients: int
    optimizer: int
    buffers: int
    host: int


@dataclass(frozen=True)
class Plan:
    """A config's memory per GPU: `state`, `activations` (the larger of the training step's and the other
    forwards'), `reserve`; `total` against `gpu_bytes`."""

    memory: ModelMemory
    sharding: Sharding
    state: StateBytes
    activations: int
    gpus: int
    gpu_bytes: int

    @property
    def reserve(self) -> int:
        s = self.state
        return int(RESERVE_FIXED + RESERVE_FRACTION * (s.weights + s.gradients + s.optimizer + s.buffers
                                                       + self.activations))

    @property
    def total(self) -> int:
        s = self.state
        return s.weights + s.gradients + s.optimizer + s.buffers + self.activations + self.reserve

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_bytes

    def four_bit_total(self) -> Optional[int]:
        """The total with the frozen base in 4 bits (a declared estimate; only with adapters and not already
        4-bit), else None."""
        mem = self.memory
        if mem.trainable == mem.params or mem.four_bit:
            return None
        saved = mem.quantizable * (mem.weight_bytes - NF4_BYTES)
        if self.sharding.enabled and self.sharding.stage == 3:
            saved /= self.gpus
        if self.sharding.offload_params:
            saved = 0
        return int(self.total - saved * (1 + RESERVE_FRACTION))


def sharding_of(ds: DeepSpeedConfig, conf: Optional[dict[str, Any]]) -> Sharding:
    """The `Sharding` of the run's DeepSpeed config dict `conf` (None: DeepSpeed off)."""
    if conf is None:
        return Sharding(False, 0, False, False, False, 0, 0)
    zero = conf.get("zero_optimization") or {}

    def offloaded(key: str) -> bool:
        return str((zero.get(key) or {}).get("device", "none")) in ("cpu", "nvme")

    return Sharding(True, int(zero.get("stage", 0)), json_precision(conf) != "fp32", offloaded("offload_optimizer"),
                    offloaded("offload_param"), int(zero.get("reduce_bucket_size", DS_REDUCE_BUCKET)),
                    int(zero.get("stage3_prefetch_bucket_size", DS_PREFETCH_BUCKET)))


def state_bytes(mem: ModelMemory, sh: Sharding, gpus: int) -> StateBytes:
    """Weights, gradients, optimizer state and buffers per GPU (module docstring)."""
    w, tw, p, pt, tensors = mem.weight_bytes, mem.trainable_bytes, mem.params, mem.trainable, mem.trainable_tensors
    quant = mem.quantizable if mem.four_bit else 0  # QLoRA: the frozen block weights in NF4
    full = (p - pt - quant) * w + int(quant * NF4_BYTES) + pt * tw
    if not sh.enabled or sh.stage == 0:
        master = 4 * pt if sh.enabled and sh.mixed else 0
        moments = (8 * pt if master else 2 * pt * tw) + 4 * tensors
        optimizer, weights, grads, buffers = master + moments, full, pt * tw, 0
    else:
        optimizer = -(-12 * pt // gpus) + 4  # fp32 master + m + v of this GPU's partition; one step counter
        grads = -(-pt * tw // gpus) if sh.stage >= 2 else pt * tw
        weights = -(-full // gpus) if sh.stage == 3 else full
        buffers = min(sh.reduce_bucket, pt) * tw if sh.stage >= 2 else 0
        if sh.stage == 3:
            buffers += (mem.largest_unit + min(sh.prefetch_bucket, p)) * w
    host = 0
    if sh.enabled and sh.offload_optimizer:
        host, optimizer = optimizer + 4 * (-(-pt // gpus)), 0
    if sh.enabled and sh.offload_params and sh.stage == 3:
        host, weights = host + weights, 0
    return StateBytes(weights=weights, gradients=grads, optimizer=optimizer, buffers=buffers, host=host)


def ds_conf(cfg: RunConfig, gpus: int, hidden: int) -> Optional[dict[str, Any]]:
    """The DeepSpeed config the run would use (None when DeepSpeed is off)."""
    if not cfg.deepspeed.enabled:
        return None
    return build_ds_config(cfg.deepspeed, cfg.train, gpus, hidden_size=hidden, on_gpu=True)


def model_memory(cfg: RunConfig, vocab_size: Optional[int] = None) -> ModelMemory:
    """The engine's `model_memory` for this config, in the precision DeepSpeed would train in."""
    spec = get_registry("engines").get(cfg.engine)
    if spec.model_memory is None:
        raise ValueError(f"engine {cfg.engine!r} has no memory model (EngineSpec.model_memory): mdm plan cannot "
                         f"plan it")
    conf = ds_conf(cfg, 1, 4096)
    precision = json_precision(conf) if conf is not None else None
    return spec.model_memory(cfg.model, cfg.train, name_or_path=cfg.train.model, vocab_size=vocab_size,
                             precision=None if precision == "fp32" else precision)


def plan_memory(cfg: RunConfig, *, gpus: int, gpu_gib: float, vocab_size: Optional[int] = None,
                memory: Optional[ModelMemory] = None) -> Plan:
    """The memory plan of `cfg` on `gpus` GPUs of `gpu_gib` GiB (`memory`: the engine's answer, if known)."""
    if gpus < 1:
        raise ValueError(f"--gpus must be >= 1, got {gpus}")
    if gpu_gib <= 0:
        raise ValueError(f"--gpu-mem must be > 0 GiB, got {gpu_gib}")
    mem = memory if memory is not None else model_memory(cfg, vocab_size)
    sh = sharding_of(cfg.deepspeed, ds_conf(cfg, gpus, mem.hidden))
    return Plan(memory=mem, sharding=sh, state=state_bytes(mem, sh, gpus),
                activations=max(mem.activations, mem.other_forwards), gpus=gpus, gpu_bytes=int(gpu_gib * GIB))

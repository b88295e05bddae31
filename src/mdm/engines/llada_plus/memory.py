"""What a LLaDA model needs in memory to train, from its architecture alone (no weights are built or read): the
engine's half of `mdm plan` (the platform's half, ZeRO sharding and offload, is platform/train/memory_plan.py).

    mem = model_memory(cfg.model, cfg.train, vocab_size=None, precision="bf16")   # engine_api.ModelMemory
    mem.params, mem.trainable, mem.activations, mem.activations_checkpointed, mem.other_forwards

Parameters: the LLaDA block (q/k/v/attn_out, SwiGLU ff_proj/up_proj/ff_out, two RMSNorm weights), the
embedding, the final norm and the output head (no weight tying); with `model.lora.r` > 0 only the adapters
train, r * (in + out) per adapted Linear (two tensors each). The architecture is the `model` section for
`train.model: tiny` (vocabulary from `model.vocab_size`, else the tokenizer's, else LLaDA's 126,464, said in
a note), else the checkpoint's config.json; GSAI-ML's LLaDA-8B ids are read from the local hub cache only, and
fall back to `model.llada_8b_config` when it has no copy (planning never downloads for them).

Activations (bytes) are counted from what model.py and loss.py keep for backward, per token of a micro-batch of
R rows of `train.max_len` L tokens (R = `train.batch_size_per_gpu`, twice that with MIRROR: both masks go
through one forward), s bytes per activation element (the compute dtype), d hidden, F MLP hidden, H heads:
- per block: each RMSNorm keeps its float32 input, 1/rms and its output (read by the next Linear), and its
  normalised input when its weight trains (4d + 4 + s d (+ s d)); attention q, k (after RoPE), v, its output
  and the float32 log-sum-exp of the fused SDPA kernel (4 s d + 4 H; no L x L matrix) and the float mask (s);
  SwiGLU four F-wide tensors (4 s F); a LoRA adapter adds its rank-r input (s r) per adapted Linear, with
  dropout also its dropped input and mask ((s + 1) in); PEFT keeps adapters in float32 on a half-precision
  base (unless DeepSpeed's bf16/fp16 casts the module), and then also keeps a float32 copy of their input;
- once: RoPE cos/sin (8 Dh, float32), the noised ids and the masked positions (24), the final norm;
- the loss, worst case (every token a masked response token: t near 1 in some step): in backward the float32
  log-softmax, its gradient and the gradient of its input ([tokens, V] each) and the full-size zero gradient
  that loss.py's `0 * logit` term (it keeps every parameter in the graph) sends to the logits: (12 + s) V;
- during a block's backward the gradients in flight, s (3 F + 3 d) (an over-estimate: it only matters when
  the vocabulary is small).
With gradient checkpointing a block keeps only its input (s d) and one block is recomputed at a time. A no-grad
forward peaks at a block's MLP (s (3 F + 7 d)) or at the loss ((8 + s) V).
Before training (`other_forwards`), what objective.py really runs: P-POTS' estimation packs rows up to
`train.max_tokens_per_forward` tokens into no-grad forwards (the MIRROR diagnostic too), P-POTS' realised
variance draws take gradients on one Normal micro-batch in eval mode (no checkpointing), the grad target one
row at a time; evaluation is a no-grad Normal micro-batch. tests/engines/llada_plus/test_memory.py measures the
peak of the tensors live during a step on the tiny model (their storages' bytes, from creation to release) and
holds these within 30%; in LLaDA's proportions (vocabulary >> MLP width) they agree to about 1%.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from mdm.engines.llada_plus.config import LORA_TARGETS, LoRAConfig, ModelConfig, TrainConfig
from mdm.engines.llada_plus.model import LLaDAConfig, llada_8b_config
from mdm.platform.engine_api import ModelMemory

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
PRECISION_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
LLADA_VOCAB = 126464  # LLaDA's tokenizer: the vocabulary planned when nothing else says
INPUT_BYTES = 24  # per token: the noised ids (int64) and the masked positions' indices (2 x int64)
LLADA_8B_IDS = re.compile(r"(^|/)LLaDA-(8B-(Base|Instruct)|1\.5)$", re.IGNORECASE)


@dataclass(frozen=True)
class Arch:
    """The sizes the arithmetic reads: hidden d, MLP hidden f, heads, key/value width kv, vocabulary, layers."""

    d: int
    f: int
    heads: int
    kv: int
    vocab: int
    layers: int

    @property
    def head_dim(self) -> int:
        return self.d // self.heads

    def linears(self) -> dict[str, tuple[int, int]]:
        """The block's Linear layers: name -> (in, out)."""
        d, f, kv = self.d, self.f, self.kv
        return {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "attn_out": (d, d),
                "ff_proj": (d, f), "up_proj": (d, f), "ff_out": (f, d)}


def arch_of(config: LLaDAConfig) -> Arch:
    return Arch(d=config.d_model, f=config.mlp_hidden_size, heads=config.n_heads,
                kv=config.n_kv_heads * (config.d_model // config.n_heads), vocab=config.embedding_size,
                layers=config.n_layers)


@functools.lru_cache(maxsize=16)
def read_config(name_or_path: str, local_only: bool) -> LLaDAConfig:
    """The checkpoint's config (cached: the planner asks again for each change it tries)."""
    return LLaDAConfig.from_pretrained(name_or_path, local_files_only=local_only)


def architecture(model_cfg: ModelConfig, name_or_path: str, vocab_size: Optional[int]) -> tuple[Arch, list[str]]:
    """The architecture `train.model` names, and notes on what was assumed."""
    notes: list[str] = []
    if name_or_path == "tiny":
        vocab = model_cfg.vocab_size if model_cfg.vocab_size > 0 else vocab_size
        if vocab is None:
            vocab = LLADA_VOCAB
            notes.append(f"model.vocab_size is -1 and no tokenizer was given (data.tokenizer): planned with "
                         f"LLaDA's {LLADA_VOCAB:,} tokens")
        return Arch(d=model_cfg.d_model, f=model_cfg.mlp_hidden_size, heads=model_cfg.n_heads, kv=model_cfg.d_model,
                    vocab=int(vocab), layers=model_cfg.n_layers), notes
    known = LLADA_8B_IDS.search(name_or_path.rstrip("/")) is not None and not os.path.isdir(name_or_path)
    try:
        config = read_config(name_or_path, local_only=known)  # a known id: the hub cache, never the network
    except (OSError, ValueError) as e:
        if not known:
            raise ValueError(f"train.model {name_or_path}: cannot read its config.json to plan it ({e}); "
                             f"point train.model at a local LLaDA checkpoint") from None
        config = llada_8b_config()
        notes.append(f"{name_or_path}: config.json not in the local hub cache; planned with the LLaDA-8B "
                     f"architecture (model.llada_8b_config)")
    if getattr(config, "model_type", "llada") != "llada":
        raise ValueError(f"train.model {name_or_path}: model_type {config.model_type!r}; mdm plan knows LLaDA only")
    return arch_of(config), notes


def parameters(arch: Arch, lora: LoRAConfig) -> dict[str, int]:
    """params, trainable, trainable_tensors, quantizable (the blocks' Linear weights) and block (one block)."""
    linears = arch.linears()
    block_linear = sum(i * o for i, o in linears.values())
    block = block_linear + 2 * arch.d
    params = arch.layers * block + 2 * arch.vocab * arch.d + arch.d
    if lora.r > 0:
        unknown = [t for t in lora.target_modules if t not in linears]
        if unknown:
            raise ValueError(f"model.lora.target_modules: {unknown[0]!r} names no Linear layer of the LLaDA block; "
                             f"valid names: {', '.join(sorted(LORA_TARGETS))}")
        targets = set(lora.target_modules)
        per_block = sum(lora.r * (i + o) for name, (i, o) in linears.items() if name in targets)
        adapters = arch.layers * per_block
        return {"params": params + adapters, "trainable": adapters, "trainable_tensors": 2 * arch.layers * len(targets),
                "quantizable": arch.layers * block_linear, "block": block + per_block}
    return {"params": params, "trainable": params, "trainable_tensors": arch.layers * 9 + 3,
            "quantizable": arch.layers * block_linear, "block": block}


def norm_bytes(d: int, s: int, weights_train: bool) -> int:
    """Per token, what an RMSNorm keeps: its float32 input and 1/rms, its output (read by the next Linear),
    and the normalised input when its own weight trains."""
    return 4 * d + (2 if weights_train else 1) * s * d + 4


def block_bytes_per_token(arch: Arch, s: int, lora: LoRAConfig, ta: int) -> int:
    """Bytes one block keeps for backward per token (module docstring); `ta`: bytes per adapter element."""
    d, f = arch.d, arch.f
    kept = 2 * norm_bytes(d, s, lora.r == 0) + 4 * s * d + 4 * arch.heads + s + 4 * s * f
    if lora.r > 0:
        for name, (i, _) in arch.linears().items():
            if name in lora.target_modules:
                cast = ta * i if ta != s else 0  # PEFT casts the input to the adapter's dtype
                kept += ta * lora.r + cast + ((ta + 1) * i if lora.dropout > 0 else 0)
    return kept


def step_activations(arch: Arch, rows: int, length: int, s: int, lora: LoRAConfig, checkpointing: bool,
                     ta: Optional[int] = None) -> int:
    """Peak bytes of one training micro-batch's forward and backward (rows x length tokens), worst case
    (`ta`: bytes per adapter element, default `s`)."""
    tokens = rows * length
    once = tokens * (8 * arch.head_dim + INPUT_BYTES)
    head = tokens * ((12 + s) * arch.vocab + (norm_bytes(arch.d, s, True) if lora.r == 0 else 4 * arch.d + 4))
    block = block_bytes_per_token(arch, s, lora, s if ta is None else ta) * tokens
    in_flight = s * (3 * arch.f + 3 * arch.d) * tokens
    if checkpointing:
        return once + arch.layers * s * arch.d * tokens + max(head, block + in_flight)
    return once + arch.layers * block + max(head, in_flight)


def nograd_activations(arch: Arch, tokens: int, s: int) -> int:
    """Peak bytes of a no-grad forward of `tokens` tokens: a block's MLP moment (its input, q, k, v, the
    attention output, the residual, the normed input: 7 d-wide; three F-wide) or the loss (logits, the masked
    rows' float32 copy and log-softmax: (8 + s) V), whichever is larger."""
    d = arch.d
    block = 8 * arch.head_dim + s * (3 * arch.f + 7 * d)
    return tokens * (INPUT_BYTES + max(block, (8 + s) * arch.vocab))


def other_forwards(arch: Arch, cfg: TrainConfig, s: int, lora: LoRAConfig, ta: int) -> tuple[int, str]:
    """The largest forward outside the training step, and what it is (see the module docstring)."""
    length, batch = cfg.max_len, cfg.batch_size_per_gpu
    found = [(nograd_activations(arch, batch * length, s), "evaluation (no grad)")]
    pack = max(cfg.max_tokens_per_forward, length)
    if cfg.PPOTS:
        rows = cfg.num_samples_x0 * (min(length, cfg.ppots_single_token_cap) + cfg.num_samples_t * cfg.num_samples_xt)
        found.append((nograd_activations(arch, min(pack, rows * length), s), "P-POTS estimation (no grad)"))
        if cfg.ppots_realised_draws >= 2:
            found.append((step_activations(arch, batch, length, s, lora, False, ta), "P-POTS realised-variance draws"))
        if cfg.ppots_target == "grad":
            found.append((step_activations(arch, 1, length, s, lora, False, ta), "P-POTS grad target"))
    if cfg.train_mode == "MIRROR":
        rows = 16 * 8 * 3 * 2  # objective.MIRROR_DIAG: sequences x pairs x t values x 2 masks
        found.append((nograd_activations(arch, min(pack, rows * length), s), "MIRROR diagnostic (no grad)"))
    return max(found)


def model_memory(model_cfg: ModelConfig, train_cfg: TrainConfig, *, name_or_path: str = "tiny",
                 vocab_size: Optional[int] = None, precision: Optional[str] = None) -> ModelMemory:
    """The engine's answer to the planner: parameters and activations of this model and objective.

    `precision`: DeepSpeed's mixed precision ("bf16"/"fp16": weights and activations in it), else None (the
    model's `model.dtype`); `vocab_size`: the tokenizer's length, for a tiny model with `model.vocab_size` -1."""
    arch, notes = architecture(model_cfg, name_or_path, vocab_size)
    dtype = PRECISION_DTYPES.get(precision or "", model_cfg.dtype)
    s = DTYPE_BYTES[dtype]
    lora = model_cfg.lora
    # PEFT keeps adapters in float32 on a half-precision base (autocast_adapter_dtype); DeepSpeed's mixed
    # precision casts the whole module, adapters included.
    ta = 4 if lora.r > 0 and precision is None else s
    counts = parameters(arch, lora)
    rows = train_cfg.batch_size_per_gpu * (2 if train_cfg.train_mode == "MIRROR" else 1)
    plain = step_activations(arch, rows, train_cfg.max_len, s, lora, False, ta)
    ckpt = step_activations(arch, rows, train_cfg.max_len, s, lora, True, ta)
    other, what = other_forwards(arch, train_cfg, s, lora, ta)
    return ModelMemory(params=counts["params"], trainable=counts["trainable"],
                       trainable_tensors=counts["trainable_tensors"], weight_bytes=s, weight_dtype=dtype,
                       trainable_bytes=ta,
                       quantizable=counts["quantizable"], largest_unit=counts["block"], hidden=arch.d,
                       activations_plain=plain, activations_checkpointed=ckpt,
                       checkpointing=model_cfg.gradient_checkpointing, other_forwards=other, other_what=what,
                       rows=rows, tokens=rows * train_cfg.max_len, notes=tuple(notes),
                       four_bit=model_cfg.load_in_4bit)


def memory_knobs(flat: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
    """Changes that lower this engine's memory, per kind, least drastic first (the planner's suggestions)."""
    knobs: list[list[dict[str, Any]]] = []
    if not flat.get("model.gradient_checkpointing"):
        knobs.append([{"model.gradient_checkpointing": True}])
    r = int(flat.get("model.lora.r") or 0)
    ranks = [64, 16, 8] if r == 0 else [v for v in (r // 2, r // 4) if v >= 1]
    if ranks:
        knobs.append([{"model.lora.r": v} for v in ranks])
    return knobs


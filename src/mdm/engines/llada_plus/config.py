"""The LLaDA+ engine's config sections: `train` (the seed's keys), `model`, `sampler` and `likelihood`.

`train.PPOTS: true` turns on importance sampling over t: before training, `w(t)` = sqrt(E[l^2|t]) is
measured (ppots/measure.py) on `num_samples_t` grid points (`ppots_grid`: sqrt = t = u^2, dense near 0,
or uniform) from `num_samples_x0` sequences x `num_samples_xt` masks with >= 2 masked tokens, plus the
exact one-masked-token part from up to `ppots_single_token_cap` single-token forwards per sequence;
`ppots_target` loss or grad (E[||g||^2|t]) picks which second moment; a density of family `p_model`
(default EPRS, which follows the t^-1/2 rise of w near 0) is fitted, mixed with uniform by `mix_uniform`,
and each sampled t is weighted by 1/p(t) (capped at `max_is_weight`). The objective logs R = Var(P-POTS)
/ Var(uniform t) of the fit and of the optimum (ppots/R_fit_*, R_star_*), and the realised ratios from
`ppots_realised_draws` gradient draws with each sampler on one micro-batch (ppots/realised_*_R; 0 = off;
at most the last 20M parameters). Those knobs have no effect when
PPOTS is off, nor `model.lora.alpha`, `dropout` and `target_modules` when `model.lora.r` is 0: `CONDITIONS`
says so once, for the platform's sweeps (deduplication) and tracking (inert params) alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional

from mdm.platform.fields import choice, registry_choice
from mdm.platform.engine_api import BaseTrainConfig, Not


# "KEY only matters when OTHER == VALUE" (the EngineSpec's `conditions`).
_PPOTS_KNOBS = ("p_model", "num_samples_x0", "num_samples_t", "num_samples_xt", "n_starts", "max_is_weight",
                "mix_uniform", "ppots_reestimate_steps", "ppots_grid", "ppots_target", "ppots_single_token_cap",
                "ppots_realised_draws")
CONDITIONS: dict[str, dict[str, Any]] = {f"train.{k}": {"train.PPOTS": True} for k in _PPOTS_KNOBS}
# LoRA's other keys do nothing with `model.lora.r` 0 (off: a full fine-tune).
CONDITIONS.update({f"model.lora.{k}": {"model.lora.r": Not(0)} for k in ("alpha", "dropout", "target_modules")})
# The keys `label` names (the EngineSpec's `label_keys`): the objective being compared.
LABEL_KEYS = ("train.train_mode", "train.PPOTS", "train.p_model", "rl.logp_estimator", "rl.stratify_t")


def label(flat: Mapping[str, Any]) -> str:
    """The objective's short name from a flattened config: Standard, MIRROR, PPOTS(EPR), MIRROR+PPOTS(EPR); with
    `rl.enabled`, GRPO and its policy log-probability estimator: GRPO(d1), GRPO(coupled+strat)."""
    if flat.get("rl.enabled"):
        return f"GRPO({flat.get('rl.logp_estimator', 'd1')}{'+strat' if flat.get('rl.stratify_t') else ''})"
    parts = ["MIRROR"] if flat.get("train.train_mode") == "MIRROR" else []
    if flat.get("train.PPOTS"):
        parts.append(f"PPOTS({flat.get('train.p_model')})")
    return "+".join(parts) or "Standard"


def forwards_per_sequence(flat: Mapping[str, Any]) -> int:
    """Model forward rows per training sequence: MIRROR runs both masks of a sequence (2), Normal one."""
    return 2 if flat.get("train.train_mode") == "MIRROR" else 1


@dataclass
class TrainConfig(BaseTrainConfig):
    train_mode: str = choice("Normal", ("Normal", "MIRROR"))
    PPOTS: bool = False
    p_model: str = registry_choice("EPRS", "p_models")
    num_samples_x0: int = 32
    num_samples_t: int = 16
    num_samples_xt: int = 4
    n_starts: int = 8
    max_is_weight: float = 10.0
    mix_uniform: float = 0.1
    max_tokens_per_forward: int = 16384
    mask_eps: float = 1e-3
    ppots_reestimate_steps: int = 0
    ppots_grid: str = choice("sqrt", ("sqrt", "uniform"))
    ppots_target: str = choice("loss", ("loss", "grad"))
    ppots_single_token_cap: int = 32
    ppots_realised_draws: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.mix_uniform <= 1.0:
            raise ValueError(f"train.mix_uniform must be in [0, 1], got {self.mix_uniform}")
        if self.max_is_weight <= 0:
            raise ValueError(f"train.max_is_weight must be > 0, got {self.max_is_weight}")
        if self.ppots_realised_draws < 0 or self.ppots_realised_draws == 1:
            raise ValueError(f"train.ppots_realised_draws must be 0 (off) or >= 2, got {self.ppots_realised_draws}")
        for key in ("num_samples_x0", "num_samples_t", "num_samples_xt", "n_starts", "max_tokens_per_forward",
                    "ppots_single_token_cap"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")


# LLaDA's attention and MLP projections, by their names in model.py (LLaDABlock): q/k/v, the attention output,
# the SwiGLU gate (ff_proj) and up projections and the MLP output (ff_out; the output head of the same name,
# model.transformer.ff_out, is never adapted).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")


@dataclass
class LoRAConfig:
    """`model.lora`: low-rank adapters through PEFT (lora.py). `r` 0 = off (full fine-tune); `r` > 0 trains
    only rank-`r` adapters on `target_modules` (names of Linear layers in the LLaDA blocks), scaled by
    `alpha` / `r`, with `dropout` on their input; the base weights stay frozen."""

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: List[str] = field(default_factory=lambda: list(LORA_TARGETS))

    def __post_init__(self) -> None:
        if self.r < 0:
            raise ValueError(f"model.lora.r must be >= 0 (0 = off), got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"model.lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        if self.r > 0 and not self.target_modules:
            raise ValueError("model.lora.target_modules is empty; name at least one module, e.g. "
                             f"{list(LORA_TARGETS)}")


@dataclass
class ModelConfig:
    """Architecture of `train.model: tiny` (ignored for a checkpoint, whose config.json wins).

    `vocab_size`, `mask_token_id`, `eos_token_id`, `pad_token_id`: -1 takes them from the tokenizer.
    `trust_remote_code`: off by default; turn on only for other diffusion LMs from a hub whose code you
    trust (their forward must return logits). LLaDA checkpoints load without it.
    `gradient_checkpointing`: recompute each block's activations in backward (memory for time).
    `lora`: low-rank adapters (`LoRAConfig`); off by default.
    `load_in_4bit`: QLoRA: load a pretrained base (`train.model`) with its block weights in 4 bits (bitsandbytes
    NF4, compute in `dtype`, bfloat16 for float32) and train LoRA adapters on it; needs `lora.r` > 0 and a CUDA GPU
    on every worker (on a machine without one: a one-line error before any work). Not run in this project's CI.
    """

    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    mlp_hidden_size: int = 384
    vocab_size: int = -1
    max_sequence_length: int = 2048
    rope_theta: float = 500000.0
    mask_token_id: int = -1
    eos_token_id: int = -1
    pad_token_id: int = -1
    dtype: str = choice("float32", ("float32", "bfloat16", "float16"))
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    load_in_4bit: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.lora, Mapping):  # built from a plain mapping (a logged config's YAML, a model actor)
            self.lora = LoRAConfig(**self.lora)


@dataclass
class SamplerConfig:
    """`name`: llada (reference) or fast (KV cache + threshold parallel decoding). `steps` is the total over
    all blocks. `cache` (fast only): prefix or dual. `threshold`: None commits a fixed count per step.
    `suppress_eos_until_last_block`: EOS (and `eot_token_id`) get -inf logits outside the last block, so they
    are neither predicted nor committed early. `eot_token_id`: a second end token (LLaDA-Instruct's
    <|eot_id|> is 126348), -1 for none. `early_exit` (fast only): stop when every row has an end token with
    only end tokens after it (its text, cut at the first end token, can no longer change). `batch_size`:
    prompts per batched call in `generate`."""

    name: str = registry_choice("llada", "samplers")
    gen_length: int = 128
    block_length: int = 32
    steps: int = 128
    temperature: float = 0.0
    remasking: str = choice("low_confidence", ("low_confidence", "random"))
    cfg_scale: float = 0.0
    threshold: Optional[float] = None
    cache: str = choice("dual", ("prefix", "dual"))
    suppress_eos_until_last_block: bool = False
    eot_token_id: int = -1
    early_exit: bool = True
    batch_size: int = 16

    def __post_init__(self) -> None:
        for key in ("gen_length", "block_length", "steps", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"sampler.{key} must be >= 1, got {getattr(self, key)}")

@dataclass
class LikelihoodConfig:
    """Likelihood scoring (`mdm infer --mode likelihood`, the lm-eval model `mdm`): the Monte Carlo estimate of
    the bound on log p(answer | prompt) (likelihood.py).

    `mc_num`: masks per answer (upstream LLaDA: 128 for most benchmarks; 1 for MMLU-like single-token answers,
    exact then). `cfg_scale`: classifier-free guidance, 0 = none (upstream: 0.5 ARC-C/HellaSwag/PIQA/GPQA, 2.0
    TruthfulQA, 0 WinoGrande). `masks`: auto (enumerate every mask when 2^L - 1 <= mc_num, exact), random or
    enumerate. `max_tokens_per_forward`: tokens per packed forward (padding and CFG copies included): memory.
    `batch_rows`: optional cap on rows per forward (upstream's batch 16). `window` / `context`: rolling
    log-likelihood (perplexity) of long texts: tokens per chunk sequence, and preceding tokens each later chunk
    is conditioned on (likelihood/rolling.py). `answer_window`: 0 scores an answer's tokens alone (base models;
    lm-eval's convention); N > 0 first pads each answer with EOS to N tokens, the layout LLaDA's SFT trains on
    (responses EOS-padded to the answer window, `sampler.gen_length`: experiments/arithmetic.py, LLaDA-Instruct),
    and the padding EOS are scored with it. On the arithmetic demo's model this raised multiple-choice accuracy
    from 52% to 75.5% (arithmetic_mc, 200 held-out problems, mc_num 32, answer_window 16 = its gen_length).
    """

    mc_num: int = 128
    cfg_scale: float = 0.0
    masks: str = choice("auto", ("auto", "random", "enumerate"))
    max_tokens_per_forward: int = 16384
    batch_rows: Optional[int] = None
    window: int = 1024
    context: int = 256
    answer_window: int = 0

    def __post_init__(self) -> None:
        if self.answer_window < 0:
            raise ValueError(f"likelihood.answer_window must be >= 0 (0 = no EOS padding), got {self.answer_window}")
        for key in ("mc_num", "max_tokens_per_forward", "window"):
            if getattr(self, key) < 1:
                raise ValueError(f"likelihood.{key} must be >= 1, got {getattr(self, key)}")
        if self.cfg_scale < 0:
            raise ValueError(f"likelihood.cfg_scale must be >= 0 (0 = no guidance), got {self.cfg_scale}")
        if self.batch_rows is not None and self.batch_rows < 1:
            raise ValueError(f"likelihood.batch_rows must be >= 1 or null, got {self.batch_rows}")
        if not 0 <= self.context < self.window:
            raise ValueError(f"likelihood.context must be in [0, window={self.window}), got {self.context}")

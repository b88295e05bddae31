"""The LLaDA architecture as a transformers model, checkpoint-compatible with GSAI-ML/LLaDA-8B-*.

    from mdm.engines.llada_plus.model import LLaDAModelLM, llada_8b_config
    model = LLaDAModelLM.from_pretrained("path/to/LLaDA-8B-Instruct")     # no trust_remote_code needed
    out = model(input_ids)                                                # out.logits [B, L, V]

(`model_build.build_model` builds one from the `model` config section: tiny random, or a checkpoint.)

Importing this module registers `model_type: llada` with AutoConfig / AutoModel / AutoModelForMaskedLM, so
`AutoModel.from_pretrained(dir)` picks these classes even when the upstream config.json carries `auto_map`.
Parameter names follow the upstream checkpoints (`model.transformer.blocks.{i}.q_proj.weight`, ...).

Attention is bidirectional (masked diffusion), through `scaled_dot_product_attention`. For the samplers'
KV caches, `forward` takes `past_key_values` (per layer, RoPE-rotated keys and values of *other* positions,
attended to in addition to the current tokens) and returns the current tokens' keys/values with `use_cache`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

KV = tuple[torch.Tensor, torch.Tensor]


class LLaDAConfig(PretrainedConfig):
    """The upstream LLaDA config keys (d_model, n_heads, n_layers, mlp_hidden_size, ...); extra upstream keys
    (alibi, init_fn, ...) are kept as attributes so a checkpoint's config.json round-trips."""

    model_type = "llada"

    d_model: int = 4096
    n_heads: int = 32
    n_kv_heads: Optional[int] = None
    n_layers: int = 32
    mlp_ratio: int = 4
    mlp_hidden_size: Optional[int] = 12288
    activation_type: str = "silu"
    block_type: str = "llama"
    rope: bool = True
    rope_theta: float = 500000.0
    rope_full_precision: bool = True
    layer_norm_type: str = "rms"
    rms_norm_eps: float = 1e-5
    max_sequence_length: int = 4096
    vocab_size: int = 126464
    embedding_size: Optional[int] = 126464
    weight_tying: bool = False
    tie_word_embeddings: bool = False
    include_bias: bool = False
    include_qkv_bias: bool = False
    scale_logits: bool = False
    init_std: float = 0.02
    mask_token_id: Optional[int] = 126336
    eos_token_id: Optional[int] = 126081
    pad_token_id: Optional[int] = 126081
    use_cache: bool = False

    def __post_init__(self, **kwargs: object) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.mlp_hidden_size is None:
            self.mlp_hidden_size = self.mlp_ratio * self.d_model
        if self.embedding_size is None:
            self.embedding_size = self.vocab_size
        super().__post_init__(**kwargs)
        self._check_supported()

    def _check_supported(self) -> None:
        # Fail loudly on upstream variants this implementation does not compute (instead of wrong logits).
        unsupported = {"block_type": ("llama",), "activation_type": ("silu",), "layer_norm_type": ("rms",)}
        for key, ok in unsupported.items():
            if getattr(self, key) not in ok:
                raise ValueError(f"LLaDAConfig.{key}={getattr(self, key)!r} is not supported (supported: {ok})")
        for key in ("alibi", "include_bias", "include_qkv_bias", "weight_tying", "scale_logits"):
            if getattr(self, key, False):
                raise ValueError(f"LLaDAConfig.{key}=true is not supported by this implementation")
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"d_model {self.d_model} / n_heads {self.n_heads} / n_kv_heads {self.n_kv_heads} "
                             "must divide evenly")


def llada_8b_config(**overrides: object) -> LLaDAConfig:
    """The GSAI-ML/LLaDA-8B-Base/-Instruct architecture (for benchmarks with random weights)."""
    base: dict[str, object] = dict(
        d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=126464,
        embedding_size=126464, mask_token_id=126336, eos_token_id=126081, pad_token_id=126081,
        rope_theta=500000.0, max_sequence_length=4096, rms_norm_eps=1e-5)
    base.update(overrides)
    return LLaDAConfig(**base)


class LLaDARMSNorm(nn.Module):
    """RMSNorm computed in float32 (as upstream), cast back, then scaled."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, 1, L, head_dim] in float32 for integer positions [B, L] (upstream's half-split layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float)
                                / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq  # [B, L, Dh/2]
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, L, Dh] in float32 and return it in its own dtype."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)


class LLaDABlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: bidirectional attention + SwiGLU MLP, upstream parameter names."""

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        d, h = config.d_model, config.mlp_hidden_size
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.head_dim = d // config.n_heads
        self.attn_norm = LLaDARMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = LLaDARMSNorm(d, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d, h, bias=False)
        self.up_proj = nn.Linear(d, h, bias=False)
        self.ff_out = nn.Linear(h, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                layer_past: Optional[KV] = None, use_cache: bool = False) -> tuple[torch.Tensor, Optional[KV]]:
        b, l, _ = x.shape
        hn = self.attn_norm(x)
        q = self.q_proj(hn).view(b, l, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hn).view(b, l, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hn).view(b, l, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        present = (k, v) if use_cache else None
        if layer_past is not None:  # other positions first; attention is order-free given the mask
            k = torch.cat((layer_past[0].to(k.dtype), k), dim=2)
            v = torch.cat((layer_past[1].to(v.dtype), v), dim=2)
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=False)
        x = x + self.attn_out(att.transpose(1, 2).reshape(b, l, -1))
        hn = self.ff_norm(x)
        x = x + self.ff_out(F.silu(self.ff_proj(hn)) * self.up_proj(hn))
        return x, present


class LLaDATransformer(nn.Module):
    """Holds `transformer.{wte, blocks, ln_f, ff_out}` so parameter names match upstream checkpoints."""

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.embedding_size, config.d_model),
            blocks=nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers)),
            ln_f=LLaDARMSNorm(config.d_model, config.rms_norm_eps),
            ff_out=nn.Linear(config.d_model, config.embedding_size, bias=False),
        ))


@dataclass
class LLaDAOutput(ModelOutput):
    """`logits` [B, L, V]; `past_key_values`: per layer (k, v) [B, H, L, Dh] of the current tokens (use_cache)."""

    logits: Optional[torch.Tensor] = None
    cache: Optional[tuple[KV, ...]] = None  # transformers 5 names this field `cache`; the contract says:

    @property
    def past_key_values(self) -> Optional[tuple[KV, ...]]:
        return self.cache


class LLaDAModelLM(PreTrainedModel):
    """LLaDA mask predictor: tokens -> logits over the vocabulary at every position (no causal mask)."""

    config_class = LLaDAConfig
    config: LLaDAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDABlock"]
    _supports_sdpa = True
    supports_logits_slice = True  # forward(..., logits_slice=...) (other models' samplers fall back)

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__(config)
        self.model = LLaDATransformer(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.transformer.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.transformer.ff_out

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.Tensor] = None, past_key_values: Optional[tuple[KV, ...]] = None,
                past_attention_mask: Optional[torch.Tensor] = None, use_cache: bool = False,
                logits_slice: Optional[slice] = None, **kwargs: object) -> LLaDAOutput:
        """input_ids [B, L]; attention_mask [B, L] (1 = real; pad keys are never attended); position_ids [B, L]
        (default 0..L-1); past_key_values per layer (k, v) [B, H, S, Dh] of other positions, RoPE applied;
        past_attention_mask [B, S]. Returns logits [B, L, V] (+ the current keys/values when use_cache).
        logits_slice: compute logits only for these positions ([B, len, V]); samplers that need one block's
        logits skip the output head elsewhere (for an 8B model, a [16, 320, 126464] tensor)."""
        unknown = {k for k, v in kwargs.items() if v is not None and k not in ("return_dict", "output_attentions",
                                                                                "output_hidden_states")}
        if unknown:
            raise TypeError(f"LLaDAModelLM.forward got unsupported arguments: {sorted(unknown)}")
        b, l = input_ids.shape
        t = self.model.transformer
        if position_ids is None:
            position_ids = torch.arange(l, device=input_ids.device).expand(b, l)
        cos, sin = rope_cos_sin(position_ids, self.config.d_model // self.config.n_heads, self.config.rope_theta)
        attn_mask = _key_mask(attention_mask, past_key_values, past_attention_mask, b, l, input_ids.device)
        x = t.wte(input_ids)
        presents: list[KV] = []
        for i, block in enumerate(t.blocks):
            past = past_key_values[i] if past_key_values is not None else None
            x, present = block(x, cos, sin, attn_mask, layer_past=past, use_cache=use_cache)
            if use_cache:
                presents.append(present)
        if logits_slice is not None:
            x = x[:, logits_slice]
        logits = t.ff_out(t.ln_f(x))
        return LLaDAOutput(logits=logits, cache=tuple(presents) if use_cache else None)


def _key_mask(attention_mask: Optional[torch.Tensor], past: Optional[tuple[KV, ...]],
              past_mask: Optional[torch.Tensor], b: int, l: int, device: torch.device) -> Optional[torch.Tensor]:
    """Boolean SDPA mask [B, 1, 1, S + L] (True = may attend), or None when every key is real (fast path)."""
    if attention_mask is None and past_mask is None:
        return None
    s = past[0][0].shape[2] if past is not None else 0
    cur = attention_mask.bool() if attention_mask is not None else torch.ones(b, l, dtype=torch.bool, device=device)
    if s:
        prev = past_mask.bool() if past_mask is not None else torch.ones(b, s, dtype=torch.bool, device=device)
        cur = torch.cat((prev, cur), dim=1)
    return cur[:, None, None, :]


AutoConfig.register("llada", LLaDAConfig, exist_ok=True)
AutoModel.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
AutoModelForMaskedLM.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)

"""The one way to turn prompts into generated ids and texts, for every engine and every caller.

    from mdm.platform.infer.generation.generate import generate
    out = generate(model, "llada_plus", cfg.sampler, ["What is 2 plus 3?"], tokenizer=tok)
    out.texts[0]          # decoded, cut at the first end token (EOS, or the engine's other end ids)
    out.ids[0]            # the generated ids before that end token
    out.nfe               # model forward passes over all batches
    generate(model, spec, cfg.sampler, [[12, 7, 3]])          # prompt ids in: ids out (texts when tokenizer=)

`mdm generate`, the batch-inference actors, experiments/arithmetic.py and bench/sampler_speed.py all call
this. Text prompts are laid out as training lays them out (`mdm.platform.prompts`: the chat template when the
tokenizer has one, else text + newline; `chat_template=False` sends the text raw); a task with its own
layout encodes its prompts itself (`Task.encode_prompts`) and passes ids. The engine (found in the `engines`
registry when given by name) supplies the sampler call and the end tokens; prompts are sampled
`sampler_cfg.batch_size` at a time, grouped by length so the left padding stays small. Samplers give each
row its own random stream, so the grouping never changes a result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

from mdm.platform.engine_api import EngineSpec
from mdm.platform.prompts import encode_prompt
from mdm.platform.registry import get_registry

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    import torch
    from mdm.platform.engine_api import SamplerSection


@dataclass
class Generation:
    """`ids[i]`: prompt i's generated ids, cut before the first end token; `texts[i]`: them decoded (None
    without a tokenizer); `nfe`: model forward passes over all batches."""

    ids: list[list[int]]
    texts: Optional[list[str]]
    nfe: int


def cut_at_end(ids: Sequence[int], ends: Sequence[int]) -> list[int]:
    """`ids` up to (not including) the first id in `ends`."""
    out: list[int] = []
    for t in ids:
        if t in ends:
            break
        out.append(int(t))
    return out


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], chat_template: bool = True) -> list[list[int]]:
    """Prompt ids as training lays them out (`mdm.platform.prompts`), or the raw text with chat_template=False."""
    if chat_template:
        return [encode_prompt(tokenizer, p) for p in prompts]
    return [list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]


def generate(model: torch.nn.Module, engine: str | EngineSpec, sampler_cfg: SamplerSection, prompts: Sequence[str] | Sequence[Sequence[int]],
             *, tokenizer: PreTrainedTokenizerBase = None, generator: torch.Generator = None, chat_template: bool = True) -> Generation:
    """Sample a continuation of every prompt (texts need `tokenizer`; id lists are used as they are)."""
    spec = get_registry("engines").get(engine) if isinstance(engine, str) else engine
    if prompts and isinstance(prompts[0], str):
        if tokenizer is None:
            raise ValueError("generate: text prompts need a tokenizer (or pass prompt ids)")
        ids = encode_prompts(tokenizer, list(prompts), chat_template)  # type: ignore[arg-type]
    else:
        ids = [[int(t) for t in p] for p in prompts]
    if sampler_cfg.batch_size < 1:
        raise ValueError(f"sampler.batch_size must be >= 1, got {sampler_cfg.batch_size}")
    raw: list[list[int]] = [[] for _ in ids]
    nfe = 0
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    was_training = model.training
    model.eval()
    try:
        for k in range(0, len(order), sampler_cfg.batch_size):
            chunk = order[k:k + sampler_cfg.batch_size]
            res = spec.sample(model, [ids[i] for i in chunk], sampler_cfg, generator)
            if len(res.tokens) != len(chunk):
                raise RuntimeError(f"sampler {sampler_cfg.name!r} returned {len(res.tokens)} outputs for "
                                   f"{len(chunk)} prompts")
            nfe += int(res.nfe)
            for i, toks in zip(chunk, res.tokens):
                raw[i] = [int(t) for t in toks]
    finally:
        model.train(was_training)
    ends = spec.end_token_ids(model, sampler_cfg)
    cut = [cut_at_end(r, ends) for r in raw]
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in cut] if tokenizer is not None else None
    return Generation(ids=cut, texts=texts, nfe=nfe)

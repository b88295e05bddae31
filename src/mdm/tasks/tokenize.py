"""Tokenizing task examples for masked diffusion training, and a small BPE for offline runs.

    tok = load_tokenizer("GSAI-ML/LLaDA-8B-Instruct")      # any AutoTokenizer id or local directory
    ids, prompt_length = encode_example(tok, prompt, response)
    prompt_ids = encode_prompt(tok, prompt)                 # == ids[:prompt_length], for inference

    path = train_bpe(texts, "data/tok", vocab_size=1024)    # offline: byte-level BPE, saved for AutoTokenizer

Layout: with a chat template, the prompt is the template applied to one user turn with the generation
prompt (the assistant header); without one, it is the prompt text followed by a newline. The response
follows, then EOS. Prompt and response are tokenized separately and concatenated, so the prompt ids are
exactly what `encode_prompt` gives at inference time (no BPE merge across the boundary).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Optional

from mdm.platform.prompts import PLAIN_SEPARATOR, encode_prompt, has_chat_template, render_prompt  # noqa: F401

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
MASK_TOKEN = "<|mdm_mask|>"  # LLaDA's mask token spelling
# A minimal chat template in LLaDA's layout, for testing and for tiny runs that want one.
SIMPLE_CHAT_TEMPLATE = (
    "{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHAT_SPECIAL_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """`AutoTokenizer.from_pretrained(name_or_path)`, with an error that says what was tried."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        where = "local directory" if os.path.isdir(name_or_path) else "hub id (or path)"
        raise OSError(f"cannot load tokenizer from {where} {name_or_path!r}: {e}") from e


def eos_id(tokenizer: Any) -> int:
    """The tokenizer's EOS id; a clear error when it has none (the response must end with EOS)."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no eos_token; "
                         "set one (e.g. tokenizer.eos_token = '<|endoftext|>') before preprocessing")
    return int(tokenizer.eos_token_id)


def encode_example(tokenizer: Any, prompt: str, response: str) -> tuple[list[int], int]:
    """(input_ids, prompt_length): prompt ids, then response ids, then EOS."""
    p = encode_prompt(tokenizer, prompt)
    r = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    return p + r + [eos_id(tokenizer)], len(p)


def encode_batch(tokenizer: Any, prompts: list[str], responses: list[str]) -> list[tuple[list[int], int]]:
    """`encode_example` over a batch, tokenizing in one call per side (fast tokenizers run it in Rust)."""
    eos = eos_id(tokenizer)
    p_ids = tokenizer([render_prompt(tokenizer, p) for p in prompts], add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    return [(list(p) + list(r) + [eos], len(p)) for p, r in zip(p_ids, r_ids)]


def train_bpe(texts: Iterable[str], out_dir: str, vocab_size: int = 1024,
              chat_template: Optional[str] = None, min_frequency: int = 2) -> str:
    """Train a byte-level BPE on `texts` and save it as a PreTrainedTokenizerFast in `out_dir`.

    Digits are split one per token (small models learn arithmetic far more easily). The special tokens
    are EOS `<|endoftext|>`, pad `<|pad|>` and mask `<|mdm_mask|>` (ids 0, 1, 2); with `chat_template`
    (e.g. SIMPLE_CHAT_TEMPLATE) the template is saved too and its header tokens are added as specials.
    Returns `out_dir`; `AutoTokenizer.from_pretrained(out_dir)` loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [EOS_TOKEN, PAD_TOKEN, MASK_TOKEN] + (list(CHAT_SPECIAL_TOKENS) if chat_template else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                   mask_token=MASK_TOKEN, clean_up_tokenization_spaces=False)
    if chat_template:
        fast.add_special_tokens({"additional_special_tokens": list(CHAT_SPECIAL_TOKENS)})
        fast.chat_template = chat_template
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return str(out_dir)

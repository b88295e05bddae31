"""Tokenizer pieces for task data: the special tokens, EOS lookup, and a small BPE for offline runs.

    path = train_bpe(texts, "data/tok", vocab_size=1024)    # offline: byte-level BPE, saved for AutoTokenizer
    eos_id(tokenizer)                                       # the id every training response ends with

How a prompt and its response become a training row is the task's (`Task.encode_examples`, whose prompt
part is exactly `Task.encode_prompts`, the ids inference conditions on).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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


def eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's EOS id; a clear error when it has none (the response must end with EOS)."""
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no eos_token; "
                         "set one (e.g. tokenizer.eos_token = '<|endoftext|>') before preprocessing")
    return int(tokenizer.eos_token_id)


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

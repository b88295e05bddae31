"""The prompt layout shared by training (tasks) and sampling (engines), so both condition on the same ids.

    ids = encode_prompt(tokenizer, "What is 2 plus 3?")

With a chat template, the prompt is the template applied to one user turn with the generation prompt (the
assistant header); without one, it is the prompt text followed by a newline. Lives in platform because
engines may not import tasks (docs/design.md) and both need exactly this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PLAIN_SEPARATOR = "\n"


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The prompt as text: the chat template over one user turn with the generation prompt, or
    `prompt + "\\n"` when the tokenizer has no template."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + PLAIN_SEPARATOR


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of `render_prompt(tokenizer, prompt)` (special tokens come from the template text only)."""
    return list(tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"])

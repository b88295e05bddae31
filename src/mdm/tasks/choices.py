"""Multiple choice: the candidate continuations of an example, and picking one by likelihood.

    from mdm.tasks.choices import Choices, pick
    ch = task.choices(example)          # Choices(texts=("3", "4", "5", "6"), gold=1), or None: not multiple choice
    pick(logliks=[-4.1, -2.0, -2.2, -3.0], texts=ch.texts)     # (1, 1): argmax, and argmax per character
    task.score_choices(ch, logliks)     # {"acc": 1.0, "acc_norm": 1.0, "pred": 1, "pred_norm": 1}

A choice is scored by log p(choice | prompt) (for a diffusion LM a Monte Carlo lower bound, see the engine's
likelihood section) with the prompt laid out as the task lays it out (`Task.encode_prompts`) and the choice text
tokenized on its own, with nothing in between: a task that wants a separator puts it in the choice texts.
`acc` takes the argmax of the log-likelihoods; `acc_norm` the argmax of log-likelihood per character of the
choice text, as lm-eval's `acc_norm` (which divides by the length of the continuation string). Ties go to the
first choice, as numpy's argmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Choices:
    """`texts`: the candidate continuations (>= 2, distinct); `gold`: the index of the right one."""

    texts: tuple[str, ...]
    gold: int

    def __post_init__(self) -> None:
        if len(self.texts) < 2:
            raise ValueError(f"a multiple-choice example needs >= 2 choices, got {list(self.texts)}")
        if len(set(self.texts)) != len(self.texts):
            raise ValueError(f"choices must be distinct, got {list(self.texts)}")
        if not 0 <= self.gold < len(self.texts):
            raise ValueError(f"gold index {self.gold} is not one of the {len(self.texts)} choices")


def pick(logliks: Sequence[float], texts: Sequence[str]) -> tuple[int, int]:
    """(argmax of `logliks`, argmax of logliks[i] / len(texts[i])); the first index wins ties."""
    if len(logliks) != len(texts) or not texts:
        raise ValueError(f"{len(logliks)} log-likelihoods for {len(texts)} choices")
    best = max(range(len(texts)), key=lambda i: (logliks[i], -i))
    norm = [ll / max(1, len(t)) for ll, t in zip(logliks, texts)]
    best_norm = max(range(len(texts)), key=lambda i: (norm[i], -i))
    return best, best_norm

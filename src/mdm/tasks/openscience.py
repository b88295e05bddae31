"""`openscience`: science reasoning from `nvidia/OpenScienceReasoning-2` (`input` / `output` fields).

    task = OpenScience(data_dir="data/osr")        # local train.jsonl / test.jsonl of {"input", "output"}
    task = OpenScience(source="hub")               # hub: the dataset's train split, a fixed 1% held out as test
    ex = next(task.examples("test"))               # prompt = input, response = output, gold_raw = output
    task.score("... so the answer is \\boxed{C}", ex.gold_raw)

Multiple-choice answers are letters: extraction reads the last `\\boxed{X}`, else "answer is X" /
"Answer: X", else a line that is just the letter. When the gold has no letter (an open question), the
free-form rule of `hitab` applies to both sides.

Scored by likelihood (`mdm infer --mode likelihood --task openscience`), a question whose input lists lettered
options ("A) ...", "(B) ...", "C. ...", "D: ..." at the start of a line) and whose gold names one of them is a
multiple-choice example: its choices are the option letters ("A", "B", ...), scored after the prompt as MMLU is
(one-token answers: exact with `likelihood.mc_num: 1`). Open questions have no choices there.

The data cannot ship with mdm: without a data_dir (`data.task_data_dir`) or `data.source: hub`, reading
a split fails at once saying what to download. On the hub the dataset has only a train split; `test` is
the rows whose input hashes into the held-out fraction (`test_fraction`, stable across runs and machines),
`train` the others, so they never overlap.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Iterator, Optional

from mdm.tasks import answers
from mdm.tasks.base import Example, Task, register_task
from mdm.tasks.choices import Choices
from mdm.tasks.sources import task_rows

DOWNLOAD = "nvidia/OpenScienceReasoning-2 (https://huggingface.co/datasets/nvidia/OpenScienceReasoning-2)"
_OPTION = re.compile(r"^\s*\(?([A-J])[).:]\s+\S", re.MULTILINE)


def in_holdout(text: str, fraction: float) -> bool:
    """Stable membership of `text` in a held-out fraction (blake2b of the text, not Python's hash)."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")
    return h / 2**64 < fraction


@register_task
class OpenScience(Task):
    name = "openscience"
    splits = ("train", "test")
    hub_id = "nvidia/OpenScienceReasoning-2"

    def __init__(self, data_dir: Optional[str] = None, test_fraction: float = 0.01, source: str = "auto") -> None:
        super().__init__(data_dir, source)
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"openscience test_fraction must be in (0, 1), got {test_fraction}")
        self.test_fraction = test_fraction

    def load_split(self, split: str) -> Iterator[dict[str, Any]]:
        def hub() -> Iterator[dict[str, Any]]:
            from datasets import load_dataset

            want_test = split == "test"
            for row in load_dataset(self.hub_id, split="train", streaming=True):
                if in_holdout(str(row["input"]), self.test_fraction) == want_test:
                    yield row

        yield from task_rows(self, split, ("input", "output"), hub=hub, download=DOWNLOAD)

    def to_example(self, raw: dict[str, Any], index: int) -> Example:
        output = str(raw["output"])
        return Example(prompt=str(raw["input"]), response=output, gold_raw=output,
                       id=str(raw.get("id", f"{self.name}-{index}")))

    def extract(self, text: str) -> Optional[str]:
        return answers.extract_choice(text) or answers.extract_freeform(text)

    def score(self, prediction_text: str, gold_raw: str) -> float:
        gold_letter = answers.extract_choice(gold_raw)
        if gold_letter is not None:  # multiple choice: compare letters only
            return 1.0 if answers.extract_choice(prediction_text) == gold_letter else 0.0
        pred, gold = answers.extract_freeform(prediction_text), answers.extract_freeform(gold_raw)
        return 1.0 if pred is not None and gold is not None and answers.answers_match(pred, gold) else 0.0

    def choices(self, example: Example) -> Optional[Choices]:
        """The option letters listed in the prompt, in order, and the gold letter's index; None for an open
        question (fewer than two options, or a gold that names none of them)."""
        letters = list(dict.fromkeys(_OPTION.findall(example.prompt)))
        gold = answers.extract_choice(example.gold_raw)
        if len(letters) < 2 or gold not in letters:
            return None
        return Choices(tuple(letters), letters.index(gold))

"""GSM8K grade-school math: the copy shipped in the package, a local copy, or `openai/gsm8k` from the hub.

    task = GSM8K()                                    # the package's copy: data_files/gsm8k (MIT, offline)
    task = GSM8K(data_dir="../shared/data/gsm8k")    # train.jsonl / test.jsonl of {"question", "answer"}
    task = GSM8K(source="hub")                        # datasets.load_dataset("openai/gsm8k", "main")
    ex = next(task.examples("test"))                  # prompt = question, response = worked answer
    task.gold(ex.gold_raw)                            # "18": the number after "####", commas stripped
    task.score("... #### 18", ex.gold_raw)            # 1.0

The shipped copy is the 7,473 train / 1,319 test rows of openai/gsm8k "main", gzipped, with OpenAI's MIT
licence beside it (`mdm.tasks.sources` has the order in which the sources are tried).
The calculator annotations `<<16-3-4=9>>` are removed from training responses (`keep_calculator=True`
keeps them); the gold text is the original answer. Predictions are read with `answers.extract_numeric`:
`####` answer, then `\\boxed{}`, then the last number.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Optional

from mdm.tasks import answers
from mdm.tasks.base import Example, Task, register_task
from mdm.tasks.sources import iter_local_split, task_rows  # noqa: F401  (iter_local_split: older imports)

_CALC = re.compile(r"<<[^>]*>>")
DOWNLOAD = "GSM8K (openai/gsm8k, config main, https://huggingface.co/datasets/openai/gsm8k)"


@register_task
class GSM8K(Task):
    name = "gsm8k"
    splits = ("train", "test")
    hub_id = ("openai/gsm8k", "main")

    def __init__(self, data_dir: Optional[str] = None, keep_calculator: bool = False, source: str = "auto") -> None:
        super().__init__(data_dir, source)
        self.keep_calculator = keep_calculator

    def load_split(self, split: str) -> Iterator[dict[str, Any]]:
        def hub() -> Any:
            from datasets import load_dataset

            return load_dataset(*self.hub_id, split=split)

        yield from task_rows(self, split, ("question", "answer"), hub=hub, download=DOWNLOAD)

    def to_example(self, raw: dict[str, Any], index: int) -> Example:
        answer = str(raw["answer"])
        response = answer if self.keep_calculator else _CALC.sub("", answer)
        return Example(prompt=str(raw["question"]).strip(), response=response.strip(), gold_raw=answer,
                       id=str(raw.get("id", f"{self.name}-{index}")))

    def gold(self, gold_raw: str) -> Optional[str]:
        """The number after `####` (commas stripped); falls back to the generic extraction."""
        after = answers.hash_answer(gold_raw)
        num = answers.normalize_number(after) if after else None
        return num if num is not None else answers.extract_numeric(gold_raw)

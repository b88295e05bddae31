"""GSM8K grade-school math: `openai/gsm8k` ("main") from the hub, or a local copy.

    task = GSM8K(data_dir="../shared/data/gsm8k")    # train.jsonl / test.jsonl of {"question", "answer"}
    task = GSM8K()                                    # datasets.load_dataset("openai/gsm8k", "main")
    ex = next(task.examples("test"))                  # prompt = question, response = worked answer
    task.gold(ex.gold_raw)                            # "18": the number after "####", commas stripped
    task.score("... #### 18", ex.gold_raw)            # 1.0

The calculator annotations `<<16-3-4=9>>` are removed from training responses (`keep_calculator=True`
keeps them); the gold text is the original answer. Predictions are read with `answers.extract_numeric`:
`####` answer, then `\\boxed{}`, then the last number.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, Optional

from mdm.tasks import answers
from mdm.tasks.base import Example, Task, register_task
from mdm.tasks.jsonl import iter_jsonl, require_keys

_CALC = re.compile(r"<<[^>]*>>")


def iter_local_split(task: Task, split: str, keys: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Stream `{data_dir}/{split}.jsonl`, checking each line has `keys` (errors name the file and line)."""
    path = Path(task.data_dir) / f"{split}.jsonl"
    if not path.is_file():
        present = sorted(p.name for p in Path(task.data_dir).glob("*.jsonl")) if Path(task.data_dir).is_dir() else []
        raise FileNotFoundError(f"task {task.name!r}: {path} does not exist (data_dir {task.data_dir} must hold "
                                f"{', '.join(s + '.jsonl' for s in task.splits)}; found: {', '.join(present) or 'none'})")
    for lineno, obj in iter_jsonl(path):
        require_keys(obj, keys, str(path), lineno)
        yield obj


@register_task
class GSM8K(Task):
    name = "gsm8k"
    splits = ("train", "test")
    hub_id = ("openai/gsm8k", "main")

    def __init__(self, data_dir: Optional[str] = None, keep_calculator: bool = False) -> None:
        super().__init__(data_dir)
        self.keep_calculator = keep_calculator

    def load_split(self, split: str) -> Iterator[dict[str, Any]]:
        self.check_split(split)
        if self.data_dir:
            yield from iter_local_split(self, split, ("question", "answer"))
            return
        from datasets import load_dataset

        yield from load_dataset(*self.hub_id, split=split)

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

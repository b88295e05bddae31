"""`hitab`: table question answering in the seed's format, `{"prompt", "response"}` JSONL.

    task = HiTab(data_dir="data/hitab")        # train.jsonl / test.jsonl, one {"prompt", "response"} a line
    ex = next(task.examples("test"))           # prompt and response as given; gold_raw = the response
    task.score("... The answer is 12.5", ex.gold_raw)

HiTab has no hub copy in the seed's format, so a data_dir is required. Answers are free-form: the last
`\\boxed{}`, else `####`, else the text after "answer is"/"Answer:", else the last line; numbers compare
numerically (commas, `$`, `%` ignored), other answers as normalised text.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

from mdm.tasks import answers
from mdm.tasks.base import Example, Task, register_task
from mdm.tasks.gsm8k import iter_local_split


@register_task
class HiTab(Task):
    name = "hitab"
    splits = ("train", "test")

    def load_split(self, split: str) -> Iterator[dict[str, Any]]:
        self.check_split(split)
        if not self.data_dir:
            raise ValueError(f"task {self.name!r} needs a data_dir (--data_dir / data.task_data_dir) holding "
                             'train.jsonl and test.jsonl with one {"prompt": ..., "response": ...} a line')
        yield from iter_local_split(self, split, ("prompt", "response"))

    def to_example(self, raw: dict[str, Any], index: int) -> Example:
        response = str(raw["response"])
        return Example(prompt=str(raw["prompt"]), response=response, gold_raw=str(raw.get("answer", response)),
                       id=str(raw.get("id", f"{self.name}-{index}")))

    def extract(self, text: str) -> Optional[str]:
        return answers.extract_freeform(text)

"""`hitab`: table question answering in the seed's format, `{"prompt", "response"}` JSONL.

    task = HiTab(data_dir="data/hitab")        # train.jsonl / test.jsonl, one {"prompt", "response"} a line
    ex = next(task.examples("test"))           # prompt and response as given; gold_raw = the response
    task.score("... The answer is 12.5", ex.gold_raw)

HiTab has no hub copy in the seed's format and cannot ship with mdm, so a data_dir
(`data.task_data_dir`) is required; without one, reading a split fails at once saying what to download.
Answers are free-form: the last `\\boxed{}`, else `####`, else the text after "answer is"/"Answer:", else
the last line; numbers compare numerically (commas, `$`, `%` ignored), other answers as normalised text.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

from mdm.tasks import answers
from mdm.tasks.base import Example, Task, register_task
from mdm.tasks.sources import task_rows

DOWNLOAD = "HiTab (https://github.com/microsoft/HiTab) converted to the seed's prompt/response format"


@register_task
class HiTab(Task):
    name = "hitab"
    splits = ("train", "test")

    def load_split(self, split: str) -> Iterator[dict[str, Any]]:
        yield from task_rows(self, split, ("prompt", "response"), hub=None, download=DOWNLOAD)

    def to_example(self, raw: dict[str, Any], index: int) -> Example:
        response = str(raw["response"])
        return Example(prompt=str(raw["prompt"]), response=response, gold_raw=str(raw.get("answer", response)),
                       id=str(raw.get("id", f"{self.name}-{index}")))

    def extract(self, text: str) -> Optional[str]:
        return answers.extract_freeform(text)

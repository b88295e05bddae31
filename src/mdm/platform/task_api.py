"""What the platform calls on a task pack (the `tasks` registry's objects), as a typing Protocol.

The platform never imports the tasks package (the layers contract): it gets a pack from the registry,
`get_registry("tasks").get(name)(data_dir=..., source=...)`, and calls only what `TaskPack` lists here.
`mdm.tasks.base.Task` implements it; a user's task pack may subclass that or implement these members.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Optional, Protocol, Sequence

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TaskExample(Protocol):
    """One evaluation item: the prompt text, the reference response, the raw gold answer and an id."""

    prompt: str
    response: str
    gold_raw: str
    id: str


class TaskPack(Protocol):
    name: str
    splits: tuple[str, ...]
    multiple_choice: bool

    def load_split(self, split: str) -> Iterator[dict[str, object]]: ...

    def to_example(self, raw: dict[str, object], index: int) -> TaskExample: ...

    def examples(self, split: str, limit: Optional[int] = None) -> Iterator[TaskExample]: ...

    def encode_prompts(self, tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]: ...

    def encode_examples(self, tokenizer: PreTrainedTokenizerBase, examples: list[TaskExample]
                        ) -> list[tuple[list[int], int]]: ...

    def extract(self, text: str) -> Optional[str]: ...

    def score(self, prediction_text: str, gold_raw: str) -> float: ...

    def choices(self, example: TaskExample) -> Optional[object]: ...

    def score_choices(self, choices: object, logliks: list[float]) -> dict[str, float]: ...

    def aggregate(self, scores: Sequence[float]) -> dict[str, float]: ...

"""The Task contract every task pack implements, and the `Example` it produces.

A task pack is a `Task` subclass registered by name in the `tasks` registry:

    from mdm.tasks.base import Task, Example, register_task

    @register_task
    class MyTask(Task):
        name = "my_task"
        splits = ("train", "test")
        def load_split(self, split): ...          # raw dicts, streamed
        def to_example(self, raw, index): ...     # -> Example(prompt, response, gold_raw, id)
        def extract(self, text): ...              # answer string or None

    task = get_registry("tasks").get("my_task")(data_dir="...")
    for ex in task.examples("test"): ...

`score` compares extracted answers with `answers_match` (numbers numerically, strings normalised);
`aggregate` turns per-example scores into {"accuracy", "n", "correct"}. Users' own packs register the same
way and are imported with `--auto_import my_module`.

Multiple choice (scored by likelihood: `mdm infer --mode likelihood`, see `mdm.tasks.choices`): a task whose
examples have candidate answers overrides `choices(example) -> Choices(texts, gold)` (default None: not a
multiple-choice example) and sets `multiple_choice = True` when likelihood is its default way to be evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Optional

from mdm.platform.prompts import render_prompt
from mdm.platform.registry import get_registry
from mdm.tasks import answers
from mdm.tasks.sources import check_source
from mdm.tasks.choices import Choices, pick

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TASKS = get_registry("tasks")


@dataclass(frozen=True)
class Example:
    """One task example: the prompt shown to the model, the target response trained on, the raw gold
    answer text the scorer reads (`task.gold(gold_raw)` extracts the answer) and a stable id."""

    prompt: str
    response: str
    gold_raw: str
    id: str


class UnknownSplitError(ValueError):
    """A split the task does not have; the message lists the ones it has."""


class Task:
    """Base class of task packs. Subclasses set `name`, `splits` and implement `load_split`,
    `to_example` and (unless the numeric default fits) `extract`."""

    name: str = ""
    splits: tuple[str, ...] = ("train", "test")
    multiple_choice: bool = False  # True: `mdm infer` scores it by likelihood unless told otherwise

    def __init__(self, data_dir: Optional[str] = None, source: str = "auto") -> None:
        # Where raw rows come from (`mdm.tasks.sources`): data_dir wins, then the hub when source="hub",
        # then a copy shipped in the package.
        self.data_dir, self.source = data_dir, check_source(source)

    # ------------------------------------------------------------------ data
    def check_split(self, split: str) -> None:
        """Raise UnknownSplitError unless `split` is one of `self.splits`."""
        if split not in self.splits:
            raise UnknownSplitError(f"task {self.name!r} has no split {split!r}; its splits: "
                                    f"{', '.join(self.splits)}")

    def load_split(self, split: str) -> Iterator[dict[str, Any]]:
        """Stream the raw examples of `split` (dicts in the task's source format)."""
        raise NotImplementedError

    def to_example(self, raw: dict[str, Any], index: int) -> Example:
        """Turn raw example number `index` of a split into an `Example`."""
        raise NotImplementedError

    def examples(self, split: str, limit: Optional[int] = None) -> Iterator[Example]:
        """`to_example` over `load_split(split)`, stopping after `limit` examples when set."""
        for i, raw in enumerate(self.load_split(split)):
            if limit is not None and i >= limit:
                return
            yield self.to_example(raw, i)

    # ------------------------------------------------------------------ tokenization
    # The prompt layout is the task's, used by preprocessing (training rows) and batch inference alike: a
    # task that lays its prompts out differently overrides `prompt_text` and both follow.
    def prompt_text(self, tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
        """The prompt as the model reads it: by default the chat template over one user turn when the
        tokenizer has one, else the text and a newline (`mdm.platform.prompts.render_prompt`)."""
        return render_prompt(tokenizer, prompt)

    def encode_prompts(self, tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> list[list[int]]:
        """Token ids of `prompt_text` for each prompt (one tokenizer call; special tokens only from the text)."""
        texts = [self.prompt_text(tokenizer, p) for p in prompts]
        return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    def encode_prompt(self, tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
        """`encode_prompts` of one prompt."""
        return self.encode_prompts(tokenizer, [prompt])[0]

    def encode_examples(self, tokenizer: PreTrainedTokenizerBase,
                        examples: list[Example]) -> list[tuple[list[int], int]]:
        """Training rows (input_ids, prompt_length): the prompt ids exactly as `encode_prompts` gives them at
        inference, then the response ids, then EOS. Prompt and response are tokenized separately, so no BPE
        merge crosses the boundary."""
        from mdm.tasks.tokenize import eos_id

        eos = eos_id(tokenizer)
        p_ids = self.encode_prompts(tokenizer, [e.prompt for e in examples])
        r_ids = tokenizer([e.response for e in examples], add_special_tokens=False)["input_ids"] if examples else []
        return [(list(p) + list(r) + [eos], len(p)) for p, r in zip(p_ids, r_ids)]

    # ------------------------------------------------------------------ scoring
    def extract(self, text: str) -> Optional[str]:
        """The answer in generated `text` (normalised), or None when there is none."""
        return answers.extract_numeric(text)

    def gold(self, gold_raw: str) -> Optional[str]:
        """The gold answer in `gold_raw` (by default extracted the same way as predictions)."""
        return self.extract(gold_raw)

    def score(self, prediction_text: str, gold_raw: str) -> float:
        """1.0 when the answer extracted from `prediction_text` matches the gold answer, else 0.0."""
        pred = self.extract(prediction_text)
        gold = self.gold(gold_raw)
        if pred is None or gold is None:
            return 0.0
        return 1.0 if answers.answers_match(pred, gold) else 0.0

    def reward(self, prediction_text: str, gold_raw: str, format_reward: float = 0.0) -> float:
        """The reinforcement-learning reward of a completion (`mdm rl`): `score` (exact match of the extracted
        answer), plus `format_reward` when an answer can be extracted at all. A pack may override it."""
        bonus = format_reward if format_reward and self.extract(prediction_text) is not None else 0.0
        return self.score(prediction_text, gold_raw) + bonus

    # ------------------------------------------------------------------ multiple choice
    def choices(self, example: Example) -> Optional[Choices]:
        """The candidate continuations of `example` and the index of the right one, to score by likelihood;
        None when `example` is not a multiple-choice question (the default)."""
        return None

    def score_choices(self, choices: Choices, logliks: list[float]) -> dict[str, float]:
        """{"acc", "acc_norm"} (1.0 / 0.0) and the picked indices {"pred", "pred_norm"} for one example, from the
        log-likelihood of each choice (see `mdm.tasks.choices`)."""
        best, best_norm = pick(logliks, choices.texts)
        return {"acc": float(best == choices.gold), "acc_norm": float(best_norm == choices.gold),
                "pred": best, "pred_norm": best_norm}

    def aggregate(self, scores: list[float]) -> dict[str, float]:
        """{"accuracy": mean score (0.0 when empty), "n": count, "correct": sum}."""
        n = len(scores)
        correct = float(sum(scores))
        return {"accuracy": correct / n if n else 0.0, "n": n, "correct": correct}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(data_dir={self.data_dir!r})"


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register `cls` in the `tasks` registry under `cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} must set a non-empty `name` to be registered")
    return TASKS.register(cls.name, cls)

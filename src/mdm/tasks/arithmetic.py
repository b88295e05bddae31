"""`arithmetic`: a seeded generator of short word problems with integer answers, the offline demo task.

    task = Arithmetic(seed=0, n_train=2000, n_test=200, max_operand=20, ops=("+", "-"))
    next(task.load_split("test"))
    # {"question": "What is 12 plus 7?", "answer": "12 + 7 = 19\\n#### 19", "id": "arithmetic-test-0"}

Problems are (template, operation, a, b) tuples drawn without replacement from the whole problem space
(`space_size()`): the test split is drawn first from `Random(seed)`, then the train split from the rest,
so the two never share a problem and the test split does not change when `n_train` does (`n_train=None`:
every problem the test split leaves). Subtraction keeps a >= b and multiplication caps operands at 12, so
answers are small non-negative integers. Responses use the GSM8K style (`#### N`), so extraction and scoring are GSM8K's. No data_dir and no network needed.

`label_noise` q: noisy demonstrations. Each training problem's response states the answer plus one (in both
places, `a + b = c+1\n#### c+1`) with probability q, drawn per problem from `Random(f"{seed}-noise")`; its gold
answer (`gold_raw`, what scoring and RL rewards read) stays right, and the test split is never noisy. A model
trained on them learns the error (the systematic kind: the same for every problem) that only a verifier, not
more of the same demonstrations, can correct (experiments/rl_arithmetic.py).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Iterator, Optional, Sequence

from mdm.tasks.base import Example, register_task
from mdm.tasks.gsm8k import GSM8K

TEMPLATES = {
    "+": ("What is {a} plus {b}?", "Add {a} and {b}.", "Tom has {a} apples and gets {b} more. How many now?",
          "{a} + {b} = ?"),
    "-": ("What is {a} minus {b}?", "Subtract {b} from {a}.", "Tom has {a} apples and eats {b}. How many left?",
          "{a} - {b} = ?"),
    "*": ("What is {a} times {b}?", "Multiply {a} by {b}.", "There are {a} boxes of {b} pens. How many pens?",
          "{a} * {b} = ?"),
}
MUL_MAX = 12  # keeps products (and the answer vocabulary) small


@register_task
class Arithmetic(GSM8K):
    name = "arithmetic"
    splits = ("train", "test")

    def __init__(self, data_dir: Optional[str] = None, seed: int = 0, n_train: Optional[int] = 2000, n_test: int = 200,
                 max_operand: int = 20, ops: Sequence[str] = ("+", "-"), source: str = "auto",
                 label_noise: float = 0.0) -> None:
        super().__init__(data_dir=None, keep_calculator=True)
        del data_dir, source  # generated: a data_dir or the hub has nothing to offer
        bad = [o for o in ops if o not in TEMPLATES]
        if bad or not ops:
            raise ValueError(f"arithmetic ops must be a non-empty subset of {list(TEMPLATES)}, got {list(ops)}")
        if max_operand < 1 or (n_train is not None and n_train < 0) or n_test < 0:
            raise ValueError("arithmetic needs max_operand >= 1 and n_train, n_test >= 0")
        if not 0.0 <= label_noise <= 1.0:
            raise ValueError(f"arithmetic label_noise must be in [0, 1], got {label_noise}")
        self.label_noise = label_noise
        self.max_operand, self.ops = max_operand, tuple(ops)
        self._facts = [(op, self._fact_count(op)) for op in self.ops]
        self._n_templates = len(TEMPLATES["+"])
        if n_train is None:  # every problem the held-out split leaves
            n_train = max(0, self.space_size() - n_test)
        self.seed, self.n_train, self.n_test = seed, n_train, n_test
        if n_train + n_test > self.space_size():
            raise ValueError(f"arithmetic: n_train + n_test = {n_train + n_test} exceeds the {self.space_size()} "
                             f"distinct problems of max_operand={max_operand}, ops={list(ops)}; raise max_operand")

    # ------------------------------------------------------------------ the problem space
    def _fact_count(self, op: str) -> int:
        m = self.max_operand + 1
        if op == "+":
            return m * m
        if op == "-":
            return m * (m + 1) // 2  # pairs a >= b
        k = min(self.max_operand, MUL_MAX) + 1
        return k * k

    def space_size(self) -> int:
        """Number of distinct problems (templates x operand pairs over the ops)."""
        return self._n_templates * sum(n for _, n in self._facts)

    def problem(self, index: int) -> tuple[str, str, int, int, int]:
        """(question, op, a, b, answer) of problem number `index` in [0, space_size())."""
        template, fact = index % self._n_templates, index // self._n_templates
        for op, n in self._facts:
            if fact < n:
                break
            fact -= n
        if op == "-":
            a = int(((8 * fact + 1) ** 0.5 - 1) // 2)  # triangular decoding: fact -> (a, b <= a)
            while a * (a + 1) // 2 > fact:
                a -= 1
            while (a + 1) * (a + 2) // 2 <= fact:
                a += 1
            b = fact - a * (a + 1) // 2
            ans = a - b
        else:
            k = self.max_operand + 1 if op == "+" else min(self.max_operand, MUL_MAX) + 1
            a, b = divmod(fact, k)
            ans = a + b if op == "+" else a * b
        return TEMPLATES[op][template].format(a=a, b=b), op, a, b, ans

    def _indices(self, split: str) -> list[int]:
        total = self.space_size()
        test = random.Random(self.seed).sample(range(total), self.n_test)
        if split == "test":
            return test
        taken = set(test)
        rng = random.Random(f"{self.seed}-train")
        if self.n_train > (total - self.n_test) // 2:  # dense: shuffle the complement
            rest = [i for i in range(total) if i not in taken]
            rng.shuffle(rest)
            return rest[: self.n_train]
        out: list[int] = []
        while len(out) < self.n_train:  # sparse: rejection sampling stays O(n_train)
            i = rng.randrange(total)
            if i not in taken:
                taken.add(i)
                out.append(i)
        return out

    def load_split(self, split: str) -> Iterator[dict[str, Any]]:
        self.check_split(split)
        noise = random.Random(f"{self.seed}-noise") if split == "train" and self.label_noise else None
        for k, idx in enumerate(self._indices(split)):
            question, op, a, b, ans = self.problem(idx)
            row = {"question": question, "answer": f"{a} {op} {b} = {ans}\n#### {ans}",
                   "id": f"{self.name}-{split}-{k}"}
            if noise is not None and noise.random() < self.label_noise:
                row["shown"] = f"{a} {op} {b} = {ans + 1}\n#### {ans + 1}"  # the demonstration; the answer stays right
            yield row

    def to_example(self, raw: dict[str, Any], index: int) -> Example:
        example = super().to_example(raw, index)
        if "shown" in raw:  # label_noise: a wrong demonstration of a problem whose gold answer stays right
            example = dataclasses.replace(example, response=str(raw["shown"]))
        return example

"""`arithmetic_mc`: the arithmetic problems as multiple choice, the right answer among nearby wrong ones.

    task = ArithmeticMC()                          # the demo's problems: seed 42, operands 0-12, 200 held out
    ex = next(task.examples("test"))               # as `arithmetic`: "What is 12 plus 7?" -> "12 + 7 = 19\\n#### 19"
    task.choices(ex)                               # Choices(texts=("12 + 7 = 17\\n#### 17", "12 + 7 = 19\\n#### 19",
                                                   #                 ...), gold=1)
    mdm infer --task arithmetic_mc --model outputs/arithmetic/model --limit 100    # scored by likelihood

The problems and splits are `arithmetic`'s; the defaults are those of the offline demo
(`experiments/arithmetic.py`: train.seed 42, operands 0-12, + and -, 200 held out, every other problem trained
on), so `mdm infer --task arithmetic_mc --model outputs/arithmetic/model` scores the demo's held-out problems.
Each choice is a whole response in the training format with the answer replaced; the wrong answers are
`n_choices - 1` distinct non-negative numbers within `spread` of the right one, drawn (and all choices
shuffled) by a generator seeded with the task seed and the example id: the same choices on every run and
machine. Chance is 1 / n_choices.
"""

from __future__ import annotations

import random
import re
from typing import Optional, Sequence

from mdm.tasks.arithmetic import Arithmetic
from mdm.tasks.base import Example, register_task
from mdm.tasks.choices import Choices

_GOLD = re.compile(r"(\d+) ([-+*]) (\d+) = (-?\d+)\n#### (-?\d+)")


@register_task
class ArithmeticMC(Arithmetic):
    name = "arithmetic_mc"
    multiple_choice = True

    def __init__(self, data_dir: Optional[str] = None, seed: int = 42, n_train: Optional[int] = None,
                 n_test: int = 200, max_operand: int = 12, ops: Sequence[str] = ("+", "-"), n_choices: int = 4,
                 spread: int = 3) -> None:
        super().__init__(data_dir, seed=seed, n_train=n_train, n_test=n_test, max_operand=max_operand, ops=ops)
        if n_choices < 2 or spread < 1 or n_choices - 1 > spread:
            raise ValueError(f"arithmetic_mc needs n_choices >= 2 and spread >= max(1, n_choices - 1) (there must be "
                             f"enough non-negative wrong answers within spread), got n_choices={n_choices}, "
                             f"spread={spread}")
        self.n_choices, self.spread = n_choices, spread

    def choices(self, example: Example) -> Choices:
        m = _GOLD.fullmatch(example.gold_raw.strip())
        if m is None:
            raise ValueError(f"{self.name} example {example.id}: gold {example.gold_raw!r} is not "
                             f"'A op B = N\\n#### N'")
        a, op, b, ans = m.group(1), m.group(2), m.group(3), int(m.group(4))
        rng = random.Random(f"{self.seed}-{example.id}")
        wrong = [x for x in range(ans - self.spread, ans + self.spread + 1) if x != ans and x >= 0]
        answers = [ans] + rng.sample(wrong, self.n_choices - 1)
        rng.shuffle(answers)
        return Choices(tuple(f"{a} {op} {b} = {x}\n#### {x}" for x in answers), answers.index(ans))

"""Multiple-choice tasks: the Choices contract, argmax / per-character argmax, arithmetic_mc's distractors and
openscience's lettered options (on a small local JSONL in its source format).

Run: pytest tests/tasks/test_choices.py
"""

from __future__ import annotations

import json
import re

import pytest

from mdm.platform.registry import get_registry, load_builtins
from mdm.tasks.arithmetic_mc import ArithmeticMC
from mdm.tasks.base import Example, Task
from mdm.tasks.choices import Choices, pick
from mdm.tasks.openscience import OpenScience


def test_choices_contract() -> None:
    with pytest.raises(ValueError, match=">= 2 choices"):
        Choices(("A",), 0)
    with pytest.raises(ValueError, match="distinct"):
        Choices(("A", "A"), 0)
    with pytest.raises(ValueError, match="gold index 2"):
        Choices(("A", "B"), 2)
    assert Task().choices(Example("p", "r", "g", "i")) is None  # by default not multiple choice
    assert Task.multiple_choice is False


def test_pick_argmax_and_per_character() -> None:
    # acc: -2.0 wins; acc_norm per character: -3.0 / 10 = -0.3 beats -2.0 / 2 = -1.0 (lm-eval's acc_norm)
    texts = ("ab", "abcdefghij", "xyz")
    assert pick([-2.0, -3.0, -2.5], texts) == (0, 1)
    assert pick([-1.0, -1.0], ("a", "b")) == (0, 0)  # ties: the first, as numpy.argmax
    task = Task()
    assert task.score_choices(Choices(texts, 1), [-2.0, -3.0, -2.5]) == {"acc": 0.0, "acc_norm": 1.0, "pred": 0,
                                                                           "pred_norm": 1}
    with pytest.raises(ValueError, match="3 log-likelihoods for 2 choices"):
        pick([1.0, 2.0, 3.0], ("a", "b"))


def test_arithmetic_mc_choices() -> None:
    load_builtins()
    assert get_registry("tasks").get("arithmetic_mc") is ArithmeticMC and ArithmeticMC.multiple_choice
    task = ArithmeticMC(max_operand=12, n_test=50)
    exs = list(task.examples("test"))
    golds = []
    for ex in exs:
        ch = task.choices(ex)
        assert ch.texts[ch.gold] == ex.response == ex.gold_raw  # the right choice is the training response
        a, op, b = re.match(r"(\d+) ([-+]) (\d+) =", ex.gold_raw).groups()
        ans = int(a) + int(b) if op == "+" else int(a) - int(b)
        nums = [int(t.split("#### ")[1]) for t in ch.texts]
        assert nums[ch.gold] == ans and len(set(nums)) == 4
        assert all(0 <= x and abs(x - ans) <= 3 for x in nums)
        assert all(t == f"{a} {op} {b} = {x}\n#### {x}" for t, x in zip(ch.texts, nums))
        assert task.score(ch.texts[ch.gold], ex.gold_raw) == 1.0  # `mdm score` agrees with the pick
        assert all(task.score(t, ex.gold_raw) == 0.0 for i, t in enumerate(ch.texts) if i != ch.gold)
        golds.append(ch.gold)
    assert len(set(golds)) == 4  # the right answer is not always in one place
    again = ArithmeticMC(max_operand=12, n_test=50)
    assert [again.choices(e) for e in again.examples("test")] == [task.choices(e) for e in exs]  # seeded
    # the defaults are the offline demo's problems (experiments/arithmetic.py: seed 42, operands 0-12)
    from mdm.tasks.arithmetic import Arithmetic
    demo = Arithmetic(seed=42, n_train=None, n_test=200, max_operand=12)
    assert [e.prompt for e in ArithmeticMC().examples("test")] == [e.prompt for e in demo.examples("test")]
    with pytest.raises(ValueError, match="n_choices"):
        ArithmeticMC(n_choices=5, spread=3)


def test_openscience_lettered_options(tmp_path) -> None:
    rows = [
        {"input": "Which particle carries the electromagnetic force?\nA) gluon\nB) photon\nC) W boson\nD) graviton",
         "output": "<think>Photons mediate EM.</think>\nThe answer is \\boxed{B}."},
        {"input": "Pick the noble gas.\n(A) neon\n(B) sodium\n(C) chlorine", "output": "Answer: A"},
        {"input": "What is the SI unit of force?", "output": "The unit is the newton.\nAnswer: newton"},
        {"input": "Which is largest?\nA. 2\nB. 3", "output": "\\boxed{E}"},  # the gold names no option
    ]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = OpenScience(data_dir=str(tmp_path))
    exs = list(task.examples("test"))
    assert task.choices(exs[0]) == Choices(("A", "B", "C", "D"), 1)
    assert task.choices(exs[1]) == Choices(("A", "B", "C"), 0)
    assert task.choices(exs[2]) is None and task.choices(exs[3]) is None
    assert OpenScience.multiple_choice is False  # generation stays its default mode
    # the picked letter, written as the prediction, re-scores the same with the generation scorer
    res = task.score_choices(task.choices(exs[0]), [-3.0, -0.5, -2.0, -4.0])
    assert res["acc"] == 1.0 and task.score(task.choices(exs[0]).texts[res["pred"]], exs[0].gold_raw) == 1.0

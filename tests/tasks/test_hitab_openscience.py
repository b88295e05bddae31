"""hitab and openscience packs on small files written in their source formats."""

import json

import pytest

from mdm.tasks import answers
from mdm.tasks.hitab import HiTab
from mdm.tasks.openscience import OpenScience, in_holdout


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_hitab(tmp_path):
    rows = [{"prompt": "Table: | year | sales |\n| 2019 | 1,250 |\nWhat were sales in 2019?",
             "response": "Looking at the 2019 row, sales were 1,250.\nThe answer is 1,250."},
            {"prompt": "Which country ranks first?", "response": "Row 1 is Canada.\nAnswer: Canada"}]
    _write(tmp_path / "train.jsonl", rows)
    _write(tmp_path / "test.jsonl", rows)
    task = HiTab(data_dir=str(tmp_path))
    exs = list(task.examples("test"))
    assert [e.prompt for e in exs] == [r["prompt"] for r in rows]
    assert exs[0].response == rows[0]["response"] and exs[0].id == "hitab-0"
    assert task.gold(exs[0].gold_raw) == "1,250" and task.gold(exs[1].gold_raw) == "Canada"
    assert task.score("so it is \\boxed{1250}", exs[0].gold_raw) == 1.0
    assert task.score("The answer is 1250.0", exs[0].gold_raw) == 1.0
    assert task.score("The answer is 1251", exs[0].gold_raw) == 0.0
    assert task.score("Answer: canada.", exs[1].gold_raw) == 1.0
    assert task.score("Answer: Mexico", exs[1].gold_raw) == 0.0
    assert task.score("", exs[1].gold_raw) == 0.0


def test_hitab_needs_data_dir():
    with pytest.raises(ValueError, match="data_dir"):
        next(HiTab().load_split("train"))


MCQ = ("Which particle carries the electromagnetic force?\nA) gluon\nB) photon\nC) W boson\nD) graviton")


def test_openscience_local(tmp_path):
    rows = [{"input": MCQ, "output": "<think>Photons mediate EM.</think>\nThe answer is \\boxed{B}."},
            {"input": "What is the SI unit of force?", "output": "The unit is the newton.\nAnswer: newton"}]
    _write(tmp_path / "test.jsonl", rows)
    task = OpenScience(data_dir=str(tmp_path))
    exs = list(task.examples("test"))
    assert exs[0].prompt == MCQ and exs[0].gold_raw == rows[0]["output"]
    assert task.extract(exs[0].gold_raw) == "B"
    for pred, ok in [("\\boxed{B}", 1.0), ("Answer: (B)", 1.0), ("so\nB", 1.0), ("The answer is C", 0.0),
                     ("photon", 0.0), ("", 0.0)]:
        assert task.score(pred, exs[0].gold_raw) == ok, pred
    assert task.score("Answer: Newton", exs[1].gold_raw) == 1.0
    assert task.score("Answer: joule", exs[1].gold_raw) == 0.0


@pytest.mark.parametrize("text, letter", [
    ("\\boxed{\\text{C}}", "C"), ("The final answer is (D).", "D"), ("**A**", "A"), ("Answer: B) photon", "B"),
    ("the answer is a photon", None), ("no letter here", None), ("\\boxed{B} ... wait, \\boxed{C}", "C"),
])
def test_extract_choice(text, letter):
    assert answers.extract_choice(text) == letter


def test_holdout_is_stable_and_near_fraction():
    texts = [f"question {i}" for i in range(20000)]
    held = [t for t in texts if in_holdout(t, 0.05)]
    # Binomial(20000, 0.05): sd ~ 31, so 5 sd is +-155.
    assert abs(len(held) - 1000) < 155
    assert held == [t for t in texts if in_holdout(t, 0.05)]

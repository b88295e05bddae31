"""Answer extraction: GSM8K gold answers from the real test set, and hand-written generated-text cases."""

import json
import re
from pathlib import Path

import pytest

from mdm.tasks import answers
from mdm.tasks.gsm8k import GSM8K

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
GSM8K_DIR = SHARED / "data" / "gsm8k"


def test_gsm8k_gold_is_a_number_for_every_test_answer():
    task = GSM8K(data_dir=str(GSM8K_DIR))
    golds = [task.gold(ex.gold_raw) for ex in task.examples("test")]
    assert len(golds) == 1319
    # Independent check: the text after "####", commas removed, parsed by float().
    with open(GSM8K_DIR / "test.jsonl") as f:
        raw = [json.loads(line)["answer"].split("####")[-1].strip().replace(",", "") for line in f]
    for g, r in zip(golds, raw):
        assert g is not None and re.fullmatch(r"-?\d+(\.\d+)?", g), g
        assert float(g) == float(r)


@pytest.mark.parametrize("text, expected", [
    ("She pays 3 + 4 = 7 dollars.\n#### 7", "7"),                  # hash
    ("#### 1,234,567", "1234567"),                                  # commas
    ("so the total is $1,200.\n#### $1,200", "1200"),               # dollar + commas
    ("The answer is \\boxed{42}.", "42"),                           # boxed
    ("first 3 then \\boxed{\\frac{1}{2}} 9", "1"),                  # boxed with nested braces: first number in it
    ("We get 5 then 10, finally 15 apples.", "15"),                 # last-number fallback
    ("The temperature fell to -12 degrees.", "-12"),                # negative
    ("#### -3", "-3"),
    ("The answer is 18.0", "18"),                                   # trailing .0
    ("costs 2.50 dollars", "2.5"),
    ("#### 007", "7"),
    ("I don't know the answer.", None),                             # no number
    ("", None),
    ("#### \n but 8 later", "8"),                                   # empty hash answer falls back
    ("\\boxed{} and 4", "4"),
    ("7 - 0 =\x1f88", "88"),                                        # a control character that \\s matches
])
def test_extract_numeric(text, expected):
    assert answers.extract_numeric(text) == expected


def test_hash_takes_precedence_over_boxed_and_last_number():
    assert answers.extract_numeric("\\boxed{5}\n#### 6\nthen 7") == "6"
    assert answers.extract_numeric("\\boxed{5} then 7") == "5"


@pytest.mark.parametrize("pred, gold, ok", [
    ("1200", "1,200", True), ("18.0", "18", True), ("-0", "0", True), ("0.5", ".5", True),
    ("17", "18", False), ("Paris", " paris.", True), ("12%", "12", True), ("1e3", "1000", False),
])
def test_answers_match(pred, gold, ok):
    assert answers.answers_match(pred, gold) is ok


def test_scoring_never_raises_on_what_a_model_may_emit():
    """Rewards in `mdm rl` score whatever a sampler emits: control characters and odd digits included."""
    import random

    rng = random.Random(0)
    alphabet = "0123456789.,$-# \n\t\x1f\x0b\x1c\u00a0\u2009\u0663\u00b2abc"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        answers.answers_match(answers.extract_numeric(text) or text, "88")


def test_gsm8k_score():
    task = GSM8K(data_dir=str(GSM8K_DIR))
    gold = "Step 1 <<1+1=2>>2\n#### 1,000"
    assert task.score("blah blah\n#### 1000", gold) == 1.0
    assert task.score("The answer is \\boxed{1,000}", gold) == 1.0
    assert task.score("so 999", gold) == 0.0
    assert task.score("no idea", gold) == 0.0
    assert task.aggregate([1.0, 0.0, 1.0, 1.0]) == {"accuracy": 0.75, "n": 4, "correct": 3.0}

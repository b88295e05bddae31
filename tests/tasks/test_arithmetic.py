"""Arithmetic generator: deterministic under a seed, train/test disjoint, answers correct."""

import itertools
import operator
import re

import pytest

from mdm.tasks.arithmetic import Arithmetic

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _problems(task, split):
    return [(r["question"], r["answer"]) for r in task.load_split(split)]


def test_deterministic_under_seed():
    a, b = Arithmetic(seed=3), Arithmetic(seed=3)
    assert _problems(a, "train") == _problems(b, "train")
    assert _problems(a, "test") == _problems(b, "test")
    assert _problems(Arithmetic(seed=4), "test") != _problems(a, "test")
    # The test split does not depend on the train size.
    assert _problems(Arithmetic(seed=3, n_train=50), "test") == _problems(a, "test")


@pytest.mark.parametrize("kw", [dict(), dict(max_operand=99, ops=("+", "-", "*"), n_train=5000, n_test=500),
                                dict(max_operand=5, n_train=80, n_test=20)])
def test_no_overlap_and_sizes(kw):
    task = Arithmetic(**kw)
    train, test = _problems(task, "train"), _problems(task, "test")
    assert len(train) == task.n_train and len(test) == task.n_test
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not {q for q, _ in train} & {q for q, _ in test}


def test_n_train_none_takes_every_problem_not_held_out():
    task = Arithmetic(max_operand=4, n_train=None, n_test=30)  # 4 phrasings x (25 sums + 15 differences)
    train, test = _problems(task, "train"), _problems(task, "test")
    assert task.n_train == len(train) == 160 - 30 and len(test) == 30
    assert len(set(train) | set(test)) == 160  # together: the whole space, each problem once
    assert test == _problems(Arithmetic(max_operand=4, n_train=5, n_test=30), "test")  # held-out split unchanged


def test_answers_correct_and_gsm8k_style():
    task = Arithmetic(max_operand=30, ops=("+", "-", "*"), n_train=1000, n_test=300)
    for q, ans in itertools.chain(_problems(task, "train"), _problems(task, "test")):
        a, b = (int(x) for x in re.findall(r"\d+", q))  # independent parse of the question
        op = re.search(r"plus|Add|more|\+|minus|Subtract|eats|-|times|Multiply|boxes|\*", q).group(0)
        op = {"plus": "+", "Add": "+", "more": "+", "minus": "-", "Subtract": "-", "eats": "-",
              "times": "*", "Multiply": "*", "boxes": "*"}.get(op, op)
        if op == "-" and q.startswith("Subtract"):
            b, a = a, b  # "Subtract {b} from {a}"
        expected = OPS[op](a, b)
        assert expected >= 0
        assert ans == f"{a} {op} {b} = {expected}\n#### {expected}"
        assert task.gold(ans) == str(expected)
        assert task.score(ans, ans) == 1.0


def test_space_is_enumerated_exactly():
    task = Arithmetic(max_operand=6, ops=("+", "-", "*"), n_train=0, n_test=0)
    questions = [task.problem(i)[0] for i in range(task.space_size())]
    assert len(set(questions)) == len(questions) == 4 * (49 + 28 + 49)


def test_too_large_request_is_a_clear_error():
    with pytest.raises(ValueError, match="exceeds the .* distinct problems"):
        Arithmetic(max_operand=3, n_train=1000)
    with pytest.raises(ValueError, match="ops"):
        Arithmetic(ops=("/",))


def test_label_noise_corrupts_training_demonstrations_only():
    """label_noise q: about q of the training responses state the answer + 1 (an independent parse of the
    question gives the right one); gold answers, scoring and the test split stay right; q = 0 is the task."""
    clean, noisy = Arithmetic(seed=5, max_operand=12, n_train=None, n_test=100), \
        Arithmetic(seed=5, max_operand=12, n_train=None, n_test=100, label_noise=0.6)
    pairs = list(zip(clean.examples("train"), noisy.examples("train")))
    assert [c.prompt for c, _ in pairs] == [n.prompt for _, n in pairs]
    assert all(c.gold_raw == n.gold_raw == c.response for c, n in pairs)  # the gold answer never changes
    wrong = [n for _, n in pairs if n.response != n.gold_raw]
    assert 0.55 < len(wrong) / len(pairs) < 0.65
    for n in wrong:
        right = int(noisy.gold(n.gold_raw))
        assert n.response.endswith(f"= {right + 1}\n#### {right + 1}") and noisy.score(n.response, n.gold_raw) == 0
    assert [(e.response, e.gold_raw) for e in noisy.examples("test")] == \
        [(e.response, e.gold_raw) for e in clean.examples("test")]
    assert [e.response for e in Arithmetic(seed=5, max_operand=12, n_train=None, n_test=100,
                                           label_noise=0.6).examples("train")] == [n.response for _, n in pairs]
    with pytest.raises(ValueError, match=r"label_noise must be in \[0, 1\], got 1.5"):
        Arithmetic(label_noise=1.5)

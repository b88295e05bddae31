"""experiments/gsm8k.py's steps without Ray: a finished, scored run is not evaluated again unless asked.

    pytest tests/experiments/test_gsm8k_recipe.py
"""

from __future__ import annotations

import json
import time

import pytest

from experiments import gsm8k
from mdm.platform.infer.model_source import ModelSourceError


def _finished_run(tmp_path):
    run_dir = tmp_path / "outputs" / "r1"
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "predictions_test.jsonl").write_text('{"id": "0", "prediction": "42"}\n')
    summary = {"run_name": "r1", "accuracy": 0.5, "steps": 2}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir, summary


def test_a_scored_run_is_not_evaluated_again_without_re_evaluate(tmp_path, capsys):
    run_dir, summary = _finished_run(tmp_path)
    args = gsm8k.parse_args(["--set", f"train.output_dir={tmp_path / 'outputs'}"])
    cfg = gsm8k.build_config(args)
    got = gsm8k.evaluate(cfg, args, "r1", {"export_dir": str(run_dir / "final")}, time.time())
    assert got == summary
    out = capsys.readouterr().out
    assert "r1 is finished and scored; not evaluating again" in out and "--re-evaluate" in out
    assert (run_dir / "predictions_test.jsonl").read_text() == '{"id": "0", "prediction": "42"}\n'


def test_re_evaluate_scores_again(tmp_path):
    run_dir, _ = _finished_run(tmp_path)
    args = gsm8k.parse_args(["--re-evaluate"])
    cfg = gsm8k.build_config(args)
    # The export here is an empty folder: batch inference is reached, and refuses it before starting Ray.
    with pytest.raises(ModelSourceError, match=r"final: no HF model inside"):
        gsm8k.evaluate(cfg, args, "r1", {"export_dir": str(run_dir / "final")}, time.time())
    assert json.loads((run_dir / "summary.json").read_text())["accuracy"] == 0.5  # nothing written on failure


def test_a_plan_that_does_not_fit_stops_the_recipe_in_one_line_and_force_reaches_training(monkeypatch, capsys):
    """The recipe's train step raising the driver's PlanError (a GPU run that does not fit; the check itself is
    tested in tests/platform/train/test_plan_check.py): exit status 2, one line, nothing evaluated; --force
    reaches training."""
    from mdm.platform.train.plan_check import PlanError

    seen = []

    def train(cfg, force=False):
        seen.append(force)
        raise PlanError("the memory plan needs 90.00 GiB per GPU, 10.00 GiB more than the 80.00 GiB of ...")

    monkeypatch.setattr(gsm8k, "prepare_data", lambda cfg, args: [])
    monkeypatch.setattr(gsm8k, "train", train)
    monkeypatch.setattr(gsm8k, "evaluate", lambda *a: pytest.fail("evaluated after a refused plan"))
    assert gsm8k.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gsm8k: error: the memory plan needs 90.00 GiB per GPU")
    assert gsm8k.main(["--force"]) == 2  # the stand-in refuses either way: what matters is the flag it got
    assert seen == [False, True]

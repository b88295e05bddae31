"""Eval harness: merge by id and by index, missing/duplicate/unmatched counts, malformed lines by line number."""

import json
import os
import subprocess
import sys
from pathlib import Path

from mdm.tasks.harness import score_files

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
GSM8K_TEST = SHARED / "data" / "gsm8k" / "test.jsonl"


def _rec(i, pred, gold=None, with_id=True, index=None):
    r = {"task": "gsm8k", "prompt": f"q{i}", "prediction": pred, "meta": {"index": i if index is None else index}}
    if gold is not None:
        r["gold_raw"] = gold
    if with_id:
        r["id"] = f"ex-{i}"
    return r


def _write(path, records, extra_lines=()):
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_no_gt_scores_own_gold(tmp_path):
    preds = [_rec(0, "#### 7", "#### 7"), _rec(1, "\\boxed{8}", "#### 8"), _rec(2, "9", "#### 10"),
             _rec(3, "no idea", "#### 3"), {"task": "gsm8k", "id": "ex-4", "gold_raw": "#### 1"}]
    m = score_files("gsm8k", _write(tmp_path / "p.jsonl", preds))
    assert (m["correct"], m["n"], m["accuracy"]) == (2.0, 4, 0.5)
    assert m["invalid_records"] == 1 and "p.jsonl:5: no string 'prediction'" in m["problems"]["invalid_records"][0]
    assert m["no_answer"] == 1


def test_merge_by_id_ignores_order_and_index(tmp_path):
    gt = [{"id": f"ex-{i}", "gold_raw": f"#### {i * 10}"} for i in range(6)]
    # Predictions in reverse order with wrong meta.index: only ids can pair them correctly.
    preds = [_rec(i, f"answer {i * 10}", index=99 - i) for i in (5, 4, 3, 1, 0)]
    preds[0]["prediction"] = "answer 49"  # ex-5 wrong
    preds.append(_rec(7, "#### 70"))  # not in gt
    preds.append(_rec(3, "#### 999"))  # duplicate id ex-3: the first (correct) one is scored
    m = score_files("gsm8k", _write(tmp_path / "p.jsonl", preds), _write(tmp_path / "gt.jsonl", gt))
    assert m["key"] == "id"
    assert (m["correct"], m["n"], m["scored"]) == (4.0, 6, 5)  # ex-2 missing counts as wrong
    assert (m["missing"], m["duplicates"], m["unmatched"]) == (1, 1, 1)
    assert "gt.jsonl:3: no prediction for id 'ex-2'" in m["problems"]["missing"][0]
    assert "p.jsonl:7: duplicate id 'ex-3' (first at line 3)" in m["problems"]["duplicates"][0]


def test_merge_by_index_with_raw_gsm8k_gt(tmp_path):
    raw = GSM8K_TEST.read_text().splitlines()[:5]
    gt_path = tmp_path / "gt.jsonl"
    gt_path.write_text("\n".join(raw) + "\n")
    golds = [json.loads(line)["answer"].split("####")[-1].strip().replace(",", "") for line in raw]
    preds = [_rec(i, f"The answer is {golds[i]}.", with_id=False) for i in (4, 2, 0)]
    preds.append(_rec(1, "The answer is -1", with_id=False))
    preds.append(_rec(9, "#### 1", with_id=False))
    m = score_files("gsm8k", _write(tmp_path / "p.jsonl", preds), str(gt_path))
    assert m["key"] == "index"
    assert (m["correct"], m["n"], m["missing"], m["unmatched"]) == (3.0, 5, 1, 1)
    assert abs(m["accuracy"] - 0.6) < 1e-12


def test_position_is_the_index_without_meta(tmp_path):
    gt = [{"gold_raw": "#### 1"}, {"gold_raw": "#### 2"}]
    preds = [{"prediction": "1"}, {"prediction": "3"}]
    m = score_files("gsm8k", _write(tmp_path / "p.jsonl", preds), _write(tmp_path / "g.jsonl", gt))
    assert (m["key"], m["correct"], m["n"]) == ("index", 1.0, 2)


def test_malformed_lines_reported_with_line_numbers(tmp_path):
    preds = [_rec(0, "#### 1", "#### 1"), _rec(1, "#### 2", "#### 2")]
    path = _write(tmp_path / "p.jsonl", preds[:1], ['{"prediction": "#### 5"', "", "[1, 2]"])
    with open(path, "a") as f:
        f.write(json.dumps(preds[1]) + "\n")
    m = score_files("gsm8k", path)
    assert m["malformed_lines"] == 2 and (m["correct"], m["n"]) == (2.0, 2)
    msgs = m["problems"]["malformed_lines"]
    assert msgs[0].startswith(f"{path}:2: not valid JSON") and msgs[1].startswith(f"{path}:4: expected a JSON object")


def _run(args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_cli_mdm_score_and_seed_module(tmp_path):
    preds = [_rec(0, "#### 1", "#### 1"), _rec(1, "#### 3", "#### 2")]
    _write(tmp_path / "p.jsonl", preds, ["{oops"])
    r = _run(["-m", "mdm", "score", "--task", "gsm8k", "--pred", "p.jsonl", "--out", "out/m.json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "accuracy   0.5000  (1 / 2)" in r.stdout and "p.jsonl:3: not valid JSON" in r.stdout
    m = json.loads((tmp_path / "out/m.json").read_text())
    assert m["accuracy"] == 0.5 and m["malformed_lines"] == 1
    r = _run(["-m", "mdm.eval.harness", "--pred", "p.jsonl", "--strict"], tmp_path)  # task from the records
    assert r.returncode == 1 and json.loads(r.stdout[r.stdout.index("{"):])["task"] == "gsm8k"
    r = _run(["-m", "mdm", "score", "--task", "gsm8k", "--pred", "missing.jsonl"], tmp_path)
    assert r.returncode == 2 and "missing.jsonl: no such file" in r.stderr
    r = _run(["-m", "mdm", "score", "--task", "gsm8x", "--pred", "p.jsonl"], tmp_path)
    assert r.returncode == 2 and "did you mean 'gsm8k'" in r.stderr

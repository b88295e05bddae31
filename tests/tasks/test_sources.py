"""Where task data comes from: the GSM8K copy shipped in the package, a local directory, the hub only when asked,
and packs whose data cannot ship failing at once in one line.

    pytest tests/tasks/test_sources.py -q        # ~15 s (two short subprocesses)
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from mdm.tasks.gsm8k import GSM8K
from mdm.tasks.hitab import HiTab
from mdm.tasks.openscience import OpenScience
from mdm.tasks.sources import TaskDataError, packaged_file

REPO = Path(__file__).resolve().parents[2]


def _rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("split,n", [("train", 7473), ("test", 1319)])
def test_shipped_gsm8k_equals_the_reference_copy(split: str, n: int, shared_dir: Path) -> None:
    shipped = packaged_file("gsm8k", split)
    assert shipped is not None and shipped.stat().st_size < 1_500_000
    reference = _rows(shared_dir / "data" / "gsm8k" / f"{split}.jsonl")
    assert len(reference) == n
    assert _rows(shipped) == reference  # row for row, field for field
    assert list(GSM8K().load_split(split)) == reference  # and that is what the pack reads by default


def test_licence_ships_and_the_package_data_globs_cover_the_files(shared_dir: Path) -> None:
    here = packaged_file("gsm8k", "train").parent
    assert (here / "LICENSE").read_text() == (shared_dir / "data" / "gsm8k" / "LICENSE").read_text()
    assert "MIT License" in (here / "LICENSE").read_text()
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mdm.tasks"]
    tasks = REPO / "src" / "mdm" / "tasks"
    for f in ("train.jsonl.gz", "test.jsonl.gz", "LICENSE"):
        rel = str((here / f).relative_to(tasks))
        assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{rel} would not be in a wheel ({globs})"


def test_a_data_dir_wins_over_the_shipped_copy(tmp_path: Path) -> None:
    (tmp_path / "test.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    assert [r["question"] for r in GSM8K(data_dir=str(tmp_path)).load_split("test")] == ["1+1?"]
    assert [r["question"] for r in GSM8K(data_dir=str(tmp_path), source="hub").load_split("test")] == ["1+1?"]


@pytest.mark.parametrize("cls,fix", [(HiTab, "data.task_data_dir"), (OpenScience, "data.source: hub")])
def test_packs_that_cannot_ship_say_what_to_download(cls: type, fix: str) -> None:
    with pytest.raises(TaskDataError) as e:
        next(cls().load_split("train"))
    msg = str(e.value)
    assert "\n" not in msg and "download" in msg and "data.task_data_dir" in msg and fix in msg
    assert "train.jsonl and test.jsonl" in msg


def test_hub_only_when_asked_and_one_line_when_unreachable(tmp_path: Path) -> None:
    """data.source: hub takes the real `datasets.load_dataset` path; offline it ends in one line, not a
    traceback. (HF_HUB_OFFLINE makes the failure immediate; datasets reads it at import, hence a subprocess.)"""
    code = ("from mdm.tasks.gsm8k import GSM8K\n"
            "try:\n    next(GSM8K(source='hub').load_split('test'))\n"
            "except Exception as e:\n    print(type(e).__name__, '|', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    name, msg = out.stdout.strip().split(" | ", 1)
    assert name == "TaskDataError" and "\n" not in msg, out.stdout + out.stderr
    assert "could not load openai/gsm8k main from the Hugging Face Hub" in msg and "data.task_data_dir" in msg


def test_mdm_preprocess_of_a_pack_without_data_fails_at_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "mdm", "preprocess", "--task", "llada_openscience", "--tokenizer",
                        "train-bpe", "--out", "o.jsonl"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and time.time() - t0 < 60
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("mdm preprocess: error: task 'openscience' has no data")
    assert not (tmp_path / "o.jsonl").exists()

"""GSM8K pack: local-directory loading, examples, registry, clear errors."""

from pathlib import Path

import pytest

from mdm.platform.registry import get_registry, load_builtins
from mdm.tasks.base import UnknownSplitError
from mdm.tasks.jsonl import JsonlError

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
GSM8K_DIR = SHARED / "data" / "gsm8k"


def test_builtins_registered():
    load_builtins()
    names = get_registry("tasks").names()
    for name in ("gsm8k", "arithmetic", "hitab", "openscience"):
        assert name in names


def test_local_examples():
    load_builtins()
    task = get_registry("tasks").get("gsm8k")(data_dir=str(GSM8K_DIR))
    train = list(task.examples("train", limit=50))
    assert len(train) == 50
    ex = train[0]
    assert ex.prompt and "<<" not in ex.response and ex.response.rstrip().split("####")[-1].strip()
    assert ex.gold_raw.split("####")[-1].strip() == ex.response.split("####")[-1].strip()
    assert len({e.id for e in train}) == 50
    assert sum(1 for _ in task.load_split("test")) == 1319


def test_errors(tmp_path):
    load_builtins()
    cls = get_registry("tasks").get("gsm8k")
    with pytest.raises(UnknownSplitError, match="train, test"):
        next(cls(data_dir=str(GSM8K_DIR)).load_split("validation"))
    with pytest.raises(FileNotFoundError, match="train.jsonl"):
        next(cls(data_dir=str(tmp_path)).load_split("train"))
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q2"}\n')
    it = cls(data_dir=str(tmp_path)).load_split("test")
    next(it)
    with pytest.raises(JsonlError, match=r"test.jsonl:2: missing key\(s\) 'answer'"):
        next(it)

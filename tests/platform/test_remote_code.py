"""A tokenizer that points at custom code runs nothing unless `model.trust_remote_code: true` says so.

The fixture is a model directory whose tokenizer_config.json maps AutoTokenizer (auto_map) to a local
`evil_tok.py` that appends to a marker file when imported. Each product path that loads a tokenizer on the
driver -- the trainer (`train_driver`), `mdm generate`, batch inference (`run_inference`) -- is called with
"y" waiting on standard input (transformers asks there when trust_remote_code is left unset, and a "y" ran the
code) and must refuse with a message naming the directory, the code and the key, with no marker written.
With the key on, the same directory loads and the marker appears (so the fixture really is executable code).
Fast: nothing trains, Ray never starts.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import save_file

from mdm.platform.config import load_config

EVIL = '''import os
open(os.environ["EVIL_MARKER"], "a").write("ran\\n")
from transformers import PreTrainedTokenizerFast


class EvilTokenizer(PreTrainedTokenizerFast):
    pass
'''


@pytest.fixture()
def evil_dir(tmp_path, arithmetic_data, monkeypatch) -> Path:
    d = tmp_path / "evil_model"
    d.mkdir()
    (d / "tokenizer.json").write_text((Path(arithmetic_data["tokenizer"]) / "tokenizer.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": [None, "evil_tok.EvilTokenizer"]}}))
    (d / "evil_tok.py").write_text(EVIL)
    (d / "config.json").write_text(json.dumps({"model_type": "llada"}))
    save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"))  # an HF dir, as batch inference wants
    monkeypatch.setenv("EVIL_MARKER", str(tmp_path / "marker"))
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))  # a user (or a pipe) that says yes
    ray.shutdown()
    return d


def _refused(text: str, d: Path) -> None:
    assert f"refusing to load the tokenizer of local directory '{d}'" in text, text
    assert "evil_tok.EvilTokenizer" in text and "model.trust_remote_code: true" in text, text


def test_trainer_refuses_remote_code_tokenizer(evil_dir, arithmetic_data, tmp_path):
    from mdm.platform.train.driver import train_driver

    cfg = load_config([], [f"train.train_data_path={arithmetic_data['train']}", f"data.tokenizer={evil_dir}",
                           "tracking.enabled=false", f"ray.storage_path={tmp_path / 'ray'}"])
    with pytest.raises(OSError) as e:
        train_driver(cfg)
    _refused(str(e.value), evil_dir)
    assert not (tmp_path / "marker").exists() and not ray.is_initialized()


def test_generate_refuses_remote_code_tokenizer(evil_dir, tmp_path, capsys):
    from mdm.platform.commands.generate import main

    assert main(["--model", str(evil_dir), "--prompt", "2+3?"]) == 2
    _refused(capsys.readouterr().err, evil_dir)
    assert not (tmp_path / "marker").exists()


def test_batch_inference_refuses_remote_code_tokenizer(evil_dir, tmp_path):
    from mdm.platform.infer.generation.job import InferenceError, run_inference

    cfg = load_config([], [f"tracking.tracking_uri=sqlite:///{tmp_path}/mlruns.db"])
    with pytest.raises(InferenceError) as e:
        run_inference(cfg, model=str(evil_dir), task="arithmetic", out=str(tmp_path / "p.jsonl"), limit=2)
    _refused(str(e.value), evil_dir)
    assert not (tmp_path / "marker").exists() and not ray.is_initialized()


def test_trust_remote_code_true_runs_it(evil_dir, tmp_path):
    """The opt-in works (and proves the fixture is live code). In a child process, so that the copied module
    lands in a private HF_MODULES_CACHE and this process imports nothing from it."""
    code = ("from mdm.platform.config import load_config; from mdm.platform.tokenizer import load_tokenizer; "
            f"cfg = load_config([], ['model.trust_remote_code=true']); "
            f"print(type(load_tokenizer({str(evil_dir)!r}, cfg.model.trust_remote_code)).__name__)")
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "EvilTokenizer"
    assert (tmp_path / "marker").read_text() == "ran\n"

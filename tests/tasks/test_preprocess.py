"""Preprocess: gsm8k with a tokenizer trained here (plain and chat-template layouts), over-long drops, CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mdm.tasks.data import read_processed, validate_row
from mdm.tasks.gsm8k import GSM8K
from mdm.tasks.preprocess import preprocess
from mdm.platform.prompts import render_prompt
from mdm.tasks.tokenize import SIMPLE_CHAT_TEMPLATE, train_bpe

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
GSM8K_DIR = str(SHARED / "data" / "gsm8k")
N = 200


@pytest.fixture(scope="module", params=[None, SIMPLE_CHAT_TEMPLATE], ids=["plain", "chat"])
def tok(request, tmp_path_factory):
    task = GSM8K(data_dir=GSM8K_DIR)
    texts = (t for ex in task.examples("train", limit=1000) for t in (ex.prompt, ex.response))
    out = train_bpe(texts, str(tmp_path_factory.mktemp("tok")), vocab_size=1024, chat_template=request.param)
    return AutoTokenizer.from_pretrained(out)


def test_gsm8k_rows_validate_and_decode(tok, tmp_path):
    task = GSM8K(data_dir=GSM8K_DIR)
    out = tmp_path / "train.jsonl"
    stats = preprocess(task, "train", tok, out, max_len=None, limit=N, progress=False)
    assert stats["written"] == stats["read"] == N and stats["dropped_overlong"] == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == N
    for row, ex in zip(rows, task.examples("train", limit=N)):
        assert validate_row(row, vocab_size=len(tok)) is None
        ids, pl = row["input_ids"], row["prompt_length"]
        assert tok.decode(ids[:pl]) == render_prompt(tok, ex.prompt)
        if tok.chat_template:
            assert tok.decode(ids[:pl]).startswith("<|start_header_id|>user<|end_header_id|>\n\n")
        assert tok.decode(ids[pl:-1]) == ex.response and ids[-1] == tok.eos_token_id
    assert len(list(read_processed(out, vocab_size=len(tok)))) == N


def test_overlong_rows_dropped_and_counted(tok, tmp_path):
    out = tmp_path / "x.jsonl"
    full = preprocess(GSM8K(data_dir=GSM8K_DIR), "test", tok, out, limit=N, progress=False)
    lengths = [len(json.loads(line)["input_ids"]) for line in out.read_text().splitlines()]
    cap = sorted(lengths)[N // 2]
    stats = preprocess(GSM8K(data_dir=GSM8K_DIR), "test", tok, out, max_len=cap, limit=N, progress=False)
    assert stats["dropped_overlong"] == sum(n > cap for n in lengths) > 0
    assert stats["written"] == N - stats["dropped_overlong"] and full["longest"] == max(lengths)
    assert max(len(json.loads(line)["input_ids"]) for line in out.read_text().splitlines()) <= cap


def _mdm(*args, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "mdm", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_cli_arithmetic_train_bpe_then_reuse(tmp_path):
    r = _mdm("preprocess", "--task", "arithmetic", "--split", "train", "--tokenizer", "train-bpe",
             "--out", "data/train/arith.jsonl", "--max_len", "64", "--task_arg", "n_train=300", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tok_dir = tmp_path / "data/train/arith_tokenizer"
    assert f"saved to data/train/arith_tokenizer" in r.stdout and tok_dir.is_dir()
    stats = json.loads(r.stdout.strip().splitlines()[-1])
    assert stats["written"] == 300 and stats["dropped_overlong"] == 0
    r = _mdm("preprocess", "--task", "arithmetic", "--split", "test", "--tokenizer", str(tok_dir),
             "--out", "data/test/arith.jsonl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    rows = list(read_processed(tmp_path / "data/test/arith.jsonl", vocab_size=len(tok)))
    assert len(rows) == 200
    assert tok.decode(rows[0]["input_ids"][rows[0]["prompt_length"]:]).endswith(tok.eos_token)


def test_cli_errors_are_clear(tmp_path):
    r = _mdm("preprocess", "--task", "gsm8k", "--split", "validation", "--tokenizer", "train-bpe",
             "--data_dir", GSM8K_DIR, "--out", "o.jsonl", cwd=tmp_path)
    assert r.returncode == 2 and "no split 'validation'; its splits: train, test" in r.stderr
    r = _mdm("preprocess", "--task", "gsm8k", "--tokenizer", "train-bpe", "--data_dir", str(tmp_path),
             "--out", "o.jsonl", cwd=tmp_path)
    assert r.returncode == 2 and "train.jsonl does not exist" in r.stderr
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"\n')
    r = _mdm("preprocess", "--task", "gsm8k", "--tokenizer", "train-bpe", "--data_dir", str(tmp_path),
             "--out", "o.jsonl", cwd=tmp_path)
    assert r.returncode == 2 and "train.jsonl:2: not valid JSON" in r.stderr
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.jsonl.tmp").exists()

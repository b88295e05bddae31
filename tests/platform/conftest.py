"""Fixtures for the platform's Ray tests: a small local Ray per module, and tiny processed training data.

`ray_local` is module-scoped (not session) so that modules which start Ray their own way still can.
`arithmetic_data` writes the arithmetic task's train split as processed JSONL with a BPE tokenizer trained
on it (the real `mdm.tasks.preprocess` path), once per session.
"""

from __future__ import annotations

import os
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def arithmetic_data(tmp_path_factory) -> dict[str, str]:
    """{"train": processed JSONL path, "tokenizer": tokenizer dir} for 400 arithmetic problems."""
    from mdm.tasks.arithmetic import Arithmetic
    from mdm.tasks.preprocess import preprocess
    from mdm.tasks.tokenize import train_bpe

    root = tmp_path_factory.mktemp("arith")
    task = Arithmetic(seed=0, n_train=400, n_test=20)
    texts = [e.prompt + "\n" + e.response for e in task.examples("train")]
    tok = train_bpe(texts, str(root / "tok"), vocab_size=300)
    out = root / "train.jsonl"
    preprocess(task, "train", tok, out, progress=False)
    return {"train": str(out), "tokenizer": tok, "root": str(root)}



@pytest.fixture(scope="session")
def trained_mc(tmp_path_factory) -> dict:
    """A tiny LLaDA trained here on small arithmetic (infer/tiny_mc_model.py) and its task `arith_mc4`: once per
    test session. Under pytest-xdist the test processes share one copy (made under a file lock in the session's
    base temp dir): it is the slowest fixture, and each process would otherwise train its own.
    {"dir": the model directory, "task", "train_s"}."""
    import fcntl
    import json

    from tiny_mc_model import register_task, train_tiny_mc

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # pytest-N/, above popen-gwK/
    done = shared / "tiny_mc.json"
    with open(shared / "tiny_mc.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            made = train_tiny_mc(str(shared / "tiny_mc"))
            done.write_text(json.dumps({k: made[k] for k in ("dir", "task", "train_s")}))
    register_task()  # this process's registry holds the task too
    return json.loads(done.read_text())

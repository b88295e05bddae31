"""The embedded Ray, and a training run on it stopped by SIGTERM, in a fresh process (a new user's shell:
RAY_AUTH_MODE unset, HOME in a temporary directory, where Ray writes the token it makes).

- The embedded Ray starts with token authentication and without Ray's warning about choosing it (issue #23,
  item 9: the main job's terminal holds mdm's lines).
- `mdm train` on it, sent SIGTERM after its first checkpoints (issue #25, item 5; SIGTERM is turned into Ray
  Train's own SIGINT abort, so this covers Ctrl-C too): it exits 130 with one line naming the latest complete
  checkpoint the same command resumes from, its MLflow run ends KILLED (not RUNNING forever, not FAILED), and
  its lease is released.

Run: pytest tests/platform/test_embedded_ray_auth.py
"""

import os
import re
import signal
import subprocess
import sys
import time

from mlflow.tracking import MlflowClient

from mdm.platform.train.lease import LEASE_FILE

CODE = """
import os, sys, types
import ray
from mdm.platform.runtime.ray_runtime import ensure_ray
ensure_ray(types.SimpleNamespace(address=None, num_cpus=2))
print("driver", os.environ.get("RAY_AUTH_MODE"))
print("worker", ray.get(ray.remote(lambda: os.environ.get("RAY_AUTH_MODE")).remote()), flush=True)
from mdm.platform.commands.train import main
sys.exit(main(sys.argv[1:]))  # on this embedded Ray
"""


def _train_args(tmp_path, data) -> list[str]:
    sets = {"train.train_data_path": data["train"], "data.tokenizer": data["tokenizer"], "run_name": "stopped",
            "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.mlp_hidden_size": 64,
            "train.batch_size_per_gpu": 8, "train.max_len": 64, "train.max_steps": 400, "train.logging_steps": 1,
            "train.save_steps": 2, "train.eval_strategy": "no", "deepspeed.enabled": False, "ray.num_workers": 1,
            "ray.cpus_per_worker": 0.5, "ray.storage_path": tmp_path / "ray", "train.output_dir": tmp_path / "out",
            "tracking.tracking_uri": f"sqlite:///{tmp_path}/mlruns.db", "tracking.experiment_name": "stop"}
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def _wait_for_checkpoints(run_dir, proc, n: int = 2, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while len(list(run_dir.glob("checkpoint_*"))) < n or not (run_dir / "checkpoint_manager_snapshot.json").exists():
        assert proc.poll() is None, f"the run ended early:\n{proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.2)


def test_embedded_ray_uses_token_auth_and_a_stopped_run_ends_killed(tmp_path, arithmetic_data):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env.update(HOME=str(tmp_path), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", CODE, *_train_args(tmp_path, arithmetic_data)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_checkpoints(tmp_path / "ray" / "stopped", proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert out.split()[:4] == ["driver", "token", "worker", "token"], (out, err[-3000:])
    assert (tmp_path / ".ray" / "auth_token").is_file()  # Ray made the token the cluster checks
    assert "mdm: embedded Ray on 127.0.0.1" in err
    assert "Token authentication" not in err, err

    assert proc.returncode == 130, err[-3000:]
    said = re.search(r"mdm train: run stopped interrupted; its MLflow run is ended KILLED; the same command resumes "
                     r"it from its latest complete checkpoint, step (\d+) \((\S+)\)", err)
    assert said, err[-3000:]
    assert int(said.group(1)) % 2 == 0 and os.path.isdir(said.group(2)) and "mdm train: done" not in out
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns.db")
    exp = client.get_experiment_by_name("stop")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.runName` = 'stopped'")
    assert [r.info.status for r in runs] == ["KILLED"]
    steps = {m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")}
    assert int(said.group(1)) <= max(steps) < 400  # stopped part-way, what it logged shipped before the end
    assert not (tmp_path / "ray" / "stopped" / LEASE_FILE).exists()  # released: the same command may run now

"""A sweep whose driver is killed resumes with the same command and runs only the unfinished trials.

`mdm tune` runs in a subprocess with its own embedded Ray (this module starts no Ray itself). Once the Tune
experiment state records the first trial as finished, the driver's process group is killed; the same
command is run again. Checked independently of the driver's own report: the finished trial's result file is
untouched (not run again), the experiment ends with both trials TERMINATED, and the MLflow store holds one
parent and two children, all FINISHED (none duplicated, none left RUNNING), the first with its original end time.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(900)


def _trial_states(exp_dir: Path) -> dict[str, str]:
    """{trial id: status} from the newest Tune experiment state file ({} while none or mid-write)."""
    files = sorted(glob.glob(str(exp_dir / "experiment_state-*.json")))
    if not files:
        return {}
    try:
        data = json.loads(Path(files[-1]).read_text())
        return {t["trial_id"]: t["status"] for t in (json.loads(item[0]) for item in data["trial_data"])}
    except (OSError, ValueError, KeyError):
        return {}


def _runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name("tune-resume")
    return c.search_runs([exp.experiment_id], filter_string="tags.`mdm.sweep` = 'resume'", max_results=100)


def test_resume_after_killed_driver_runs_only_unfinished_trials(tmp_path, arithmetic_data):
    import ray

    assert not ray.is_initialized()  # the subprocess starts its own; two in one test process would collide
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    (tmp_path / "base.yaml").write_text(f"""
train: {{train_data_path: {arithmetic_data['train']}, output_dir: {tmp_path / 'out'}, max_steps: 4,
        batch_size_per_gpu: 4, max_len: 64, train_ratio: 0.9, eval_strategy: steps, eval_steps: 2,
        logging_steps: 1, save_strategy: 'no'}}
model: {{d_model: 32, n_layers: 1, n_heads: 2, mlp_hidden_size: 64}}
data: {{tokenizer: {arithmetic_data['tokenizer']}}}
deepspeed: {{enabled: false}}
ray: {{num_cpus: 2, cpus_per_worker: 0.2, storage_path: {tmp_path / 'ray'}}}
tracking: {{tracking_uri: 'sqlite:///{tmp_path}/mlruns.db', experiment_name: tune-resume}}
tune: {{name: resume, cpus_per_trial: 0.05, max_concurrent_trials: 1}}
""")
    (tmp_path / "sweep.yaml").write_text("train.train_mode: {grid: [Normal, MIRROR]}\n")
    cmd = [sys.executable, "-m", "mdm", "tune", "--config", str(tmp_path / "base.yaml"),
           "--sweep", str(tmp_path / "sweep.yaml")]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    exp_dir = tmp_path / "ray" / "resume"

    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 600
            while time.time() < deadline and "TERMINATED" not in _trial_states(exp_dir).values():
                assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                time.sleep(1)
            states = _trial_states(exp_dir)
        finally:
            os.killpg(first.pid, signal.SIGKILL)  # the driver we started and its group (its embedded Ray)
            first.wait()
    assert list(states.values()).count("TERMINATED") == 1 and len(states) == 2, states
    done = next(t for t, s in states.items() if s == "TERMINATED")
    done_result = exp_dir / done / "result.json"
    before = (done_result.read_text(), done_result.stat().st_mtime)
    done_run = next(r for r in _runs(uri) if r.data.tags.get("mdm.run") == f"resume-{done}")
    assert done_run.info.status == "FINISHED"
    time.sleep(2)  # let the killed cluster's processes go before a new one starts

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming the interrupted sweep" in second.stderr
    after = _trial_states(exp_dir)
    assert set(after) == set(states) and set(after.values()) == {"TERMINATED"}
    assert (done_result.read_text(), done_result.stat().st_mtime) == before  # the finished trial did not rerun
    runs = _runs(uri)
    kids = [r for r in runs if r.data.tags.get("mdm.role") == "trial"]
    assert len([r for r in runs if r.data.tags.get("mdm.role") == "parent"]) == 1
    assert sorted(r.data.tags["mdm.run"] for r in kids) == sorted(f"resume-{t}" for t in states)
    assert sorted(r.info.run_name for r in kids) == ["MIRROR", "Standard"]  # shown by their swept values
    assert {r.info.status for r in runs} == {"FINISHED"}
    again = next(r for r in kids if r.info.run_id == done_run.info.run_id)
    assert again.info.end_time == done_run.info.end_time
    assert "mlflow ui --backend-store-uri" in second.stdout and "best_config.yaml" in second.stdout

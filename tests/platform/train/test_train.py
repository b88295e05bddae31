"""End-to-end training on a real local Ray with real DeepSpeed (gloo) and a real MLflow sqlite store.

One uninterrupted reference run (2 workers, ZeRO-2, P-POTS on, a local storage root) is compared with a run
on flaky object storage (issue #25, item 2): its data, checkpoints and export live in S3 (the moto server)
behind a proxy that fails 10% of requests (500, 503, connection resets; this module's Ray starts with every
S3 client pointed at the proxy). A worker process is killed (Ray restarts the group from the latest
checkpoint), then storage goes down for longer than the S3 client retries while the next checkpoint is
written: the run stops with one line naming the address and the latest complete checkpoint, which is intact.
Re-run under the same name, it resumes from there: every step's loss must equal the reference's (CPU fp32).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from ray import cloudpickle  # noqa: E402
from ray.train import TrainingFailedError  # noqa: E402
from ray.train.v2.api.callback import UserCallback  # noqa: E402

from mdm.platform import storage  # noqa: E402
from mdm.platform.config import load_config  # noqa: E402
from mdm.platform.train.driver import train_driver  # noqa: E402
from mdm.platform.train.interrupt import storage_failure  # noqa: E402

STEPS, SAVE_EVERY = 12, 4
# The callback below runs in Ray Train's controller, which cannot import this test module: ship it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class StepLog(UserCallback):
    """Appends every reported step to a file; SIGKILLs one Train worker process at the first report of
    each step in `kill_at`; at the first report of `outage_at` writes `outage_flag` (the fault proxy then
    answers every request 503 for a few seconds)."""

    def __init__(self, path: str, kill_at: tuple[int, ...] = (), outage_at: int = -1, outage_flag: str = "") -> None:
        self.path, self.kill_at, self.outage_at, self.outage_flag = path, list(kill_at), outage_at, outage_flag

    def after_report(self, run_context, metrics, checkpoint):
        step = metrics[0].get("step")
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "checkpoint": checkpoint is not None}) + "\n")
        if step == self.outage_at:
            self.outage_at = -1
            open(self.outage_flag, "w").close()
        if self.kill_at and step == self.kill_at[0]:
            import ray._private.state

            self.kill_at.pop(0)
            pids = sorted(a["Pid"] for a in ray._private.state.actors().values()
                          if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE")
            os.kill(pids[-1], signal.SIGKILL)


def _cfg(root: Path, data: dict, **extra: str):
    sets = {
        "train.train_data_path": data["train"], "data.tokenizer": data["tokenizer"],
        "model.d_model": 32, "model.n_layers": 2, "model.n_heads": 2, "model.mlp_hidden_size": 64,
        # ~200 training rows: 12 micro-batches per worker an epoch, 2 accumulated per step -> 2 epochs.
        "train.train_ratio": 0.5, "train.grad_accum": 2,
        "train.batch_size_per_gpu": 8, "train.max_len": 64, "train.lr": 3e-3, "train.warmup_steps": 2,
        "train.max_steps": STEPS, "train.logging_steps": 1, "train.save_strategy": "steps",
        "train.save_steps": SAVE_EVERY, "train.eval_strategy": "steps", "train.eval_steps": SAVE_EVERY,
        "train.PPOTS": True, "train.num_samples_x0": 8, "train.num_samples_t": 6, "train.num_samples_xt": 2,
        "ray.num_workers": 2, "ray.cpus_per_worker": 0.5, "deepspeed.zero_stage": 2,
        "ray.storage_path": root / "ray", "train.output_dir": root / "out",
        "tracking.tracking_uri": f"sqlite:///{root}/mlruns.db", "tracking.experiment_name": "test",
    }
    sets.update(extra)
    return load_config([], [f"{k}={v}" for k, v in sets.items()])


def _history(root: Path, run_name: str, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns.db")
    exp = client.get_experiment_by_name("test")
    run = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.runName` = '{run_name}'")
    assert len(run) == 1, f"expected one MLflow run named {run_name}, got {len(run)}"
    hist = client.get_metric_history(run[0].info.run_id, key)
    return sorted((m.step, m.value) for m in hist)


def _steps(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def flaky_s3(s3_endpoint, tmp_path_factory):
    """The S3 server behind the fault proxy: 10% of requests fail; once its flag file appears, the next
    checkpoint upload starts a 10 s outage (longer than the S3 client's retries)."""
    from multinode.fault_proxy import FaultProxy

    flag = str(tmp_path_factory.mktemp("outage") / "down")
    with FaultProxy(s3_endpoint, fault_rate=0.1, seed=0, outage_flag=flag, outage_match="/checkpoint_",
                    outage_s=10.0) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        try:
            yield proxy
        finally:
            os.environ["AWS_ENDPOINT_URL"] = s3_endpoint


@pytest.fixture(scope="module")
def ray_local(flaky_s3, ray_local):
    """This module's Ray, started once AWS_ENDPOINT_URL names the proxy: its workers' S3 clients use it."""
    return ray_local


@pytest.fixture(scope="module")
def reference(ray_local, arithmetic_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    result = train_driver(_cfg(root, arithmetic_data), run_name="reference", mlflow_tags={"suite": "platform"})
    return root, result


def test_two_workers_zero2_loss_falls_and_mlflow_holds_the_run(reference):
    root, result = reference
    assert result.error is None
    assert result.metrics["step"] == STEPS and result.metrics["export_dir"] == str(root / "out/reference/final")
    assert result.metrics["epoch"] == 1  # the run crossed into a second pass over the data
    losses = dict(_history(root, "reference", "train/loss"))
    assert sorted(losses) == list(range(1, STEPS + 1))
    evals = _history(root, "reference", "eval/loss")
    assert [s for s, _ in evals] == [4, 8, 12]
    # The tiny model learns: held-out loss (fixed noise) and training loss both fall.
    assert evals[-1][1] < evals[0][1] - 0.3
    assert sum(losses[s] for s in (10, 11, 12)) < sum(losses[s] for s in (1, 2, 3)) - 0.5
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns.db")
    run = client.search_runs([client.get_experiment_by_name("test").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.tags["suite"] == "platform"
    assert run.data.params["deepspeed.zero_stage"] == "2" and run.data.params["train.lr"] == "0.003"
    for key in ("train/lr", "train/grad_norm", "train/tokens_per_s", "train/data_wait_fraction", "ppots/w_mean"):
        assert key in run.data.metrics, key
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "ppots.png", "final_model"} <= top
    model_files = {os.path.basename(a.path) for a in client.list_artifacts(run.info.run_id, "final_model")}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= model_files


def test_export_loads_with_from_pretrained(reference, arithmetic_data):
    import mdm.engines.llada_plus.model  # noqa: F401  (registers model_type "llada" with Auto*)
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    root, result = reference
    model = AutoModelForMaskedLM.from_pretrained(result.metrics["export_dir"])
    tok = AutoTokenizer.from_pretrained(result.metrics["export_dir"])
    assert len(tok) == len(AutoTokenizer.from_pretrained(arithmetic_data["tokenizer"]))
    ids = torch.tensor([tok("What is 2 plus 3?")["input_ids"]])
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)


def test_flaky_storage_killed_worker_and_outage_then_rerun_resumes_with_identical_losses(reference, arithmetic_data,
                                                                                      flaky_s3, tmp_path):
    """On S3 behind the fault proxy: kill a worker at step 6 (max_failures 1: Ray restarts the group from the
    step-4 checkpoint); at step 7 storage goes down for longer than the S3 client retries, so the step-8
    checkpoint cannot be written and the run stops (failures exhausted) with one line naming the address and
    the intact step-4 checkpoint. The same command again resumes from step 4. Every step's loss equals the
    uninterrupted, fault-free reference's."""
    root = reference[0]
    log = tmp_path / "steps.jsonl"
    data = storage.upload(arithmetic_data["train"], "s3://mdm/flaky/train.jsonl")
    cfg = _cfg(root, arithmetic_data, **{"ray.max_failures": 1, "ray.storage_path": "s3://mdm/flaky/ray",
                                         "train.output_dir": "s3://mdm/flaky/out", "train.train_data_path": data})
    with pytest.raises(TrainingFailedError) as failed:
        train_driver(cfg, run_name="interrupted",
                     callbacks=[StepLog(str(log), kill_at=(6,), outage_at=7, outage_flag=flaky_s3.outage_flag)])
    line = storage_failure(failed.value)
    assert line is not None and line.startswith("checkpoint of step 8 not saved: could not write "
                                                "s3://mdm/flaky/ray/interrupted: "), failed.value
    assert "the latest complete checkpoint, step 4, is intact" in line, line
    first = _steps(log)
    assert [r["step"] for r in first] == [1, 2, 3, 4, 5, 6] + [5, 6, 7]
    assert [r["step"] for r in first if r["checkpoint"]] == [4]  # the restart began right after step 4

    result = train_driver(cfg, run_name="interrupted", callbacks=[StepLog(str(log))])  # the same command again
    assert [r["step"] for r in _steps(log)[len(first):]] == list(range(5, STEPS + 1))
    assert result.error is None and result.metrics["step"] == STEPS
    assert result.metrics["optimizer_steps"] == STEPS  # DeepSpeed's own counter, restored from the checkpoint
    assert result.metrics["export_dir"] == "s3://mdm/flaky/out/interrupted/final"
    assert storage.exists("s3://mdm/flaky/out/interrupted/final/model.safetensors")
    ref = dict(_history(root, "reference", "train/loss"))
    got = _history(root, "interrupted", "train/loss")
    assert {s for s, _ in got} == set(range(1, STEPS + 1))
    for step, value in got:  # every logged value, replayed ones included
        assert value == pytest.approx(ref[step], abs=1e-6), step
    assert dict(_history(root, "interrupted", "eval/loss"))[STEPS] == pytest.approx(
        dict(_history(root, "reference", "eval/loss"))[STEPS], abs=1e-6)
    counts = flaky_s3.counts  # the faults really happened, of every kind
    assert counts["requests"] > 150 and min(counts["500"], counts["503"], counts["reset"]) >= 1, counts
    assert counts["500"] + counts["503"] + counts["reset"] >= 8 and counts["outage"] >= 3, counts

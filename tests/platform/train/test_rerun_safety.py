"""Re-runs are safe, on a real local Ray, real MLflow sqlite store and the plain-torch trainer (tiny model).

- A finished run with `save_strategy: no`, run again, says so in one line and returns its result; its MLflow
  run stays FINISHED (it used to crash on the final marker checkpoint and flip the run to FAILED).
- Two drivers of one run: while the first (another process) holds the run, the second fails at once naming
  it. The first is then SIGKILLed after logging past its last checkpoint; the same command again takes over
  its lease with a note, resumes from that checkpoint, and leaves one MLflow run of that name, FINISHED, with
  exactly one point per step; the killed attempt's RUNNING run is ended KILLED and folded beneath it. That run
  is a LoRA fine-tune (`model.lora.r=8`) of a saved base under DeepSpeed ZeRO-2, so it also shows the LoRA
  path end to end: the resumed step's loss equals the killed attempt's, the trainable parameters and the
  memory plan are logged, and the export is PEFT's adapter, which moved the adapted weights of its recorded
  base. Then a pickle planted in the checkpoint a further run would resume from is refused naming the file; its payload
  never runs (in the same test, to train one run fewer).
- The presets checkpoint periodically by default, so an interrupted default run has something to resume.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest  # noqa: E402
import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from ray.train import TrainingFailedError  # noqa: E402

from mdm.platform.config import load_config  # noqa: E402
from mdm.platform.train.driver import train_driver  # noqa: E402
from mdm.platform.train.lease import LEASE_FILE, LeaseError  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rerun")


@pytest.fixture(scope="module")
def base_model(arithmetic_data, root) -> str:
    """A tiny random LLaDA saved with the session's arithmetic tokenizer: the base a LoRA run adapts."""
    from mdm.platform.registry import get_registry, load_builtins
    from mdm.platform.tokenizer import load_tokenizer

    load_builtins()
    tok = load_tokenizer(arithmetic_data["tokenizer"])
    cfg = load_config([], ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.mlp_hidden_size=64"])
    torch.manual_seed(0)
    model = get_registry("engines").get("llada_plus").build_model(cfg.model, "tiny", tok)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return str(root / "base")


def _sets(root: Path, data: dict, run_name: str, **extra) -> dict:
    sets = {"train.train_data_path": data["train"], "data.tokenizer": data["tokenizer"], "run_name": run_name,
            "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.mlp_hidden_size": 64,
            "train.batch_size_per_gpu": 8, "train.max_len": 64, "train.max_steps": 2, "train.logging_steps": 1,
            "train.eval_strategy": "no", "deepspeed.enabled": False, "ray.num_workers": 1,
            "ray.cpus_per_worker": 0.5, "ray.storage_path": str(root / "ray"), "train.output_dir": str(root / "out"),
            "tracking.tracking_uri": f"sqlite:///{root}/mlruns.db", "tracking.experiment_name": "rerun"}
    sets.update(extra)
    return sets


def _cfg(sets: dict):
    return load_config([], [f"{k}={v}" for k, v in sets.items()])


def _runs(root: Path, name: str) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns.db")
    exp = client.get_experiment_by_name("rerun")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.runName` = '{name}'")


def test_presets_checkpoint_periodically_by_default():
    base = load_config()
    assert base.train.save_strategy == "steps"
    tiny = load_config([str(REPO / "experiments/configs/base.yaml"), str(REPO / "experiments/configs/tiny.yaml")])
    assert tiny.train.save_strategy == "steps" and 0 < tiny.train.save_steps < tiny.train.max_steps


@pytest.mark.slow
def test_finished_run_with_save_no_is_not_trained_again(ray_local, arithmetic_data, root, capsys):
    sets = _sets(root, arithmetic_data, "nosave", **{"train.save_strategy": "no"})
    first = train_driver(_cfg(sets))
    assert first.error is None and first.metrics["step"] == 2
    assert [r.info.status for r in _runs(root, "nosave")] == ["FINISHED"]
    capsys.readouterr()

    again = train_driver(_cfg(sets))
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if "already finished" in x]
    assert line == [f"mdm train nosave: already finished at step 2 (model: {root}/out/nosave/final); nothing to "
                    f"train (to train afresh, set run_name to a new name or delete {root}/ray/nosave)"], err
    assert again.metrics["export_dir"] == first.metrics["export_dir"] and again.metrics["step"] == 2
    assert [r.info.status for r in _runs(root, "nosave")] == ["FINISHED"]
    # Asked for more steps, it cannot continue (no training state was kept) and says why, before any worker.
    with pytest.raises(ValueError, match=r"run nosave finished at step 2 with train.save_strategy: 'no' and kept "
                                         r"no training state to continue to step 3 from; to train afresh"):
        train_driver(_cfg({**sets, "train.max_steps": 3}))
    assert [r.info.status for r in _runs(root, "nosave")] == ["FINISHED"]


def _adapter_export_holds_the_training(root: Path, base: str) -> None:
    """The LoRA run's export is PEFT's adapter on `base` (its recorded base), loaded the way every evaluation path
    loads it (`eval_model`, what `mdm infer --adapter` runs: tests/platform/infer/test_batch_infer.py); the trained
    adapters moved the weights they adapt, and only those; the run's logged MLflow model holds those weights."""
    from mdm.platform.adapter import adapter_base, eval_model
    from mdm.platform.registry import get_registry
    from mdm.platform.tokenizer import load_tokenizer

    export = root / "out" / "shared" / "final"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in export.iterdir()}
    assert adapter_base(export) == base
    spec, cfg, tok = get_registry("engines").get("llada_plus"), load_config([], []), load_tokenizer(base)
    before = spec.build_model(cfg.model, base, tok).state_dict()
    after = eval_model(spec, cfg.model, base, tok, adapter=str(export)).state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(".blocks." in k and k.endswith(("_proj.weight", "attn_out.weight", "ff_out.weight"))
                         for k in moved), moved  # the block projections; the output head is never adapted

    # The run's MLflow model (the adapter, logged as a pyfunc) samples with the same merged weights.
    import mlflow

    (run,) = _runs(root, "shared")
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlruns.db")
    logged = mlflow.pyfunc.load_model(f"models:/{run.outputs.model_outputs[0].model_id}")
    held = logged.unwrap_python_model().model.state_dict()
    assert held.keys() == after.keys() and all(torch.equal(held[k], after[k]) for k in after)
    assert len(logged.predict(["What is 2 plus 3?"])) == 1


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.mark.slow
def test_second_driver_refused_then_sigkilled_run_resumes_cleanly(ray_local, arithmetic_data, root, base_model,
                                                                  capsys):
    import ray

    from rerun_driver import KILL_AT

    sets = _sets(root, arithmetic_data, "shared", **{"train.max_steps": 8, "train.save_steps": 3,
                                                      "ray.address": ray.get_runtime_context().gcs_address,
                                                      "train.model": base_model, "model.lora.r": 8,
                                                      "model.lora.alpha": 16, "deepspeed.enabled": True,
                                                      "deepspeed.zero_stage": 2})
    work = root / "shared_work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(HERE / "rerun_driver.py"), json.dumps(sets), str(work)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not (work / "reached").exists():
            assert proc.poll() is None, f"the first driver ended early:\n{proc.stdout.read()[-3000:]}"
            assert time.time() < deadline, "the first driver never reached the kill step"
            time.sleep(0.2)
        lease = json.loads((root / "ray" / "shared" / LEASE_FILE).read_text())
        assert lease["pid"] == proc.pid
        t0 = time.perf_counter()
        with pytest.raises(LeaseError) as e:
            train_driver(_cfg(sets))
        assert time.perf_counter() - t0 < 5
        assert f"run shared is already being trained by {lease['host']} pid {proc.pid} (started " in str(e.value)
    finally:
        (work / "go").touch()
        proc.wait(timeout=120)
    assert proc.returncode == -9
    killed = _runs(root, "shared")
    assert [r.info.status for r in killed] == ["RUNNING"]  # what a SIGKILL leaves
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns.db")
    lost = {m.step: m.value for m in client.get_metric_history(killed[0].info.run_id, "train/loss")}
    assert max(lost) >= KILL_AT  # it logged past its step-3 checkpoint
    capsys.readouterr()

    result = train_driver(_cfg(sets))  # the same command again
    err = capsys.readouterr().err
    assert f"mdm: taking over the lease of run shared from {lease['host']} pid {proc.pid} " in err
    assert f"process {proc.pid} no longer exists" in err
    assert result.error is None and result.metrics["step"] == 8
    assert not (root / "ray" / "shared" / LEASE_FILE).exists()

    runs = _runs(root, "shared")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.tags["mdm.attempt"] == "2" and run.data.tags["mdm.resumed_from_step"] == "3"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 9)), steps  # one point per step
    got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    for step in (1, 2, 3):  # kept from the killed attempt, up to its checkpoint
        assert got[step] == lost[step]
    assert got[KILL_AT] == pytest.approx(lost[KILL_AT], abs=1e-6)  # replayed from the checkpoint: same numbers
    old = client.get_run(killed[0].info.run_id)
    assert old.info.status == "KILLED" and old.info.run_name == "shared (attempt 1, superseded)"
    assert old.data.tags["mdm.superseded_by"] == run.info.run_id
    assert run.data.params["model.lora.r"] == "8"
    assert 0 < run.data.metrics["model/params_trainable"] < run.data.metrics["model/params_total"] / 5
    assert run.data.params["plan/gpu_gib"] == "cpu" and float(run.data.params["plan/total_gib"]) > 0  # the plan
    _adapter_export_holds_the_training(root, base_model)

    # Finally (reusing this run's checkpoints rather than training another run): a pickle planted in the
    # checkpoint the next run resumes from is refused, naming the file, and its payload never runs.
    latest = max(p for p in (root / "ray" / "shared").glob("checkpoint_*") if p.is_dir())
    target, marker = latest / "objective.pt", root / "planted_marker"
    torch.save({"rounds": _Payload(marker)}, target)
    with pytest.raises(TrainingFailedError) as e:
        train_driver(_cfg({**sets, "train.max_steps": 9}))  # resumes from `latest` to go on to step 9
    assert f"refusing to load checkpoint file {target}: it is not plain data (it asks for the Python object exec)" \
        in str(e.value)
    assert not marker.exists()

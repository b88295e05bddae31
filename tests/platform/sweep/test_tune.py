"""Sweeps end to end on CPU: real Ray Tune over real tiny training runs (train_driver), real MLflow sqlite store.

- a 2-trial grid (MIRROR with PPOTS off/on; Normal against MIRROR is the comparison test's grid below) driven
  by `mdm tune` in a subprocess joined to this module's Ray, one trial at a time, whose driver is killed once
  the Tune experiment state records a finished trial; the same sweep run again (here, in this process)
  resumes it and runs only the unfinished trial: the finished trial's result file is untouched, every trial
  ends TERMINATED. Then the store holds 1 parent + 2 children (none
  duplicated, none left RUNNING; the finished ones with their original end times) named by their swept
  values, with the trials' params (p_model "inert" with PPOTS off, no run_name) and metrics; the parent's
  description holds the search space and the driver's context tags reach the children; each child has the
  worker's diag/ window, system metrics, the dataset input and its export as an MLflow model; the ranking
  agrees with the metrics the workers logged; the best-config YAML loads and trains (in process);
- ASHA stops a trial whose learning rate diverges before its last step (trials run one after another, so the
  bad one meets a recorded rung), and its child run ends KILLED, never RUNNING.

Data: the arithmetic task's processed rows (conftest `arithmetic_data`); no run goes past one epoch.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import glob  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from mdm.platform.config import load_config  # noqa: E402

pytestmark = pytest.mark.timeout(900)


def write_base(root: Path, data: dict[str, str]) -> Path:
    """The tiny base config of these tests: 1-layer model, eval every 2 steps, no DeepSpeed, sqlite MLflow."""
    base = root / "base.yaml"
    base.write_text(f"""
train: {{train_data_path: {data['train']}, output_dir: {root / 'out'}, max_steps: 4, batch_size_per_gpu: 4,
        max_len: 64, train_ratio: 0.9, eval_strategy: steps, eval_steps: 2, logging_steps: 1, save_strategy: 'no',
        lr: 1.0e-3, warmup_steps: 0, num_samples_x0: 8, num_samples_t: 4, num_samples_xt: 1}}
model: {{d_model: 32, n_layers: 1, n_heads: 2, mlp_hidden_size: 64}}
data: {{tokenizer: {data['tokenizer']}}}
deepspeed: {{enabled: false}}
ray: {{num_cpus: 2, cpus_per_worker: 0.2, storage_path: {root / 'ray'}}}
tracking: {{tracking_uri: 'sqlite:///{root}/mlruns.db', experiment_name: tune-test}}
tune: {{cpus_per_trial: 0.05, max_concurrent_trials: 2}}
""")
    return base


@pytest.fixture(scope="module")
def env(tmp_path_factory, arithmetic_data, ray_local):
    root = tmp_path_factory.mktemp("tune")
    return {"root": root, "base": write_base(root, arithmetic_data), "uri": f"sqlite:///{root}/mlruns.db"}


def _client(env):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(env["uri"])
    return c, c.get_experiment_by_name("tune-test").experiment_id


def _runs(env, sweep):
    c, exp = _client(env)
    return c.search_runs([exp], filter_string=f"tags.`mdm.sweep` = '{sweep}'", max_results=1000)


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


def _kill_after_first_finished_trial(env, sweep: Path, log: Path, sets: list[str]) -> dict[str, str]:
    """`mdm tune` in a subprocess joined to this module's Ray, SIGKILLed once a trial is TERMINATED (Ray then
    ends that driver's job: its trials' actors); the trial states it left."""
    import ray

    cmd = [sys.executable, "-m", "mdm", "tune", "--config", str(env["base"]), "--sweep", str(sweep),
           *[a for kv in sets for a in ("--set", kv)]]
    exp_dir = env["root"] / "ray" / "grid2"
    with open(log, "w") as out:
        first = subprocess.Popen(cmd, env={**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address},
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 600
            while time.time() < deadline and "TERMINATED" not in _trial_states(exp_dir).values():
                assert first.poll() is None, log.read_text()[-3000:]
                time.sleep(0.5)
            states = _trial_states(exp_dir)
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    time.sleep(2)  # let the killed job's actors go
    return states


def test_grid_sweep_killed_and_resumed_parent_children_table_and_best_config(env, capsys):
    from mdm.platform.sweep.sweep import run_sweep
    from mdm.platform.tokenizer import load_tokenizer
    from mdm.platform.tracking.attempts import SUPERSEDED_BY
    from mdm.platform.tracking.context import context_tags
    from mdm.platform.train.inprocess import fit_in_process, load_memory_data

    sweep = env["root"] / "grid2.yaml"
    sweep.write_text("train.PPOTS: {grid: [false, true]}\n")
    sets = ["tune.name=grid2", "train.train_mode=MIRROR", "tune.max_concurrent_trials=1"]
    states = _kill_after_first_finished_trial(env, sweep, env["root"] / "first.log", sets)
    done = [t for t, st in states.items() if st == "TERMINATED"]
    assert len(done) == 1, states
    exp_dir = env["root"] / "ray" / "grid2"
    before = {t: (exp_dir / t / "result.json").read_text() for t in done}
    ended = {r.data.tags["mdm.run"]: r.info.end_time for r in _runs(env, "grid2")
             if r.data.tags.get("mdm.role") == "trial" and r.data.tags["mdm.run"] in {f"grid2-{t}" for t in done}}
    assert len(ended) == len(done), (ended, done)

    # The same sweep again (a new driver, here on this module's Ray): it resumes.
    res = run_sweep(load_config([str(env["base"])], sets), sweep)
    printed = capsys.readouterr()
    assert res.restored and "resuming the interrupted sweep" in printed.err
    assert "mlflow ui --backend-store-uri" in printed.out and "best_config.yaml" in printed.out
    after = _trial_states(exp_dir)
    assert set(after) >= set(states) and len(after) == 2 and set(after.values()) == {"TERMINATED"}, after
    # The finished trial did not run again: its results (each row with its own timestamps) are unchanged. (The
    # file itself may be copied again: on the same Ray session Tune syncs the trial's staged directory anew.)
    for t, kept in before.items():
        assert (exp_dir / t / "result.json").read_text() == kept
    assert [r["status"] for r in res.rows] == ["FINISHED"] * 2
    assert {r["params"]["train.PPOTS"] for r in res.rows} == {False, True}
    values = [r["metric"] for r in res.rows]
    assert all(math.isfinite(v) for v in values) and values == sorted(values)

    runs = _runs(env, "grid2")
    parents = [r for r in runs if r.data.tags.get("mdm.role") == "parent"]
    # A trial killed mid-run restarts in a fresh MLflow run of the same name: the killed attempt's run is
    # folded beneath it, KILLED (tracking.attempts); the UI shows one run per trial.
    trials = [r for r in runs if r.data.tags.get("mdm.role") == "trial"]
    kids = [r for r in trials if SUPERSEDED_BY not in r.data.tags]
    for old in (r for r in trials if SUPERSEDED_BY in r.data.tags):
        assert old.info.status == "KILLED" and old.data.tags["mlflow.parentRunId"] == old.data.tags[SUPERSEDED_BY]
        assert old.data.tags["mdm.run"] not in ended  # only unfinished trials ran again
    seen = [(r.info.run_name, r.data.tags.get("mdm.run"), r.info.status) for r in trials]
    assert len(parents) == 1 and len(kids) == 2, (len(parents), seen, states)  # none duplicated by the resume
    assert sorted(r.data.tags["mdm.run"] for r in kids) == sorted(f"grid2-{t}" for t in after)
    assert {r.data.tags["mdm.run"]: r.info.end_time for r in kids if r.data.tags["mdm.run"] in ended} == ended
    parent = parents[0]
    assert parent.data.tags["mlflow.source.name"] == context_tags()["mlflow.source.name"]
    first_source = importlib.util.find_spec("mdm.__main__").origin  # what `python -m mdm` ran
    assert parent.info.run_id == res.parent_run_id and parent.info.status == "FINISHED"
    assert parent.data.params["space.train.PPOTS"] == "grid[false, true]"
    assert parent.data.params["tune.scheduler"] == "fifo"
    c, _ = _client(env)
    by_name = {r.data.tags["mdm.run"]: r for r in kids}
    labels = {"MIRROR", "MIRROR+PPOTS(EPRS)"}
    assert {r.info.run_name for r in kids} == labels and {r["label"] for r in res.rows} == labels
    # the Ray Train worker tags what pairs runs: one seed, so the same initial weights; the same first batch
    # where the micro-batch holds the same sequences
    assert len({k.data.tags["mdm.init_digest"] for k in kids}) == 1
    assert len({k.data.tags["mdm.data_digest"] for k in kids}) == 1
    assert parent.data.tags["mlflow.user"] and "train.PPOTS: grid[false, true]" in parent.data.tags["mlflow.note.content"]
    for row in res.rows:
        kid = by_name[row["run_name"]]
        assert kid.info.run_name == row["label"] and kid.data.tags["mdm.trial_id"] == row["trial_id"]
        assert kid.info.status == "FINISHED" and kid.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "run_name" not in kid.data.params
        assert kid.data.params["train.p_model"] == ("EPRS" if row["params"]["train.PPOTS"] else "inert")
        # the context tags of the driver that started the trial: the killed `mdm tune` or this process (which
        # also gave the parent its own on resuming)
        if kid.data.tags["mdm.run"] in ended:
            assert kid.data.tags["mlflow.source.name"] == first_source
        else:
            assert kid.data.tags["mlflow.source.name"] in {first_source, parent.data.tags["mlflow.source.name"]}
        # what the Ray Train worker adds: the diag/ window, system metrics, the dataset, the MLflow model
        m = kid.data.metrics
        assert m["diag/grad_norm_mean"] > 0 and ("diag/is_ess_frac" in m) == row["params"]["train.PPOTS"]
        assert "diag/mirror_corr_pooled" in m  # MIRROR trains every trial
        assert any(k.startswith("system/") for k in m) and len(kid.inputs.dataset_inputs) == 1
        assert len(kid.outputs.model_outputs) == 1
        assert kid.data.params["train.train_mode"] == "MIRROR"
        assert kid.data.params["train.PPOTS"] == str(row["params"]["train.PPOTS"])
        # The ranking Tune saw agrees with what rank 0 logged to MLflow at the last step.
        hist = c.get_metric_history(kid.info.run_id, "eval/loss")
        assert max(h.step for h in hist) == 4
        assert abs([h.value for h in hist if h.step == 4][-1] - row["metric"]) < 1e-6
        assert len(c.get_metric_history(kid.info.run_id, "train/loss")) >= 4

    best = load_config([res.best_config_path])
    assert best.train.train_mode == "MIRROR"
    assert best.train.PPOTS == res.rows[0]["params"]["train.PPOTS"]
    assert best.run_name is None and best.train.max_steps == 4
    # ... and trains: in this process, on the same Trainer as the Ray Train workers (the trials above were the
    # Ray Train runs of this config).
    trained = load_config([res.best_config_path], ["train.max_steps=2", "tracking.enabled=false"])
    tok = load_tokenizer(trained.data.tokenizer)
    data = load_memory_data(trained, pad_id=tok.pad_token_id, vocab_size=len(tok))
    out = fit_in_process(trained, tok, data)
    assert out.final["step"] == 2 and math.isfinite(out.final["eval/loss"])


def test_asha_stops_a_diverging_trial_early(env):
    from mdm.platform.sweep.sweep import run_sweep

    # One trial at a time: the good lr records the rung at step 2 first, then the diverging lr meets it.
    cfg = load_config([str(env["base"])], ["tune.name=asha", "tune.scheduler=asha", "tune.grace_period=2",
                                           "tune.reduction_factor=2", "tune.max_concurrent_trials=1",
                                           "train.max_steps=8", "train.lr_scheduler_type=constant"])
    res = run_sweep(cfg, {"train.lr": {"grid": [1.0e-3, 30.0]}})
    by_lr = {r["params"]["train.lr"]: r for r in res.rows}
    good, bad = by_lr[1.0e-3], by_lr[30.0]
    assert good["status"] == "FINISHED" and good["step"] == 8
    assert bad["status"] == "KILLED" and bad["step"] < 8
    assert res.rows[0] is good
    c, _ = _client(env)
    kids = {r.data.tags["mdm.run"]: r for r in _runs(env, "asha") if r.data.tags.get("mdm.role") == "trial"}
    assert {r.info.run_name for r in kids.values()} == {"lr=1e-3", "lr=30"}
    assert {r.info.status for r in kids.values()} == {"FINISHED", "KILLED"}
    assert kids[bad["run_name"]].info.status == "KILLED"
    assert max(h.step for h in c.get_metric_history(kids[bad["run_name"]].info.run_id, "train/loss")) < 8


def test_comparison_with_ray_train_trials_scores_each_cell_with_batch_inference(env):
    """compare.runner: ray_train: each cell a Train job, then run_inference into the same child run."""
    from mdm.platform.compare.compare import run_comparison

    cfg = load_config([str(env["base"])], [
        "tune.name=cmp-raytrain", "train.task=arithmetic", "train.max_steps=2", "compare.runner=ray_train",
        "compare.grid={train.train_mode: [Normal, MIRROR]}", "compare.seeds=[1]", "compare.eval_limit=4",
        "eval.batch_size=4", "eval.cpus_per_actor=0.2", "eval.score_cpus=0.1",
        "eval.progress=false", "sampler.gen_length=8", "sampler.block_length=8", "sampler.steps=8",
        "tracking.log_model=false"])
    res = run_comparison(cfg)
    assert [r["status"] for r in res.rows] == ["FINISHED", "FINISHED"]
    assert [g.label for g in res.groups] == ["Standard", "MIRROR"] and all(g.n == 1 for g in res.groups)
    kids = {r.info.run_name: r for r in _runs(env, "cmp-raytrain") if r.data.tags.get("mdm.role") == "trial"}
    assert set(kids) == {"Standard seed=1", "MIRROR seed=1"}
    for name, kid in kids.items():
        m = kid.data.metrics
        # the accuracy the trial reported is the one batch inference logged into the same run
        inferred = [k for k in m if k.startswith("infer/arithmetic/test/") and k.endswith("/accuracy")]
        assert len(inferred) == 1 and m["eval/accuracy"] == m[inferred[0]] and m["eval/n"] == 4
        assert kid.data.params["train.batch_size_per_gpu"] == ("2" if name.startswith("MIRROR") else "4")
        assert kid.info.status == "FINISHED"

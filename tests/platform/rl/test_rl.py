"""`mdm rl` on a real local Ray: rollout actors (weights by object reference, a killed actor replaced), and the
whole GRPO run through the Ray Train worker group into MLflow, on a tiny model and the arithmetic task.

Run: pytest tests/platform/rl/test_rl.py
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
from ray import cloudpickle
import torch
from mlflow.tracking import MlflowClient
from ray.train.v2.api.callback import UserCallback

from mdm.platform.config import load_config
from mdm.platform.config_ops import with_overrides
from mdm.platform.fields import ConfigError
from mdm.platform.rl.driver import rl_driver
from mdm.platform.rl.rollouts import ActorSpec, Chunk, RolloutActor, RolloutPool, RolloutWorker
from mdm.platform.rl.worker import learner_weights, task_prompts
from mdm.platform.rl.rl_config import RLSections
from mdm.platform.train.digests import weights_digest

# KillLearner runs in Ray Train's controller, which cannot import this test module: ship it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TINY = {"model.d_model": 32, "model.n_layers": 2, "model.n_heads": 2, "model.mlp_hidden_size": 64,
        "sampler.gen_length": 16, "sampler.block_length": 16, "sampler.steps": 8, "sampler.temperature": 0.9}


def _cfg(root: Path, data: dict, **extra):
    sets = {**TINY, "data.tokenizer": data["tokenizer"], "train.task": "arithmetic",
            "train.batch_size_per_gpu": 4, "train.grad_accum": 2, "train.max_steps": 4, "train.logging_steps": 1,
            "train.save_strategy": "steps", "train.save_steps": 2, "train.eval_strategy": "no", "train.lr": 1e-3,
            "rl.num_generations": 4, "rl.prompts_per_step": 2, "rl.eval_steps": 2, "rl.eval_prompts": 8,
            "ray.num_workers": 1, "ray.cpus_per_worker": 0.5, "deepspeed.zero_stage": 0,
            "ray.storage_path": root / "ray", "train.output_dir": root / "out",
            "tracking.tracking_uri": f"sqlite:///{root}/mlruns.db", "tracking.experiment_name": "rl", **extra}
    return load_config([], [f"{k}={v}" for k, v in sets.items()])


def _spec(cfg, data) -> ActorSpec:
    return ActorSpec(engine=cfg.engine, auto_import=[], model_cfg=cfg.model, model="tiny", tokenizer=data["tokenizer"],
                     sampler_cfg=cfg.sampler, task="arithmetic", data_dir=None, num_generations=3, format_reward=0.0,
                     seed=0)


def test_weights_reach_the_actors_at_their_version_and_a_dead_actors_chunks_are_issued_once(
        ray_local, arithmetic_data, tmp_path):
    """Two actors; the learner's weights (perturbed) pushed as version 3 arrive bit for bit; then actor 0 is
    killed with chunks 0 and 2 queued on it: it is replaced, each of its chunks is sampled once more with the
    version-3 weights, and every chunk has exactly one result, equal to what a live actor samples for it. The
    prompts come from the task built with `rl.task_args` (operands 0-3)."""
    cfg = _cfg(tmp_path, arithmetic_data, **{"rl.task_args": "{max_operand: 3, n_train: null, n_test: 4}"})
    spec = _spec(cfg, arithmetic_data)
    learner = RolloutWorker(spec)  # the same model build as the actors and the Ray Train workers
    with torch.no_grad():
        for p in learner.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    pool = RolloutPool(lambda: RolloutActor.options(num_cpus=0.25).remote(spec), 2)
    try:
        pool.push(3, learner_weights(learner.model))
        import ray

        assert ray.get([a.weights.remote() for a in pool.actors]) == [(3, weights_digest(learner.model))] * 2
        prompts = task_prompts(RLSections(rl=cfg.rl, sampler=cfg.sampler, task="arithmetic", data_dir=None),
                               learner.tokenizer, "train", limit=4)
        assert all(int(n) <= 3 for p in prompts for n in re.findall(r"\d+", p.text))  # rl.task_args reached the task
        chunks = [Chunk(key=k, prompts=[p.ids], golds=[p.gold], seed=100 + k) for k, p in enumerate(prompts)]
        ray.get(pool.actors[0].pid.remote())
        ray.kill(pool.actors[0], no_restart=True)
        pending = pool.submit(chunks)
        results = pool.collect(pending)
        assert [r.key for r in results] == [0, 1, 2, 3] and pending.reissued == [0, 2] and pool.replaced == 1
        assert all(r.version == 3 and len(r.ids) == 3 and len(r.rewards) == 3 for r in results)
        again = pool.collect(pool.submit([chunks[0]]))[0]  # the same chunk on a live actor: the same samples
        assert again.ids == results[0].ids and again.version == 3
        assert ray.get(pool.actors[0].weights.remote()) == (3, weights_digest(learner.model))
    finally:
        pool.close()


def _run(root: Path, name: str):
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns.db")
    runs = client.search_runs([client.get_experiment_by_name("rl").experiment_id],
                              filter_string=f"tags.`mlflow.runName` = '{name}'")
    assert len(runs) == 1, f"expected one MLflow run named {name}, got {len(runs)}"
    return client, runs[0].info.run_id


def _history(root: Path, key: str, name: str = "rl") -> list[tuple[int, float]]:
    client, run_id = _run(root, name)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _e2e_cfg(root: Path, data: dict, staleness: int, workers: int, **extra):
    return _cfg(root, data, **{"rl.max_staleness": staleness, "rl.beta": 0.04, "rl.table_steps": 2,
                               "ray.num_workers": workers, "train.grad_accum": 2 // workers,
                               "deepspeed.zero_stage": 3 if workers > 1 else 0, **extra})


@pytest.fixture(scope="module")
def one_behind(ray_local, arithmetic_data, tmp_path_factory):
    """The run one step behind (staleness 1, one worker), uninterrupted: (root, result)."""
    root = tmp_path_factory.mktemp("rl")
    return root, rl_driver(_e2e_cfg(root, arithmetic_data, 1, 1), run_name="rl")


@pytest.mark.parametrize("staleness,workers", [(1, 1), (0, 2)])
def test_rl_run_trains_through_ray_train_and_logs_rewards_versions_and_evals(ray_local, arithmetic_data, tmp_path,
                                                                             one_behind, staleness, workers):
    """4 optimizer steps of GRPO (2 prompts x 4 completions a batch): one step behind (staleness 1, one worker),
    batch k is sampled with the weights of step k - 1 (the first on-policy); on-policy (0; two workers under
    ZeRO-3, both gathering the partitioned weights rank 0 pushes, rank 0 broadcasting each batch, 4 rows a
    rank), with those of step k. The
    MLflow run holds the rewards and KL of every step, held-out exact match at steps 0, 2 and 4, rollout
    tables at steps 0 and 2, and the export is a directory."""
    if staleness:
        tmp_path, result = one_behind
    else:
        result = rl_driver(_e2e_cfg(tmp_path, arithmetic_data, staleness, workers), run_name="rl")
    assert result.metrics["step"] == 4 and os.path.isdir(result.metrics["export_dir"])
    versions = [v for _, v in _history(tmp_path, "rl/weights_version")]
    assert versions == ([0, 0, 1, 2] if staleness else [0, 1, 2, 3])
    assert [v for _, v in _history(tmp_path, "rl/staleness")] == ([0, 1, 1, 1] if staleness else [0, 0, 0, 0])
    assert [s for s, _ in _history(tmp_path, "rl/eval_accuracy")] == [0, 2, 4]
    for key in ("rl/reward", "rl/pass_at_k", "rl/completion_len", "rl/kl", "rl/clip_ratio", "train/loss"):
        assert [s for s, _ in _history(tmp_path, key)] == [1, 2, 3, 4], key
    assert all(0 <= v <= 1 for _, v in _history(tmp_path, "rl/pass_at_k"))
    assert all(v >= 0 for _, v in _history(tmp_path, "rl/kl"))
    client, run_id = _run(tmp_path, "rl")
    tables = sorted(a.path for a in client.list_artifacts(run_id, "rollouts") if a.path.endswith(".jsonl"))
    assert tables == ["rollouts/step_000000.jsonl", "rollouts/step_000002.jsonl"]
    rows = [json.loads(line) for line in Path(client.download_artifacts(run_id, tables[1], str(tmp_path)))
            .read_text().splitlines()]
    assert len(rows) == 8 and {r["weights_version"] for r in rows} == {1 if staleness else 2}  # batch 2's
    assert all(r["prompt"] and r["gold"] and r["reward"] == r["score"] for r in rows)


class KillLearner(UserCallback):
    """SIGKILLs the Ray Train worker at the first report of step `at` (Train restarts the group)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def after_report(self, run_context, metrics, checkpoint):
        if metrics and metrics[0].get("step") == self.at:
            import ray._private.state

            self.at = -1
            pids = [a["Pid"] for a in ray._private.state.actors().values()
                    if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"]
            os.kill(pids[0], signal.SIGKILL)


def test_a_killed_learner_resumes_from_its_checkpoint_with_the_same_rollout_stream(arithmetic_data, one_behind):
    """The run one step behind again, its learner killed at step 3 (max_failures 1): Train restarts it from the
    step-2 checkpoint, which holds batch 2 as the actors sampled it with the step-1 weights (collected when the
    checkpoint was taken), so steps 3 and 4 train on the uninterrupted run's rollouts: the same rewards, weights
    versions and losses, step for step."""
    root, _ = one_behind
    cfg = _e2e_cfg(root, arithmetic_data, 1, 1, **{"ray.max_failures": 1})
    result = rl_driver(cfg, run_name="killed", callbacks=[KillLearner(3)])
    assert result.metrics["step"] == 4
    for key in ("rl/weights_version", "rl/staleness", "rl/reward", "rl/completion_len", "train/loss"):
        again = _history(root, key, "killed")
        assert sorted({s for s, _ in again}) == [1, 2, 3, 4], key
        assert dict(again) == dict(_history(root, key, "rl")), key  # step 3 logged twice: both the same


def test_rl_comparison_grids_the_log_probability_estimator(ray_local, arithmetic_data, tmp_path):
    """`compare.grid` over `rl.logp_estimator` (compare.runner ray_train): each cell an `mdm rl` job named by
    its estimator, scored greedy by batch inference, paired by seed against GRPO(d1), with reward curves."""
    from mdm.platform.compare.compare import run_comparison

    cfg = _cfg(tmp_path, arithmetic_data, **{
        "train.max_steps": 2, "rl.eval_steps": 0, "tune.name": "cmp-rl", "tune.cpus_per_trial": 0.05,
        "compare.runner": "ray_train", "compare.equalize": "batch", "compare.seeds": "[1]",
        "compare.grid": "{rl.logp_estimator: [d1, coupled]}", "compare.baseline": "GRPO(d1)",
        "compare.paired_metrics": "[eval/accuracy]", "compare.eval_limit": 4, "eval.batch_size": 4,
        "eval.cpus_per_actor": 0.2, "eval.score_cpus": 0.1, "eval.progress": False, "tracking.log_model": False})
    res = run_comparison(with_overrides(cfg, {"rl.enabled": True}))
    assert [r["status"] for r in res.rows] == ["FINISHED", "FINISHED"]
    assert [g.label for g in res.groups] == ["GRPO(d1)", "GRPO(coupled)"] and all(g.n == 1 for g in res.groups)
    assert res.groups[0].is_baseline and res.groups[1].primary is not None and res.groups[1].primary.n == 1
    assert "curves_rl_reward.png" in res.files and "rl/reward" in res.table.splitlines()[0]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns.db")
    kids = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("rl").experiment_id],
                                                           filter_string="tags.`mdm.role` = 'trial'")}
    assert set(kids) == {"GRPO(d1) seed=1", "GRPO(coupled) seed=1"}
    for name, kid in kids.items():
        assert kid.data.params["rl.logp_estimator"] == name[5:name.index(")")]
        assert [m.step for m in client.get_metric_history(kid.info.run_id, "rl/reward")] == [1, 2]
        inferred = [k for k in kid.data.metrics if k.startswith("infer/arithmetic/test/") and k.endswith("/accuracy")]
        assert len(inferred) == 1 and kid.data.metrics["eval/accuracy"] == kid.data.metrics[inferred[0]]


def test_rl_config_mistakes_are_one_line_naming_the_key(arithmetic_data, tmp_path, capsys):
    from mdm.platform.commands.rl import main

    sets = {**TINY, "data.tokenizer": arithmetic_data["tokenizer"], "train.task": "arithmetic", "train.max_steps": 4,
            "rl.prompts_per_step": 4}
    args = [f"--set={k}={v}" for k, v in sets.items()]
    assert main(args) == 2  # 4 x 6 = 24 rows on one worker with batch 8: grad_accum must be 3
    assert capsys.readouterr().err.strip() == (
        "mdm rl: error: a rollout batch of rl.prompts_per_step x rl.num_generations = 24 sequences on 1 worker(s) "
        "must be train.grad_accum x train.batch_size_per_gpu per worker; got 1 x 8 (set train.grad_accum=3)")
    with pytest.raises(ValueError, match=r"set train.grad_accum=4"):
        rl_driver(_cfg(tmp_path, arithmetic_data, **{"rl.prompts_per_step": 4}))
    with pytest.raises(ValueError, match=r"train.max_steps \(3\) must be > 0 and a multiple of rl.num_iterations"):
        rl_driver(_cfg(tmp_path, arithmetic_data, **{"train.max_steps": 3, "rl.num_iterations": 2}))
    with pytest.raises(ValueError, match="rl.max_staleness must be 0"):
        _cfg(tmp_path, arithmetic_data, **{"rl.max_staleness": 2})
    with pytest.raises(ValueError, match="rl.logp_estimator: unknown estimator 'exact'; valid: d1, mirror"):
        rl_driver(_cfg(tmp_path, arithmetic_data, **{"rl.logp_estimator": "exact"}))
    with pytest.raises(ValueError, match="train.task is not set"):
        rl_driver(_cfg(tmp_path, arithmetic_data, **{"train.task": "null"}))
    with pytest.raises(ValueError, match=r"sampler.temperature is 0: the rl.num_generations \(4\) completions"):
        rl_driver(_cfg(tmp_path, arithmetic_data, **{"sampler.temperature": 0}))
    with pytest.raises(ValueError, match="rl.num_generations must be >= 1, got 0"):
        _cfg(tmp_path, arithmetic_data, **{"rl.num_generations": 0})
    with pytest.raises(ValueError, match=r"rl.task_args \{'bogus': 1\} do not fit task 'arithmetic': .*'bogus'"):
        rl_driver(_cfg(tmp_path, arithmetic_data, **{"rl.task_args": "{bogus: 1}"}))
    with pytest.raises(ValueError, match=r"rl.task_args \{'label_noise': 1.5\} do not fit task 'arithmetic': "
                                         r"arithmetic label_noise must be in \[0, 1\], got 1.5"):
        rl_driver(_cfg(tmp_path, arithmetic_data, **{"rl.task_args": "{label_noise: 1.5}"}))
    from mdm.platform.compare.compare import run_comparison

    grid = {"compare.grid": "{rl.logp_estimator: [d1, coupled]}", "compare.baseline": "GRPO(d1)", "rl.enabled": True}
    with pytest.raises(ConfigError, match="rl.enabled: an RL cell needs its rollout actors .* compare.runner: ray_train"):
        run_comparison(_cfg(tmp_path, arithmetic_data, **grid))
    with pytest.raises(ConfigError, match="set compare.equalize: batch"):
        run_comparison(_cfg(tmp_path, arithmetic_data, **grid, **{"compare.runner": "ray_train"}))
    with pytest.raises(ValueError, match=r"rl.p_mask_prompt must be in \[0, 1\], got 1.5"):
        _cfg(tmp_path, arithmetic_data, **{"rl.p_mask_prompt": 1.5})

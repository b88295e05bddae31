"""`mdm rl` on a real local Ray: rollout actors (weights by object reference, a killed actor replaced), and the
whole GRPO run through the Ray Train worker group into MLflow, on a tiny model and the arithmetic task.

Run: pytest tests/platform/rl/test_rl.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from mdm.platform.config import load_config
from mdm.platform.rl.driver import rl_driver
from mdm.platform.rl.rollouts import ActorSpec, Chunk, RolloutActor, RolloutPool, RolloutWorker
from mdm.platform.rl.worker import learner_weights, task_prompts
from mdm.platform.rl.rl_config import RLSections
from mdm.platform.train.digests import weights_digest

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
    version-3 weights, and every chunk has exactly one result, equal to what a live actor samples for it."""
    cfg = _cfg(tmp_path, arithmetic_data)
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


def _history(root: Path, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns.db")
    run = client.search_runs([client.get_experiment_by_name("rl").experiment_id])[0]
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.parametrize("staleness,workers", [(1, 1), (0, 2)])
def test_rl_run_trains_through_ray_train_and_logs_rewards_versions_and_evals(ray_local, arithmetic_data, tmp_path,
                                                                             staleness, workers):
    """4 optimizer steps of GRPO (2 prompts x 4 completions a batch): one step behind (staleness 1, one worker),
    batch k is sampled with the weights of step k - 1 (the first on-policy); on-policy (0; two workers under
    ZeRO-2, rank 0 broadcasting each batch, 4 rows a rank), with those of step k. The
    MLflow run holds the rewards and KL of every step, held-out exact match at steps 0, 2 and 4, rollout
    tables at steps 0 and 2, and the export is a directory."""
    cfg = _cfg(tmp_path, arithmetic_data, **{"rl.max_staleness": staleness, "rl.beta": 0.04, "rl.table_steps": 2,
                                             "ray.num_workers": workers, "train.grad_accum": 2 // workers,
                                             "deepspeed.zero_stage": 2 if workers > 1 else 0})
    result = rl_driver(cfg, run_name="rl")
    assert result.metrics["step"] == 4 and os.path.isdir(result.metrics["export_dir"])
    versions = [v for _, v in _history(tmp_path, "rl/weights_version")]
    assert versions == ([0, 0, 1, 2] if staleness else [0, 1, 2, 3])
    assert [v for _, v in _history(tmp_path, "rl/staleness")] == ([0, 1, 1, 1] if staleness else [0, 0, 0, 0])
    assert [s for s, _ in _history(tmp_path, "rl/eval_accuracy")] == [0, 2, 4]
    for key in ("rl/reward", "rl/pass_at_k", "rl/completion_len", "rl/kl", "rl/clip_ratio", "train/loss"):
        assert [s for s, _ in _history(tmp_path, key)] == [1, 2, 3, 4], key
    assert all(0 <= v <= 1 for _, v in _history(tmp_path, "rl/pass_at_k"))
    assert all(v >= 0 for _, v in _history(tmp_path, "rl/kl"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns.db")
    run_id = client.search_runs([client.get_experiment_by_name("rl").experiment_id])[0].info.run_id
    tables = sorted(a.path for a in client.list_artifacts(run_id, "rollouts") if a.path.endswith(".jsonl"))
    assert tables == ["rollouts/step_000000.jsonl", "rollouts/step_000002.jsonl"]
    rows = [json.loads(line) for line in Path(client.download_artifacts(run_id, tables[1], str(tmp_path)))
            .read_text().splitlines()]
    assert len(rows) == 8 and {r["weights_version"] for r in rows} == {1 if staleness else 2}  # batch 2's
    assert all(r["prompt"] and r["gold"] and r["reward"] == r["score"] for r in rows)


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
    with pytest.raises(ValueError, match="deepspeed.zero_stage 3 is not supported yet"):
        rl_driver(_cfg(tmp_path, arithmetic_data, **{"deepspeed.zero_stage": 3}))
    with pytest.raises(ValueError, match="rl.num_generations must be >= 1, got 0"):
        _cfg(tmp_path, arithmetic_data, **{"rl.num_generations": 0})
    with pytest.raises(ValueError, match=r"rl.p_mask_prompt must be in \[0, 1\], got 1.5"):
        _cfg(tmp_path, arithmetic_data, **{"rl.p_mask_prompt": 1.5})

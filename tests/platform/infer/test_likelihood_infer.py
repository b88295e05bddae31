"""`mdm infer` in likelihood mode on real Ray (CPU): a multiple-choice task scored on the actor pool with a tiny
model trained in this session, checked against the engine hook called in this process on the same items.

Run: pytest tests/platform/infer/test_likelihood_infer.py

Independent checks: every example's per-choice estimate equals the hook's answer in this process (the engine
seeds each item from the call's seed and its tokens, so batching and actors must not change it); shards
combine as n-weighted means of independent per-shard calls; accuracy and acc_norm are recomputed from the
written log-likelihoods; `mdm score` re-scores the written predictions to the same accuracy; the metric is read
back from MLflow; and the trained model picks the right answer far above chance (25%).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from mdm.platform.commands.infer import main  # noqa: E402
from mdm.platform.config import load_config  # noqa: E402
from mdm.platform.infer.pool import InferenceError  # noqa: E402
from mdm.platform.infer.likelihood.actor import shard_mc_num, shard_seed  # noqa: E402
from mdm.platform.infer.likelihood.job import combine_shards, resolve_mode, run_likelihood  # noqa: E402
from mdm.platform.registry import get_registry  # noqa: E402
from mdm.platform.tokenizer import load_tokenizer  # noqa: E402
from tiny_mc_model import register_task  # noqa: E402

pytestmark = pytest.mark.slow
POOL = ["eval.cpus_per_actor=0.5", "eval.max_actors=2", "eval.batch_size=8", "eval.progress=false",
        "likelihood.mc_num=16"]


def _read(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _hook_values(model_dir: str, task_name: str, split: str, limit: int, mc_num: int, shard: int = 0) -> list[list]:
    """Per example, the hook's (value, stderr, n) per choice, computed in this process in one call."""
    cfg = load_config([], [f"likelihood.mc_num={mc_num}"])
    spec = get_registry("engines").get("llada_plus")
    tok = load_tokenizer(model_dir)
    model = spec.build_model(cfg.model, model_dir, tok).eval()
    task = get_registry("tasks").get(task_name)()
    exs = list(task.examples(split, limit))
    prompts = task.encode_prompts(tok, [e.prompt for e in exs])
    items, sizes = [], []
    for ex, p in zip(exs, prompts):
        texts = task.choices(ex).texts
        items += [(p, tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
        sizes.append(len(texts))
    scores = spec.loglikelihood(model, items, cfg.likelihood, torch.Generator().manual_seed(shard_seed(0, shard)))
    out, k = [], 0
    for n in sizes:
        out.append([[s.value, s.stderr, s.n_samples] for s in scores[k:k + n]])
        k += n
    return out


def test_mode_resolution_and_errors_before_ray(tmp_path, trained_mc) -> None:
    import ray

    register_task()
    assert resolve_mode(None, "auto", "arith_mc4") == "likelihood"
    assert resolve_mode(None, "auto", "arithmetic") == "generate"
    assert resolve_mode(None, "auto", "arith_mc4", prompts="p.jsonl") == "generate"
    assert resolve_mode("generate", "likelihood", "arith_mc4") == "generate"
    was = ray.is_initialized()
    cfg = load_config([], [f"tracking.tracking_uri=sqlite:///{tmp_path}/m.db", "likelihood.mc_num=2",
                           "eval.mc_shards=3"])
    with pytest.raises(InferenceError, match=r"eval.mc_shards=3 exceeds likelihood.mc_num=2"):
        run_likelihood(cfg, model=trained_mc["dir"], task="arith_mc4", out=str(tmp_path / "p.jsonl"))
    with pytest.raises(InferenceError, match="prompts without choices"):
        run_likelihood(load_config([]), model=trained_mc["dir"], task="arith_mc4", prompts="x.jsonl")
    assert main(["--mode", "likelihood", "--sampler", "fast", "--task", "arith_mc4", "--model", trained_mc["dir"],
                 "--out", str(tmp_path / "p.jsonl")]) == 2
    assert ray.is_initialized() == was and not (tmp_path / "p.jsonl").exists()


def test_multiple_choice_on_the_actor_pool(tmp_path, trained_mc, ray_local) -> None:
    from mlflow.tracking import MlflowClient

    from mdm.tasks.harness import score_files

    out = str(tmp_path / "mc.jsonl")
    db = f"sqlite:///{tmp_path}/mlruns.db"
    # no --mode: eval.mode auto picks likelihood for a multiple-choice task
    rc = main(["--task", "arith_mc4", "--model", trained_mc["dir"], "--out", out,
               *[a for kv in POOL + [f"tracking.tracking_uri={db}"] for a in ("--set", kv)]])
    assert rc == 0
    recs = _read(out)
    metrics = json.loads(Path(out).with_suffix(".metrics.json").read_text())
    assert [r["meta"]["index"] for r in recs] == list(range(60)) and metrics["rows"] == 60 == metrics["n"]
    want = _hook_values(trained_mc["dir"], "arith_mc4", "test", 60, 16)
    acc = acc_norm = 0.0
    for r, w in zip(recs, want):
        m = r["meta"]
        assert m["mode"] == "likelihood" and m["multiple_choice"] and m["n_samples"] == [16] * 4
        assert m["loglik"] == pytest.approx([x[0] for x in w], rel=1e-4, abs=1e-4)
        assert m["stderr"] == pytest.approx([x[1] for x in w], rel=1e-3, abs=1e-4)
        best = max(range(4), key=lambda i: m["loglik"][i])
        norm = max(range(4), key=lambda i: m["loglik"][i] / len(m["continuations"][i]))
        assert (m["pred_index"], m["pred_index_norm"]) == (best, norm)
        assert r["prediction"] == m["continuations"][best]
        acc += float(best == m["gold_index"])
        acc_norm += float(norm == m["gold_index"])
    assert metrics["accuracy"] == pytest.approx(acc / 60) and metrics["acc_norm"] == pytest.approx(acc_norm / 60)
    assert metrics["accuracy"] >= 0.4, metrics  # chance is 0.25; measured 0.60-0.67 over 4 seeds (tiny_mc_model.py)
    assert score_files("arith_mc4", out)["accuracy"] == pytest.approx(metrics["accuracy"])  # `mdm score`
    logged = MlflowClient(tracking_uri=db).get_run(metrics["mlflow_run_id"]).data.metrics
    for name in ("accuracy", "acc_norm"):  # infer/<task>/[...]/<metric>, whatever batch.py puts between
        got = [v for k, v in logged.items() if k.startswith("infer/arith_mc4/") and k.endswith("/" + name)]
        assert got == [pytest.approx(metrics[name])], sorted(logged)


def test_shards_combine_independent_parts(tmp_path, trained_mc, ray_local) -> None:
    out = str(tmp_path / "sh.jsonl")
    cfg = load_config([], POOL + [f"tracking.tracking_uri=sqlite:///{tmp_path}/m.db", "eval.mc_shards=3",
                                  "eval.batch_size=4", "eval.log_mlflow=false"])
    metrics = run_likelihood(cfg, model=trained_mc["dir"], task="arith_mc4", out=out, split="train", limit=8)
    recs = _read(out)
    assert len(recs) == 8 and metrics["mc_shards"] == 3
    parts = [_hook_values(trained_mc["dir"], "arith_mc4", "train", 8, shard_mc_num(16, s, 3), shard=s)
             for s in range(3)]
    assert [shard_mc_num(16, s, 3) for s in range(3)] == [6, 5, 5]
    for i, r in enumerate(recs):
        want = combine_shards([p[i] for p in parts])
        assert r["meta"]["loglik"] == pytest.approx([w[0] for w in want], rel=1e-4, abs=1e-4)
        assert r["meta"]["n_samples"] == [16] * 4
        # the combination itself: n-weighted mean, SE from the parts' variances
        v = [p[i][0] for p in parts]
        assert want[0][0] == pytest.approx(sum(x[2] * x[0] for x in v) / 16)
        assert want[0][1] == pytest.approx(math.sqrt(sum((x[2] / 16) ** 2 * x[1] ** 2 for x in v)))
    assert metrics["accuracy"] >= 0.5, metrics  # training problems: measured 0.75 (chance 0.25)


def test_combine_shards_unit() -> None:
    got = combine_shards([[[-1.0, 0.3, 2], [-2.0, 0.0, 3]], [[-3.0, 0.4, 6], [-2.0, 0.0, 3]]])
    assert got[0] == pytest.approx((-2.5, math.sqrt((2 / 8) ** 2 * 0.09 + (6 / 8) ** 2 * 0.16), 8))
    assert got[1] == pytest.approx((-2.0, 0.0, 6))
    assert dataclasses.is_dataclass(load_config([]).likelihood)


def test_openscience_letters_exact_with_one_mask(tmp_path, trained_mc, ray_local) -> None:
    """Lettered options from a local JSONL in openscience's format: a one-token answer's bound with one mask is
    log p(letter | prompt) itself, which one direct forward gives."""
    rows = [{"input": "Which particle carries the electromagnetic force?\nA) gluon\nB) photon\nC) W boson\nD) graviton",
             "output": "<think>Photons mediate EM.</think>\nThe answer is \\boxed{B}."},
            {"input": "What is the SI unit of force?", "output": "The unit is the newton.\nAnswer: newton"},
            {"input": "Pick the noble gas.\n(A) neon\n(B) sodium\n(C) chlorine", "output": "Answer: A"}]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = str(tmp_path / "os.jsonl")
    cfg = load_config([], POOL + ["likelihood.mc_num=1", f"data.task_data_dir={tmp_path}", "eval.log_mlflow=false"])
    metrics = run_likelihood(cfg, model=trained_mc["dir"], task="openscience", out=out)
    recs = _read(out)
    assert [r["meta"]["multiple_choice"] for r in recs] == [True, False, True] and metrics["n"] == 2
    assert recs[0]["meta"]["continuations"] == ["A", "B", "C", "D"] and recs[0]["meta"]["gold_index"] == 1
    assert recs[1]["meta"]["continuations"] == [rows[1]["output"]] and recs[1]["prediction"] == ""
    spec = get_registry("engines").get("llada_plus")
    tok = load_tokenizer(trained_mc["dir"])
    model = spec.build_model(cfg.model, trained_mc["dir"], tok).eval()
    task = get_registry("tasks").get("openscience")(data_dir=str(tmp_path))
    mask = model.config.mask_token_id
    for r, raw in zip([recs[0], recs[2]], [rows[0], rows[2]]):
        prompt = task.encode_prompt(tok, raw["input"])
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prompt + [mask]])).logits[0, -1].double(), -1)
        letters = [tok(c, add_special_tokens=False)["input_ids"] for c in r["meta"]["continuations"]]
        assert all(len(ids) == 1 for ids in letters)
        assert r["meta"]["loglik"] == pytest.approx([float(logp[ids[0]]) for ids in letters], abs=1e-4)
        assert r["meta"]["stderr"] == [0.0] * len(letters)  # exact: the one mask there is
        assert r["prediction"] == r["meta"]["continuations"][r["meta"]["pred_index"]]

"""Batch inference on real Ray (CPU): `mdm infer` end to end on a tiny random LLaDA, an actor killed mid-job,
and the errors that must come before any actor starts.

The model is random, so accuracy is ~0; correctness is checked against independent computations instead:
the task's own examples (ids, prompts, gold), the sampler called directly in this process on the same
prompt ids (temperature 0 => identical text), the task's scorer and the eval harness re-scoring the file.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import json  # noqa: E402
import signal  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402
import pytest  # noqa: E402
import ray  # noqa: E402

from mdm.platform.commands.infer import main  # noqa: E402
from mdm.platform.infer.generation.job import InferenceError, run_inference  # noqa: E402
from mdm.platform.config import load_config  # noqa: E402
from mdm.platform.infer.model_source import ModelSourceError  # noqa: E402
from mdm.platform.registry import get_registry, load_builtins  # noqa: E402

SAMPLER = ["sampler.gen_length=16", "sampler.block_length=16", "sampler.steps=8"]


def make_tiny_model(out_dir: str, d_model: int = 32) -> str:
    """A random 1-layer LLaDA + a BPE trained on arithmetic text, saved with save_pretrained (HF dir)."""
    from transformers import AutoTokenizer

    from mdm.tasks.tokenize import train_bpe

    load_builtins()
    task = get_registry("tasks").get("arithmetic")()
    train_bpe([ex.prompt + " " + ex.response for ex in task.examples("train", 300)], out_dir, vocab_size=200)
    tok = AutoTokenizer.from_pretrained(out_dir)
    cfg = load_config([], [f"model.d_model={d_model}", "model.n_layers=1", "model.n_heads=2",
                           "model.mlp_hidden_size=64"])
    model = get_registry("engines").get("llada_plus").build_model(cfg.model, "tiny", tok)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return make_tiny_model(str(tmp_path_factory.mktemp("tiny_llada")))


def _cfg(tmp_path: Path, *extra: str):
    return load_config([], SAMPLER + [f"tracking.tracking_uri=sqlite:///{tmp_path}/mlruns.db", *extra])


# ----------------------------------------------------------------------------- errors before any actor

def test_missing_model_path_fails_before_ray(tmp_path):
    ray.shutdown()
    cfg = _cfg(tmp_path)
    missing = tmp_path / "no_such_run" / "final"
    with pytest.raises(ModelSourceError, match="no such directory"):
        run_inference(cfg, model=str(missing), task="arithmetic", out=str(tmp_path / "p.jsonl"), limit=4)
    assert not ray.is_initialized(), "Ray was started although the model path does not exist"
    assert not (tmp_path / "p.jsonl").exists()


def test_task_without_eval_split_fails_before_ray(tmp_path, model_dir, capsys):
    ray.shutdown()
    load_builtins()
    base = get_registry("tasks").get("arithmetic")
    tasks = get_registry("tasks")
    if "arith_train_only" not in tasks:  # a user plugin task that only has a train split
        tasks.register("arith_train_only", type("ArithTrainOnly", (base,), {"name": "arith_train_only",
                                                                              "splits": ("train",)}))
    with pytest.raises(InferenceError, match=r"no split 'test'.*its splits: train"):
        run_inference(_cfg(tmp_path), model=model_dir, task="arith_train_only", out=str(tmp_path / "p.jsonl"))
    assert not ray.is_initialized()
    # The CLI turns it into exit code 2 and a one-line message.
    rc = main(["--task", "arith_train_only", "--model", model_dir, "--out", str(tmp_path / "p.jsonl")])
    assert rc == 2 and "no split 'test'" in capsys.readouterr().err
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def lora_export(tmp_path_factory, model_dir) -> Path:
    from lora_export import make_lora_export

    return make_lora_export(model_dir, tmp_path_factory.mktemp("lora") / "final")


def test_adapter_that_is_not_one_or_does_not_fit_fails_before_ray(tmp_path, model_dir, lora_export, capsys):
    argv = ["--task", "arithmetic", "--out", str(tmp_path / "p.jsonl"), "--set",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlruns.db"]
    assert main(argv + ["--model", model_dir, "--adapter", model_dir]) == 2
    assert f"--adapter {model_dir}: no adapter directory inside" in capsys.readouterr().err
    other = make_tiny_model(str(tmp_path / "wider"), d_model=48)  # another base: the adapter's shapes differ
    assert main(argv + ["--model", other, "--adapter", str(lora_export)]) == 2
    err = capsys.readouterr().err
    assert f"does not fit the base model {other}: it adapts model.transformer.blocks.0." in err
    assert f"names {model_dir!r}" in err and not ray.is_initialized()
    # `mdm generate` loads it in this process: PEFT's own load refuses it, named the same way
    from mdm.platform.commands.generate import main as generate

    assert generate(["--model", other, "--adapter", str(lora_export), "--prompt", "1+2="]) == 2
    assert f"mdm generate: error: --adapter {lora_export} does not fit {other}: " in capsys.readouterr().err


# ----------------------------------------------------------------------------- real runs (conftest's ray_local)

def test_cli_infers_and_scores_32_arithmetic_problems(tmp_path, model_dir, ray_local, capsys):
    from mlflow.tracking import MlflowClient

    from mdm.tasks.harness import score_files

    out = tmp_path / "preds.jsonl"
    out.write_text('{"an": "earlier"}\n{"evaluation": 2}\n')  # replaced whole, and said so first
    sets = SAMPLER + [f"tracking.tracking_uri=sqlite:///{tmp_path}/mlruns.db", "eval.batch_size=4",
                      "eval.max_actors=2", "eval.cpus_per_actor=0.5", "eval.progress=false"]
    argv = ["--task", "arithmetic", "--model", model_dir, "--out", str(out), "--limit", "32", "--sampler", "llada"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    said = capsys.readouterr().out
    assert f"mdm infer: {out} exists (2 predictions, written " in said and "it will be replaced" in said

    records = [json.loads(line) for line in out.read_text().splitlines()]
    task = get_registry("tasks").get("arithmetic")()
    examples = list(task.examples("test", 32))
    assert [r["meta"]["index"] for r in records] == list(range(32))           # complete, once, in order
    assert [r["id"] for r in records] == [e.id for e in examples]
    assert [r["prompt"] for r in records] == [e.prompt for e in examples]
    assert [r["gold_raw"] for r in records] == [e.gold_raw for e in examples]
    assert all(r["task"] == "arithmetic" for r in records)
    assert [r["meta"]["score"] for r in records] == [task.score(r["prediction"], r["gold_raw"]) for r in records]

    # The actors' text equals the sampler run here, alone, on the same prompt (temperature 0).
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = load_config([], SAMPLER)
    model = get_registry("engines").get("llada_plus").build_model(cfg.model, model_dir, tok).eval()
    sample = get_registry("samplers").get("llada")
    for r in records[:3]:
        with torch.inference_mode():
            toks = sample(model, [task.encode_prompt(tok, r["prompt"])], cfg.sampler,
                          mask_id=model.config.mask_token_id, eos_id=model.config.eos_token_id).tokens[0]
        eos = model.config.eos_token_id
        toks = toks[: toks.index(eos)] if eos in toks else toks
        assert r["prediction"] == tok.decode(toks, skip_special_tokens=True)

    metrics = json.loads((tmp_path / "preds.metrics.json").read_text())
    assert metrics["rows"] == 32 and metrics["n"] == 32
    assert metrics["gen_tokens"] == sum(r["meta"]["gen_tokens"] for r in records)
    # The harness accepts the file and agrees on the accuracy.
    h = score_files("arithmetic", str(out))
    assert h["n"] == 32 and h["accuracy"] == pytest.approx(metrics["accuracy"])
    # Metrics and predictions reached MLflow (a new eval run: the model is not from a training run).
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns.db")
    run = client.get_run(metrics["mlflow_run_id"])
    # Keyed by task, split and sampler: another split or sampler of this model would not overwrite them.
    assert metrics["mlflow_prefix"] == "infer/arithmetic/test/llada"
    assert run.data.metrics["infer/arithmetic/test/llada/accuracy"] == pytest.approx(metrics["accuracy"])
    assert not [k for k in run.data.metrics if not k.startswith("infer/arithmetic/test/llada/")]
    assert {"preds.jsonl", "preds.metrics.json"} <= {Path(a.path).name for a in client.list_artifacts(
        run.info.run_id, "infer/arithmetic/test/llada")}


def _sampler_actor_pids() -> list[int]:
    """Our own sampler actor processes (descendants of this test process; Ray sets their title)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "SamplerActor" in " ".join(p.cmdline()):
                out.append(p.pid)
        except psutil.Error:
            pass
    return out


def test_actor_killed_mid_job_every_row_exactly_once(tmp_path, model_dir, ray_local):
    """Also covers the other input and sampler (a prompts JSONL instead of the split, and `fast`) and logging
    into the training run: the model sits where the trainer exports it, <output_dir>/<run_name>/final."""
    import shutil

    from mlflow.tracking import MlflowClient

    from mdm.platform.tracking.tracker import Tracker

    n = 24
    export = tmp_path / "outputs" / "tr-run" / "final"
    shutil.copytree(model_dir, export)
    task = get_registry("tasks").get("arithmetic")()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": e.prompt, "gold_raw": e.gold_raw, "id": f"q{i}"}) + "\n"
                               for i, e in enumerate(task.examples("test", n + 5))))
    cfg = _cfg(tmp_path, "eval.batch_size=2", "eval.max_actors=1", "eval.cpus_per_actor=0.5",
               "eval.progress=false", f"eval.prompts={prompts}")
    train_run = Tracker.open(cfg.tracking).start_run("tr-run", params={}, config_yaml="")
    killed: list[int] = []

    def kill_once(done: int, total: int) -> None:
        if not killed and 4 <= done < total:
            pids = _sampler_actor_pids()
            assert pids, "no sampler actor process found to kill"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    m = run_inference(cfg, model=str(export), task="arithmetic", out=str(tmp_path / "p.jsonl"), limit=n,
                      sampler="fast", progress_callback=kill_once)
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert killed, "the job finished before an actor could be killed"
    assert [r["meta"]["index"] for r in records] == list(range(n))
    assert [r["id"] for r in records] == [f"q{i}" for i in range(n)] and m["sampler"] == "fast"
    pids = {r["meta"]["actor"].rsplit(":", 1)[1] for r in records}
    assert str(killed[0]) in pids and len(pids) >= 2, f"expected the killed actor and its replacement, got {pids}"
    assert m["rows"] == n
    assert m["mlflow_run_id"] == train_run
    logged = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns.db").get_run(train_run).data.metrics
    assert logged["infer/arithmetic/prompts-prompts/fast/rows"] == n


# ----------------------------------------------------------------------------- --adapter (a LoRA run's export)

def _sampled(model_dir: str, records: list[dict]) -> list[str]:
    """The sampler run here, alone, on the records' prompts (temperature 0, as the actors sample)."""
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = load_config([], SAMPLER)
    model = get_registry("engines").get("llada_plus").build_model(cfg.model, model_dir, tok).eval()
    task = get_registry("tasks").get("arithmetic")()
    prompts = [task.encode_prompt(tok, r["prompt"]) for r in records]
    with torch.inference_mode():
        out = get_registry("samplers").get("llada")(model, prompts, cfg.sampler, mask_id=model.config.mask_token_id,
                                                    eos_id=model.config.eos_token_id).tokens
    eos = model.config.eos_token_id
    return [tok.decode(t[: t.index(eos)] if eos in t else t, skip_special_tokens=True) for t in out]


def test_adapter_on_its_base_infers_as_the_merged_model(tmp_path, model_dir, lora_export, ray_local):
    import torch
    from mlflow.tracking import MlflowClient
    from transformers import AutoModel

    from mdm.platform.infer.likelihood.actor import LikelihoodActor

    out = tmp_path / "p.jsonl"
    sets = SAMPLER + [f"tracking.tracking_uri=sqlite:///{tmp_path}/mlruns.db", "eval.batch_size=4",
                      "eval.cpus_per_actor=0.5", "eval.progress=false"]
    # no --model: the base the adapter recorded (model_dir)
    argv = ["--task", "arithmetic", "--limit", "8", "--out", str(out), "--adapter", str(lora_export)]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # The actors merged the adapter with PEFT; the export's merged/ was merged by the trainer's own code
    # (adapters.merged_state_dict): the same text, and not the base's.
    assert [r["prediction"] for r in records] == _sampled(str(lora_export / "merged"), records)
    assert [r["prediction"] for r in records] != _sampled(model_dir, records)
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns.db").get_run(
        json.loads((tmp_path / "p.metrics.json").read_text())["mlflow_run_id"])
    assert run.data.params["adapter"] == str(lora_export) and run.data.params["model"] == model_dir
    # The likelihood path's actor (the same base class) holds the same merged weights.
    cfg = load_config([], ["model.lora.r=4"])  # a training config's LoRA adds no fresh adapters here
    actor = LikelihoodActor(model_dir, "llada_plus", cfg.model, cfg.likelihood, device="cpu",
                            adapter_path=str(lora_export))
    merged = AutoModel.from_pretrained(str(lora_export / "merged")).state_dict()
    got = actor.model.state_dict()
    assert set(got) == set(merged)
    for k, v in merged.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6)

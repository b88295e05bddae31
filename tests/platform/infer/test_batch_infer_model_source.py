"""`--model` resolution for batch inference: HF dirs, training run dirs, hub ids, MLflow runs (real sqlite store).

No Ray and no real model needed: an HF directory is config.json + a (one-tensor) safetensors file, which is
all `resolve_model` looks at; the MLflow case logs such a directory to a real store and downloads it back.
Broken weights (truncated, random bytes, a shard index naming a missing shard) are refused here, on the
driver, with the file and the reason.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mdm.platform.infer.model_source import ModelSourceError, find_hf_dirs, resolve_model


def _hf_dir(path: Path, tag: str = "x") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llada", "tag": tag}))
    save_file({"w": torch.zeros(4)}, str(path / "model.safetensors"))
    (path / "tokenizer.json").write_text("{}")
    return path


def test_hf_dir_is_used_as_is(tmp_path):
    d = _hf_dir(tmp_path / "m")
    src = resolve_model(str(d))
    assert (src.kind, Path(src.path), src.run_id) == ("hf_dir", d.resolve(), None)


def test_run_dir_finds_the_final_export_over_checkpoints(tmp_path):
    run = tmp_path / "outputs" / "gsm8k-ab12"
    (run / "checkpoint_000001" / "ds").mkdir(parents=True)            # DeepSpeed shards: not an HF model
    (run / "checkpoint_000001" / "worker_0.pt").write_bytes(b"\0")
    _hf_dir(run / "checkpoint_000002" / "hf", "older")
    time.sleep(0.01)
    final = _hf_dir(run / "final", "final")
    src = resolve_model(str(run))
    assert src.kind == "run_dir" and Path(src.path) == final.resolve()
    assert set(find_hf_dirs(run)) == {run / "checkpoint_000002" / "hf", final}


def test_run_dir_without_export_names_what_it_expected(tmp_path):
    (tmp_path / "run" / "checkpoint_000001" / "ds").mkdir(parents=True)
    with pytest.raises(ModelSourceError, match=r"no HF model inside.*config.json"):
        resolve_model(str(tmp_path / "run"))
    # A Ray Train storage dir of a run: the trainer's export of the same run name is used.
    final = _hf_dir(tmp_path / "outputs" / "run" / "final")
    src = resolve_model(str(tmp_path / "run"), export_root=str(tmp_path / "outputs"))
    assert Path(src.path) == final.resolve()


def test_missing_paths_and_files_are_errors_but_hub_ids_pass(tmp_path):
    with pytest.raises(ModelSourceError, match="no such directory"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelSourceError, match="no such directory"):
        resolve_model("outputs/run/final")                              # two slashes: a path, not a hub id
    (tmp_path / "f.bin").write_bytes(b"\0")
    with pytest.raises(ModelSourceError, match="is a file"):
        resolve_model(str(tmp_path / "f.bin"))
    src = resolve_model("GSAI-ML/LLaDA-8B-Instruct")
    assert (src.kind, src.path) == ("hub", "GSAI-ML/LLaDA-8B-Instruct")


def test_mlflow_run_model_is_downloaded(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # artifacts of the sqlite store land beside it
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.log_artifacts(run_id, str(_hf_dir(tmp_path / "export", "logged")), "final_model")  # as the trainer
    client.log_text(run_id, "hello", "notes/readme.txt")

    for spec in (f"mlflow:{run_id}", f"runs:/{run_id}/final_model"):
        src = resolve_model(spec, tracking_uri=uri, download_dir=str(tmp_path / f"dl{len(spec)}"))
        assert src.kind == "mlflow" and src.run_id == run_id
        assert json.loads((Path(src.path) / "config.json").read_text())["tag"] == "logged"
        assert os.path.isfile(Path(src.path) / "model.safetensors")

    empty = client.create_run(exp).info.run_id
    with pytest.raises(ModelSourceError, match="no logged HF model"):
        resolve_model(f"mlflow:{empty}", tracking_uri=uri)
    with pytest.raises(ModelSourceError, match="not found"):
        resolve_model("mlflow:0123456789abcdef0123456789abcdef", tracking_uri=uri)


@pytest.mark.parametrize("damage", ["truncated", "random", "missing_shard"])
def test_broken_weights_are_named_before_any_actor(tmp_path, damage):
    """A truncated or garbled model.safetensors used to surface as a 329-line sampler-actor traceback."""
    d = _hf_dir(tmp_path / "m")
    weights = d / "model.safetensors"
    save_file({"w": torch.zeros(256, 64)}, str(weights))
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:-1000])
        match = (rf"weights file {weights} is unusable: it is shorter or longer than its header says: truncated, "
                 rf"or not fully written \(.*, \d+ bytes\)")
    elif damage == "random":
        weights.write_bytes(os.urandom(4096))
        match = rf"weights file {weights} is unusable: its header cannot be read: not a safetensors file"
    else:
        (d / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {"w": "model.safetensors", "v": "model-00002-of-00002.safetensors"}}))
        match = "names shards that are missing: model-00002-of-00002.safetensors"
    with pytest.raises(ModelSourceError, match=match):
        resolve_model(str(d))
    # The same check on a run directory whose export is damaged.
    with pytest.raises(ModelSourceError, match="unusable|missing"):
        resolve_model(str(tmp_path))


def test_a_truncated_adapter_is_named_as_the_adapter(tmp_path):
    d = tmp_path / "final"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    weights = d / "adapter_model.safetensors"
    save_file({"base_model.model.q_proj.lora_A.weight": torch.zeros(4, 256)}, str(weights))
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ModelSourceError, match=rf"^--adapter {d}: weights file {weights} is unusable: it is shorter"):
        resolve_model(str(d), adapter=True)
    with pytest.raises(ModelSourceError, match=rf"^--model {d}: no HF model inside"):  # not a model for --model
        resolve_model(str(d))

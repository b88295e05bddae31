"""Inputs and outputs given as storage URIs (issue #14), against a real S3 server (moto, `s3_endpoint`).

Processed data is checked in S3 and kept as a URI for Ray Data; tokenizers and models given as URIs load from
a per-node cache; an MLflow `runs:/` model is fetched once per node; a run's outputs go under an object-store
storage root; a file-backed MLflow store on a multi-node Ray is refused with what to do instead.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mdm.platform import storage
from mdm.platform.config import load_config
from mdm.platform.config_ops import with_overrides


@pytest.fixture
def s3(s3_endpoint, tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("MDM_CACHE", str(tmp_path / "cache"))  # this test's own "node cache"
    return f"s3://mdm/inputs-{uuid.uuid4().hex[:8]}"


def _hf_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llada", "tag": "s3"}))
    save_file({"w": torch.zeros(4)}, str(path / "model.safetensors"))
    return path


def test_processed_data_uri_is_checked_in_storage_and_kept(s3, arithmetic_data):
    from mdm.platform.train.ingest import DataError, resolve_paths

    uri = storage.upload(arithmetic_data["train"], f"{s3}/data/train.jsonl")
    assert resolve_paths(f"{uri}, {arithmetic_data['train']}") == [uri, arithmetic_data["train"]]
    with pytest.raises(DataError, match=f"{s3}/data/missing.jsonl does not exist"):
        resolve_paths(f"{s3}/data/missing.jsonl")


def test_tokenizer_uri_loads_through_the_node_cache(s3, arithmetic_data, tmp_path):
    from mdm.platform.tokenizer import load_tokenizer

    uri = storage.upload(arithmetic_data["tokenizer"], f"{s3}/tokenizer")
    tok = load_tokenizer(uri)
    local = load_tokenizer(arithmetic_data["tokenizer"])
    assert tok("1+2=3")["input_ids"] == local("1+2=3")["input_ids"]
    assert any(p.name.endswith("-tokenizer") for p in (tmp_path / "cache").iterdir())
    with pytest.raises(OSError, match="missing"):
        load_tokenizer(f"{s3}/missing")


def test_model_uri_resolves_on_the_driver_and_actors_fetch_it(s3, tmp_path):
    from mdm.platform.infer.model_source import ModelSourceError, actor_model_path, resolve_model

    uri = storage.upload(str(_hf_dir(tmp_path / "export")), f"{s3}/outputs/run-1/final")
    src = resolve_model(uri)
    assert (src.kind, src.remote) == ("uri", uri)
    assert json.loads((Path(src.path) / "config.json").read_text())["tag"] == "s3"
    assert actor_model_path(uri) == src.path  # the same node: the cached copy, downloaded once
    assert actor_model_path("/some/local/dir") == "/some/local/dir"
    storage.write_text(f"{s3}/notamodel/readme.txt", "x")
    with pytest.raises(ModelSourceError, match="not an HF model directory"):
        resolve_model(f"{s3}/notamodel")


def test_mlflow_model_is_fetched_by_actors_once_per_node(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from mdm.platform.infer.model_source import actor_model_path, resolve_model

    monkeypatch.setenv("MDM_CACHE", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.log_artifacts(run_id, str(_hf_dir(tmp_path / "export")), "final_model")
    src = resolve_model(f"mlflow:{run_id}", tracking_uri=uri, download_dir=str(tmp_path / "dl"))
    assert src.remote == f"runs:/{run_id}/final_model"
    local = actor_model_path(src.remote, uri)
    assert json.loads((Path(local) / "config.json").read_text())["tag"] == "s3"
    assert Path(local).parent == tmp_path / "cache"
    assert actor_model_path(src.remote, uri) == local


def test_outputs_go_under_an_object_store_root():
    from mdm.platform.runs import export_dir, output_root

    cfg = load_config()
    assert output_root(cfg) == os.path.abspath("outputs")  # one node: as it always was
    assert export_dir(cfg, "r") == os.path.abspath("outputs/r/final")
    s3 = with_overrides(cfg, {"ray.storage_path": "s3://b/mdm/"})
    assert export_dir(s3, "r") == "s3://b/mdm/outputs/r/final"
    both = with_overrides(s3, {"train.output_dir": "gs://other/out"})
    assert export_dir(both, "r") == "gs://other/out/r/final"


def test_a_file_tracking_store_on_a_multinode_ray_is_refused():
    from mdm.platform.tracking.tracker import TrackingError, check_cluster_store

    check_cluster_store("sqlite:////tmp/mlruns.db", nodes=1)
    check_cluster_store("http://127.0.0.1:5000", nodes=3)
    with pytest.raises(TrackingError, match="mdm tracking-server"):
        check_cluster_store("sqlite:////tmp/mlruns.db", nodes=3)


def test_gsm8k_work_dir_on_s3_is_made_once_and_reused(s3, capsys):
    import argparse

    from experiments import gsm8k

    args = gsm8k.parse_args(["--preset", "tiny", "--limit", "16", "--work-dir", f"{s3}/work"])
    cfg = gsm8k.build_config(args)
    first = dict(o.split("=", 1) for o in gsm8k.prepare_data(cfg, args))
    assert first == {"data.tokenizer": f"{s3}/work/tiny/first16/tokenizer",
                     "train.train_data_path": f"{s3}/work/tiny/first16/train-len384.jsonl"}
    assert storage.exists(f"{s3}/work/tiny/first16/tokenizer/tokenizer.json")
    rows = [json.loads(line) for line in storage.iter_lines(first["train.train_data_path"]) if line.strip()]
    assert len(rows) == 16 and {"input_ids", "prompt_length"} <= set(rows[0])
    capsys.readouterr()
    again = dict(o.split("=", 1) for o in gsm8k.prepare_data(cfg, argparse.Namespace(**vars(args))))
    assert again == first
    assert "trained a" not in capsys.readouterr().out  # reused, not made again


def test_the_cluster_environment_sets_the_storage_root(monkeypatch):
    import argparse

    from mdm.platform.config_args import add_config_args, config_from_args

    p = argparse.ArgumentParser()
    add_config_args(p)
    monkeypatch.setenv("MDM_STORAGE_PATH", "s3://bucket/mdm")
    assert config_from_args(p.parse_args([])).ray.storage_path == "s3://bucket/mdm"
    assert config_from_args(p.parse_args(["--set", "ray.storage_path=/nfs/x"])).ray.storage_path == "/nfs/x"
    monkeypatch.delenv("MDM_STORAGE_PATH")
    assert config_from_args(p.parse_args([])).ray.storage_path == "ray_results"


def test_gsm8k_work_dir_is_under_the_storage_root_on_a_cluster(monkeypatch, tmp_path):
    from experiments import gsm8k
    from mdm.tasks.prepare import work_root

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MDM_EMBEDDED_RAY", raising=False)
    monkeypatch.chdir(tmp_path)
    args = gsm8k.parse_args(["--preset", "tiny"])
    local = gsm8k.build_config(args)
    assert work_root(local, "data/gsm8k") == str(tmp_path / "data/gsm8k")  # one machine: as before
    s3 = gsm8k.build_config(gsm8k.parse_args(["--set", "ray.storage_path=s3://b/mdm"]))
    assert work_root(s3, "data/gsm8k") == "s3://b/mdm/data/gsm8k"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a cluster with a shared mount as the storage root
    nfs = gsm8k.build_config(gsm8k.parse_args(["--set", "ray.storage_path=/mnt/nfs/mdm"]))
    assert work_root(nfs, "data/gsm8k") == "/mnt/nfs/mdm/data/gsm8k"
    assert work_root(nfs, "/data/mine") == "/data/mine"


def test_evaluation_outputs_to_a_uri_are_staged_then_uploaded_and_the_staging_removed(s3, tmp_path):
    from mdm.platform.infer.outputs import OutputFiles, metrics_path, write_jsonl

    assert metrics_path("preds.jsonl") == "preds.metrics.json"
    assert metrics_path("/a/b/preds.jsonl") == "/a/b/preds.metrics.json"
    assert metrics_path(f"{s3}/evals/p.jsonl") == f"{s3}/evals/p.metrics.json"
    local = OutputFiles.plan(str(tmp_path / "p.jsonl"))  # a local --out: written in place, nothing staged
    assert (local.out, local.metrics, local.staging) == (str(tmp_path / "p.jsonl"), str(tmp_path / "p.metrics.json"),
                                                         None)

    files = OutputFiles.plan(f"{s3}/evals/p.jsonl")
    assert files.shown_out == f"{s3}/evals/p.jsonl" and files.shown_metrics == f"{s3}/evals/p.metrics.json"
    assert Path(files.out).parent == Path(files.staging) == Path(files.metrics).parent
    assert (Path(files.out).name, Path(files.metrics).name) == ("p.jsonl", "p.metrics.json")  # MLflow's names
    write_jsonl(files.out, [{"index": 0}, {"index": 1}])
    files.write_metrics({"accuracy": 0.5})
    assert not storage.exists(f"{s3}/evals/p.jsonl")  # nothing reaches storage before publish
    files.publish()
    assert storage.read_text(f"{s3}/evals/p.jsonl").splitlines() == ['{"index": 0}', '{"index": 1}']
    assert json.loads(storage.read_text(f"{s3}/evals/p.metrics.json")) == {"accuracy": 0.5}
    assert not os.path.exists(files.staging)

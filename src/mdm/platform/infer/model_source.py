"""Where `mdm infer --model X` finds the model: a local HF directory, a training run/checkpoint directory,
a hub id, or an MLflow run.

    src = resolve_model("outputs/gsm8k-ab12/final")      # ModelSource(path=".../final", kind="hf_dir")
    src = resolve_model("ray_results/gsm8k-ab12")        # its HF export, found inside (kind="run_dir")
    src = resolve_model("GSAI-ML/LLaDA-8B-Instruct")     # kind="hub": from_pretrained resolves it
    src = resolve_model("mlflow:0123abcd...")            # the run's logged HF model, downloaded
    src = resolve_model("runs:/0123abcd.../final")        # that artifact path of the run, downloaded
    src = resolve_model("s3://bucket/mdm/outputs/gsm8k-ab12/final")   # a storage URI, cached per node
    src = resolve_model("outputs/gsm8k-lora/final", adapter=True)  # `--adapter`: PEFT's adapter directory
    actor_model_path(src.remote or src.path, tracking_uri)  # in an actor on any node: a local directory

An HF directory is one with `config.json` and weights (`*.safetensors` or `pytorch_model*.bin`); the
tokenizer is expected alongside (`save_pretrained` of both, as the trainer's final export writes it to
`<train.output_dir>/<run_name>/final`). A run or Ray Train checkpoint directory holds DeepSpeed shards, not
an HF model, so inside it we look (up to 3 levels deep) for HF directories and take the newest, else at
`<train.output_dir>/<run name>/final`; none is an error that says what was looked for. An MLflow run's
model is the shallowest logged folder with config.json (the trainer logs its export as `final_model`).
On a cluster, actors on other nodes cannot read the driver's download: they get `ModelSource.remote` (the URI,
or `runs:/<run_id>/<artifact path>`) and make it local on their node with `actor_model_path`.
Everything is resolved on the driver, before any actor starts, so a wrong `--model` fails fast; that includes
the weights: every `*.safetensors` header is opened with the `safetensors` library (which checks that the
tensors it lists exactly cover the file), so a truncated or garbled file is named with its reason here
rather than in a sampler actor's traceback (`check_weights`).
With `adapter=True` (`--adapter`) the same forms are resolved to PEFT's adapter directory instead
(`adapter_config.json` + `adapter_model.safetensors`: what a LoRA run exports), with the same search.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from mdm.platform.adapter import ADAPTER_CONFIG, is_adapter_dir

if TYPE_CHECKING:
    from mlflow import MlflowClient

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
WEIGHT_GLOBS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")
# Names the trainer and people give the HF export inside a run directory, most preferred first.
EXPORT_NAMES = ("final", "final_model", "hf", "export", "model", "hf_model")


class ModelSourceError(ValueError):
    """`--model` cannot be resolved; the message says what was tried and what was expected."""


@dataclass(frozen=True)
class ModelSource:
    """`path`: what `from_pretrained` gets (a local dir, or a hub id when kind == "hub").
    `run_id`: the MLflow run the model came from (metrics are logged there), if any."""

    spec: str
    path: str
    kind: str  # hf_dir | run_dir | hub | mlflow | uri
    run_id: Optional[str] = None
    # What a remote actor loads (`actor_model_path` makes it local on its node): a storage URI, an MLflow
    # `runs:/<run_id>/<artifact>`; None: `path` (a local path is only usable when the cluster is this machine).
    remote: Optional[str] = None
    adapter: Optional[ModelSource] = None  # `--adapter`: PEFT's adapter directory loaded on top (resolve_sources)


def is_hf_dir(path: Path) -> bool:
    """True when `path` holds config.json and model weights."""
    return (path / "config.json").is_file() and any(any(path.glob(g)) for g in WEIGHT_GLOBS)


def check_weights(path: Path, flag: str = "--model") -> None:
    """Raise ModelSourceError naming the file when a `*.safetensors` in `path` is not a whole safetensors file.

    Reads only the headers (safe_open maps the file; no tensor is loaded); a sharded index must name shards
    that exist."""
    from safetensors import SafetensorError, safe_open

    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as sf:
                sf.keys()
        except (SafetensorError, OSError) as e:
            text = str(e)
            why = ("it is shorter or longer than its header says: truncated, or not fully written"
                   if "not fully covered" in text else
                   "its header cannot be read: not a safetensors file, or corrupted"
                   if "header" in text else "it cannot be opened")
            raise ModelSourceError(f"{flag} {path}: weights file {f} is unusable: {why} ({text}, "
                                   f"{f.stat().st_size} bytes); export the model again") from None
    for index in path.glob("*.safetensors.index.json"):
        import json

        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError) as e:
            raise ModelSourceError(f"{flag} {path}: {index} is not a shard index ({e})") from None
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise ModelSourceError(f"{flag} {path}: {index} names shards that are missing: {', '.join(missing)}")


def _flag(adapter: bool) -> str:
    return "--adapter" if adapter else "--model"


def find_hf_dirs(root: Path, max_depth: int = 3, adapter: bool = False) -> list[Path]:
    """HF model directories (adapter directories with `adapter`) under `root` (itself included), breadth first,
    at most `max_depth` deep."""
    wanted = is_adapter_dir if adapter else is_hf_dir
    found: list[Path] = []
    level = [root]
    for _ in range(max_depth + 1):
        nxt: list[Path] = []
        for d in level:
            if wanted(d):
                found.append(d)
                continue  # an HF dir's subfolders are not other models
            try:
                nxt += sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                pass
        level = nxt
    return found


def _pick_export(root: Path, export_root: Optional[str] = None, adapter: bool = False) -> Path:
    candidates = find_hf_dirs(root, adapter=adapter)
    # A Ray Train run directory (<ray.storage_path>/<run_name>) holds only DeepSpeed checkpoints; the
    # trainer exports the HF model of that run to <train.output_dir>/<run_name>/final.
    export = Path(export_root) / root.name / "final" if export_root else None
    if not candidates and export and (is_adapter_dir(export) if adapter else is_hf_dir(export)):
        return export
    if not candidates and adapter:
        raise ModelSourceError(f"--adapter {root}: no adapter directory inside (looked up to 3 levels deep for "
                               f"{ADAPTER_CONFIG} with adapter_model.safetensors: what a run with model.lora.r > 0 "
                               f"exports to <train.output_dir>/<run_name>/final)")
    if not candidates:
        raise ModelSourceError(
            f"--model {root}: no HF model inside (looked up to 3 levels deep for a directory with config.json "
            f"and *.safetensors / pytorch_model*.bin). Point --model at the training run's export "
            f"(<train.output_dir>/<run_name>/final, written with save_pretrained with the tokenizer), "
            f"or at such a directory")
    # Prefer the conventional export names, then the newest (checkpoint_* names sort by time too).
    named = [c for c in candidates if c.name in EXPORT_NAMES]
    pool = named or candidates
    return max(pool, key=lambda p: (p.stat().st_mtime, str(p)))


def _mlflow_download(run_id: str, artifact_path: Optional[str], tracking_uri: Optional[str],
                     dst: Optional[str], adapter: bool = False) -> tuple[Path, str]:
    """(the downloaded folder, its artifact path in the run)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from mdm.platform.tracking.tracker import resolve_uri

    uri = resolve_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_run(run_id)
    except Exception as e:  # MlflowException: RESOURCE_DOES_NOT_EXIST
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelSourceError(f"{_flag(adapter)}: MLflow run {run_id!r} not found at {uri} ({first})") from None
    if artifact_path is None:
        marker = ADAPTER_CONFIG if adapter else "config.json"
        artifact_path = _find_model_artifact(client, run_id, marker)
        if artifact_path is None:
            raise ModelSourceError(f"{_flag(adapter)} mlflow:{run_id}: the run has no logged "
                                   f"{'adapter' if adapter else 'HF model'} (an artifact folder with {marker}) at "
                                   f"{uri}; log the export with RunLogger.artifact(dir, 'final') or pass "
                                   f"runs:/{run_id}/<path>")
    dst = dst or tempfile.mkdtemp(prefix="mdm_model_")
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=dst,
                                                tracking_uri=uri)
    return Path(local), artifact_path


def _find_model_artifact(client: MlflowClient, run_id: str, marker: str = "config.json",
                         max_depth: int = 3) -> Optional[str]:
    """The shallowest artifact folder of the run that holds `marker` ("" for the root)."""
    level: list[Optional[str]] = [None]
    for _ in range(max_depth + 1):
        nxt: list[Optional[str]] = []
        for folder in level:
            entries = client.list_artifacts(run_id, folder)
            names = {os.path.basename(e.path) for e in entries if not e.is_dir}
            if marker in names:
                return folder or ""
            nxt += [e.path for e in entries if e.is_dir]
        level = nxt
    return None


def resolve_model(spec: str, *, tracking_uri: Optional[str] = None, download_dir: Optional[str] = None,
                  export_root: Optional[str] = None, adapter: bool = False) -> ModelSource:
    """Resolve `--model` to something `from_pretrained` loads; raises ModelSourceError when it cannot.

    `export_root`: the trainer's `train.output_dir`; a run directory without an HF model inside falls back
    to `<export_root>/<its name>/final` (the same run's export). `adapter`: resolve `--adapter` (PEFT's
    adapter directory) instead."""
    flag, wanted = _flag(adapter), (is_adapter_dir if adapter else is_hf_dir)
    what = "an adapter directory (adapter_config.json + adapter_model.safetensors)" if adapter else \
        "an HF model directory (config.json + *.safetensors)"
    if not spec:
        raise ModelSourceError("--model is required (an HF directory, a run directory, a hub id or mlflow:<run_id>)")
    from mdm.platform import storage

    if storage.is_uri(spec):  # s3://, gs://: an HF directory in storage, cached once per node
        try:
            local = Path(storage.local_copy(spec))
        except (OSError, FileNotFoundError) as e:
            raise ModelSourceError(f"{flag} {spec}: cannot download it ({e})") from None
        if not wanted(local):
            raise ModelSourceError(f"{flag} {spec}: not {what}; the trainer exports to "
                                   f"<output root>/<run_name>/final")
        check_weights(local, flag)
        return ModelSource(spec, str(local), "uri", remote=spec)
    if spec.startswith("mlflow:") or spec.startswith("runs:/"):
        if spec.startswith("mlflow:"):
            run_id, artifact = spec[len("mlflow:"):].strip("/"), None
        else:
            run_id, _, artifact = spec[len("runs:/"):].partition("/")
            artifact = artifact.strip("/") or None
        if not run_id:
            raise ModelSourceError(f"{flag} {spec}: no run id (expected mlflow:<run_id> or runs:/<run_id>/<path>)")
        local, artifact = _mlflow_download(run_id, artifact, tracking_uri, download_dir, adapter)
        picked = _pick_export(local, adapter=adapter)
        check_weights(picked, flag)
        inside = "/".join(p for p in (artifact, picked.relative_to(local).as_posix()) if p not in ("", "."))
        return ModelSource(spec, str(picked), "mlflow", run_id, remote=f"runs:/{run_id}/{inside}")
    path = Path(spec).expanduser()
    if path.is_dir():
        if wanted(path):
            check_weights(path, flag)
            return ModelSource(spec, str(path.resolve()), "hf_dir")
        picked = _pick_export(path, export_root, adapter)
        check_weights(picked, flag)
        return ModelSource(spec, str(picked.resolve()), "run_dir")
    if path.exists():
        raise ModelSourceError(f"{flag} {spec}: is a file; expected {what}")
    looks_local = spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or not HUB_ID.match(spec)
    if looks_local:
        raise ModelSourceError(f"{flag} {spec}: no such directory (resolved to {path.resolve()})")
    return ModelSource(spec, spec, "hub")


def actor_model_path(load: str, tracking_uri: Optional[str] = None) -> str:
    """What an actor passes to `from_pretrained`, on its own node: a storage URI or an MLflow `runs:/<run>/<path>`
    downloaded once per node (storage.local_copy's cache and lock), anything else as it is."""
    from mdm.platform import storage

    if load.startswith("runs:/"):
        def fetch(src: str, target: str) -> None:
            import mlflow

            run_id, _, artifact = src[len("runs:/"):].partition("/")
            tmp = tempfile.mkdtemp(prefix=".mdm_mlflow_", dir=os.path.dirname(target))
            got = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact or None, dst_path=tmp,
                                                      tracking_uri=tracking_uri)
            os.replace(got, target)
            shutil.rmtree(tmp, ignore_errors=True)

        return storage.local_copy(load, fetch=fetch)
    return storage.local_copy(load) if storage.is_uri(load) else load

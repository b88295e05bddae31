"""GSM8K end to end: preprocess (when needed) -> train on Ray -> batch eval on the test split -> summary.

    python experiments/gsm8k.py                                   # tiny preset on this machine (minutes, CPU, offline)
    python experiments/gsm8k.py --data-dir ../shared/data/gsm8k --limit 256 --set train.max_steps=20
    python experiments/gsm8k.py --preset llada-8b                 # GSAI-ML/LLaDA-8B-Instruct, DeepSpeed ZeRO-3
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python experiments/gsm8k.py --preset llada-8b             # on a running cluster

Presets: `tiny` = experiments/configs/{base,tiny,gsm8k}.yaml (a tiny LLaDA from scratch and a byte-level
BPE trained here on the training split); `llada-8b` = {base,llada_8b,gsm8k}.yaml (the checkpoint's own
tokenizer and chat template). `--config` adds overlays, `--set KEY=VALUE` overrides any key last.

Data: GSM8K ships inside mdm (mdm/tasks/data_files/gsm8k, MIT licence), so the default run needs no network;
--data-dir DIR (= --set data.task_data_dir=DIR) reads a local copy instead, --set data.source=hub downloads
openai/gsm8k with `datasets`.

Where things go (all relative paths against the current directory -- inside a Ray job that is the job's
copy of the working dir, so pass absolute paths or URIs for anything that must outlive the job):
  --work-dir (data/gsm8k)       the trained tokenizer and the processed JSONL, reused when present
  train.output_dir (outputs)    <run_name>/final (HF export), predictions_test.jsonl, summary.json
  ray.storage_path              Ray Train checkpoints;  tracking.tracking_uri  MLflow (default
  sqlite:///mlruns.db, or MLFLOW_TRACKING_URI when set, as on the cluster configs in cluster/).
On a cluster (`--set ray.storage_path=s3://bucket/mdm`, the storage root every node reads) a relative work
dir goes under the storage root (<storage root>/data/gsm8k) and a local train.output_dir becomes
<storage root>/outputs.
Ray: RAY_ADDRESS (set inside `ray job submit`) or ray.address joins a cluster; else an embedded Ray starts.
Re-running the same command resumes the same run (deterministic run name) instead of starting over.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

CONFIGS = Path(__file__).resolve().parent / "configs"
PRESETS = {"tiny": ["base.yaml", "tiny.yaml", "gsm8k.yaml"],
           "llada-8b": ["base.yaml", "llada_8b.yaml", "gsm8k.yaml"]}
TINY_VOCAB = 1024
DEFAULT_WORK_DIR = "data/gsm8k"


def parse_args(argv: Optional[Sequence[str]], parents: Sequence[argparse.ArgumentParser] = (),
               doc: str = __doc__) -> argparse.Namespace:
    """The script's flags (the platform's --config/--set/--auto_import/--dump_config and its own);
    `parents`/`doc` let sweep_gsm8k.py reuse them with its own additions."""
    from mdm.platform.config_args import add_config_args

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], parents=list(parents),
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--data-dir", default=None,
                   help="local GSM8K copy (train.jsonl, test.jsonl) = data.task_data_dir; default: the copy "
                        "shipped with mdm (data.source=hub: openai/gsm8k with `datasets`)")
    p.add_argument("--work-dir", default=None,
                   help=f"tokenizer + processed JSONL, a local dir or a URI (default {DEFAULT_WORK_DIR}; a relative "
                        f"dir is under ray.storage_path on a cluster)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training examples")
    add_config_args(p)
    return p.parse_args(argv)


def build_config(args: argparse.Namespace, extra: Sequence[str] = ()) -> Any:
    """The preset's YAML files + --config overlays, then `extra` derived overrides, then --set (wins)."""
    from mdm.platform.config_args import config_from_args

    # Absolute, because Ray Data readers and sampler actors do not share this process's working directory.
    data_dir = [f"data.task_data_dir={Path(args.data_dir).resolve()}"] if args.data_dir else []
    return config_from_args(args, [str(CONFIGS / f) for f in PRESETS[args.preset]], [*data_dir, *extra])


def work_root(cfg: Any, args: argparse.Namespace) -> str:
    """Where the tokenizer and processed data go: --work-dir (default data/gsm8k). A URI or an absolute path is
    used as given; a relative one is taken against the current directory on one machine, and under the storage
    root on a cluster (an object-store root, or Ray joined at an address), where every node reads it."""
    from mdm.platform import storage
    from mdm.platform.runs import storage_root
    from mdm.platform.runtime.ray_runtime import is_local_cluster

    work = args.work_dir or DEFAULT_WORK_DIR
    if storage.is_uri(work) or Path(work).is_absolute():
        return work
    root = storage_root(cfg)
    if storage.is_uri(root) or not is_local_cluster(cfg.ray):
        return storage.join(root, work)
    return str(Path(work).resolve())


def prepare_data(cfg: Any, args: argparse.Namespace) -> list[str]:
    """Tokenizer (trained locally for train.model=tiny) + processed train JSONL; returns the overrides.

    With a URI work root, what is already there is fetched into a local staging folder, the rest is made
    there and uploaded (`storage.upload`), and the overrides name the URIs every node reads."""
    import tempfile

    from mdm.platform import storage

    root = work_root(cfg, args)
    tag = "tiny" if cfg.train.model == "tiny" else cfg.train.model.replace("/", "--")
    # One folder per (model, --limit): a tokenizer trained on N examples and its data stay together.
    parts = (tag, "all" if args.limit is None else f"first{args.limit}")
    if not storage.is_uri(root):
        out = _prepare_in(cfg, args, Path(root).joinpath(*parts))
    else:
        remote, work = storage.join(root, *parts), Path(tempfile.mkdtemp(prefix="mdm_gsm8k_"))
        for name, marker in (("tokenizer", "tokenizer/tokenizer.json"), (_data_name(cfg), _data_name(cfg))):
            if storage.exists(storage.join(remote, marker)):
                storage.download(storage.join(remote, name), str(work / name))
                print(f"gsm8k: reusing {storage.join(remote, name)}", flush=True)
        out = _prepare_in(cfg, args, work)
        for key, value in out.items():
            if value is not None and Path(value).is_relative_to(work):
                dest = storage.join(remote, Path(value).relative_to(work).as_posix())
                if not storage.exists(dest):
                    storage.upload(value, dest)
                    print(f"gsm8k: uploaded {value} -> {dest}", flush=True)
                out[key] = dest
    return [f"{k}={v}" for k, v in out.items() if v is not None]


def _data_name(cfg: Any) -> str:
    return f"train-len{cfg.train.max_len}.jsonl"


def _prepare_in(cfg: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Make (or find) the tokenizer and the processed JSONL in the local folder `work`; their config keys."""
    from mdm.tasks.preprocess import build_task, preprocess
    from mdm.tasks.tokenize import train_bpe

    task = build_task(cfg.train.task, data_dir=cfg.data.task_data_dir, source=cfg.data.source)
    tok = cfg.data.tokenizer
    if tok is None and cfg.train.model == "tiny":
        tok_dir = work / "tokenizer"
        if not (tok_dir / "tokenizer.json").is_file():
            texts = (f"{ex.prompt}\n{ex.response}" for ex in task.examples("train", limit=args.limit))
            train_bpe(texts, str(tok_dir), vocab_size=TINY_VOCAB)
            print(f"gsm8k: trained a {TINY_VOCAB}-token BPE -> {tok_dir}", flush=True)
        tok = str(tok_dir)
    out = {"data.tokenizer": tok}
    if cfg.train.train_data_path is None:
        path = work / _data_name(cfg)
        if not path.is_file():
            stats = preprocess(task, "train", tok or cfg.train.model, path, max_len=cfg.train.max_len,
                               limit=args.limit, progress=True)
            print(f"gsm8k: preprocessed {stats['written']} rows ({stats['dropped_overlong']} over "
                  f"train.max_len dropped) -> {path}", flush=True)
        out["train.train_data_path"] = str(path)
    return out


def describe_source(cfg: Any) -> str:
    """Where the raw GSM8K rows come from, in words (data.task_data_dir > data.source: hub > shipped copy)."""
    if cfg.data.task_data_dir:
        return f"local copy {cfg.data.task_data_dir}"
    if cfg.data.source == "hub":
        return "openai/gsm8k from the Hugging Face Hub (data.source: hub)"
    return "the copy shipped with mdm (mdm/tasks/data_files/gsm8k, MIT licence)"


def accuracy_note(preset: str, accuracy: Optional[float], steps: Optional[int]) -> Optional[str]:
    """A line for the tiny preset's usual 0% (a new user's first run), so it does not read as a broken
    pipeline: the preset checks that the pipeline runs; the arithmetic demo is the one whose model learns."""
    if preset != "tiny" or accuracy is None or accuracy > 0:
        return None
    return (f"gsm8k: accuracy 0 is expected here: the tiny preset trains a ~1M-parameter model for "
            f"{steps if steps is not None else '?'} CPU steps, far too little for GSM8K; for a demo that "
            f"learns, run `python experiments/arithmetic.py`")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from mdm.platform.config_ops import dump_config
    from mdm.platform.fields import ConfigError
    from mdm.platform.registry import AutoImportError

    try:
        cfg = build_config(args)
    except (ConfigError, AutoImportError) as e:
        print(f"gsm8k: error: {e}", file=sys.stderr)
        return 2
    if args.dump_config:  # the preset's files, then --config, then --set: what would run
        sys.stdout.write(dump_config(cfg))
        return 0
    t0 = time.time()
    print(f"gsm8k: data: {describe_source(cfg)}", flush=True)
    cfg = build_config(args, prepare_data(cfg, args))

    from mdm.platform import storage
    from mdm.platform.infer.generation.job import run_inference
    from mdm.platform.runtime.ray_runtime import ensure_ray
    from mdm.platform.tracking.tracker import resolve_uri
    from mdm.platform.runs import run_name as derive_name
    from mdm.platform.train.driver import train_driver

    ensure_ray(cfg.ray)  # joins RAY_ADDRESS / ray.address, else starts an embedded Ray
    run_name = derive_name(cfg)
    result = train_driver(cfg, run_name=run_name)
    m = result.metrics or {}
    export = m["export_dir"]  # a local path, or a URI under the storage root
    run_dir = export.rstrip("/").rsplit("/", 1)[0]
    preds = storage.join(run_dir, f"predictions_{cfg.eval.split}.jsonl")
    ev = run_inference(cfg, model=export, task=cfg.eval.task or cfg.train.task, out=preds,
                       split=cfg.eval.split)
    uri = resolve_uri(cfg.tracking.tracking_uri)
    summary = {
        "run_name": run_name, "preset": args.preset, "task": ev.get("task"), "split": cfg.eval.split,
        "accuracy": ev.get("accuracy"), "n_eval": ev.get("n"), "eval_loss": m.get("eval/loss"),
        "train_loss": m.get("train/loss"), "steps": m.get("step"), "model": export,
        "predictions": ev.get("predictions"), "mlflow_tracking_uri": uri if cfg.tracking.enabled else None,
        "mlflow_experiment": cfg.tracking.experiment_name, "mlflow_run_id": ev.get("mlflow_run_id"),
        "wall_s": round(time.time() - t0, 1),
    }
    storage.write_text(storage.join(run_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")
    print("\n== gsm8k summary ==\n" + json.dumps(summary, indent=2))
    if cfg.tracking.enabled:
        print(f"MLflow: mlflow ui --backend-store-uri {uri}   (experiment {cfg.tracking.experiment_name!r}, "
              f"run {run_name!r})")
    note = accuracy_note(args.preset, summary["accuracy"], summary["steps"])
    if note:  # last, where a first-time user's eye lands
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())

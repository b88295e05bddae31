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
Re-running the same command resumes the same run (deterministic run name) instead of starting over; a run
that is already finished and scored is not evaluated again unless --re-evaluate.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:
    from mdm.platform.config import RunConfig

CONFIGS = Path(__file__).resolve().parent / "configs"
PRESETS = {"tiny": ["base.yaml", "tiny.yaml", "gsm8k.yaml"],
           "llada-8b": ["base.yaml", "llada_8b.yaml", "gsm8k.yaml"]}
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
    p.add_argument("--re-evaluate", action="store_true",
                   help="sample and score again when this run already has its predictions and summary")
    add_config_args(p)
    p.add_argument("--force", action="store_true",
                   help="train even when the memory plan says the run does not fit its GPUs (as mdm train --force)")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace, extra: Sequence[str] = ()) -> RunConfig:
    """The preset's YAML files + --config overlays, then `extra` derived overrides, then --set (wins)."""
    from mdm.platform.config_args import config_from_args

    # Absolute, because Ray Data readers and sampler actors do not share this process's working directory.
    data_dir = [f"data.task_data_dir={Path(args.data_dir).resolve()}"] if args.data_dir else []
    return config_from_args(args, [str(CONFIGS / f) for f in PRESETS[args.preset]], [*data_dir, *extra])


def prepare_data(cfg: RunConfig, args: argparse.Namespace) -> list[str]:
    """Tokenizer (trained locally for train.model=tiny) + processed train JSONL under --work-dir; returns the
    overrides that point the config at them (`mdm.tasks.prepare`, where the staging through a URI lives)."""
    from mdm.tasks.prepare import prepare_training_data

    return prepare_training_data(cfg, args.work_dir or DEFAULT_WORK_DIR, args.limit,
                                 log=lambda line: print(line, flush=True))


def describe_source(cfg: RunConfig) -> str:
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
    cfg = load(args)
    if cfg is None or args.dump_config:
        return 2 if cfg is None else 0
    t0 = time.time()
    print(f"gsm8k: data: {describe_source(cfg)}", flush=True)
    from ray.train import TrainingFailedError

    from mdm.platform.train.interrupt import RunInterrupted, how_it_stopped
    from mdm.platform.train.plan_check import PlanError

    cfg = with_data(cfg, prepare_data(cfg, args))
    try:
        run_name, result = train(cfg, force=args.force)
    except PlanError as e:  # a GPU run whose memory plan does not fit: one line, nothing started
        print(f"gsm8k: error: {e}", file=sys.stderr)
        return 2
    except (RunInterrupted, TrainingFailedError) as e:  # Ctrl-C / SIGTERM (KILLED), a full disk, storage down
        said = how_it_stopped(e)
        if said is None:
            raise
        print(f"gsm8k: {said[0]}", file=sys.stderr)  # one line; the same command resumes the run
        return said[1]
    summary = evaluate(cfg, args, run_name, result.metrics or {}, t0)
    report(cfg, args, summary)
    return 0


def load(args: argparse.Namespace) -> Optional[RunConfig]:
    """The merged config (None after printing a config error); with --dump_config, print it too."""
    from mdm.platform.config_ops import dump_config
    from mdm.platform.fields import ConfigError
    from mdm.platform.registry import AutoImportError

    try:
        cfg = build_config(args)
    except (ConfigError, AutoImportError) as e:
        print(f"gsm8k: error: {e}", file=sys.stderr)
        return None
    if args.dump_config:  # the preset's files, then --config, then --set: what would run
        sys.stdout.write(dump_config(cfg))
    return cfg


def with_data(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """`cfg` pointed at the prepared tokenizer and data (they only fill keys the user left unset)."""
    from mdm.platform.config_ops import with_overrides

    return with_overrides(cfg, dict(o.split("=", 1) for o in overrides))


def train(cfg: RunConfig, force: bool = False) -> tuple[str, Any]:
    """Train on Ray (joins RAY_ADDRESS / ray.address, else an embedded Ray); a finished run returns at once.
    `force`: train a GPU run whose memory plan does not fit (train.plan_check)."""
    from mdm.platform.runs import run_name as derive_name
    from mdm.platform.runtime.ray_runtime import ensure_ray
    from mdm.platform.train.driver import train_driver

    ensure_ray(cfg.ray)
    run_name = derive_name(cfg)
    return run_name, train_driver(cfg, run_name=run_name, force=force)


def evaluate(cfg: RunConfig, args: argparse.Namespace, run_name: str, m: dict[str, Any], t0: float
             ) -> dict[str, Any]:
    """Batch inference on `eval.split` and the run's summary.json, next to the export. A run whose summary
    and predictions are already there is not scored again unless --re-evaluate (which says what it replaces)."""
    from mdm.platform import storage
    from mdm.platform.infer.generation.job import run_inference
    from mdm.platform.tracking.tracker import resolve_uri

    export = m["export_dir"]  # a local path, or a URI under the storage root
    run_dir = export.rstrip("/").rsplit("/", 1)[0]
    preds, summary_path = (storage.join(run_dir, f"predictions_{cfg.eval.split}.jsonl"),
                           storage.join(run_dir, "summary.json"))
    if not args.re_evaluate and storage.exists(summary_path) and storage.exists(preds):
        print(f"gsm8k: {run_name} is finished and scored; not evaluating again (its summary: {summary_path}; "
              f"pass --re-evaluate to sample and score {preds} anew)", flush=True)
        return json.loads(storage.read_text(summary_path))
    ev = run_inference(cfg, model=export, task=cfg.eval.task or cfg.train.task, out=preds, split=cfg.eval.split)
    uri = resolve_uri(cfg.tracking.tracking_uri)
    summary = {
        "run_name": run_name, "preset": args.preset, "task": ev.get("task"), "split": cfg.eval.split,
        "accuracy": ev.get("accuracy"), "n_eval": ev.get("n"), "eval_loss": m.get("eval/loss"),
        "train_loss": m.get("train/loss"), "steps": m.get("step"), "model": export,
        "predictions": ev.get("predictions"), "mlflow_tracking_uri": uri if cfg.tracking.enabled else None,
        "mlflow_experiment": cfg.tracking.experiment_name, "mlflow_run_id": ev.get("mlflow_run_id"),
        "wall_s": round(time.time() - t0, 1),
    }
    storage.write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    return summary


def report(cfg: RunConfig, args: argparse.Namespace, summary: dict[str, Any]) -> None:
    """The summary, where to look in MLflow, and (tiny preset at 0%) why that is expected."""
    print("\n== gsm8k summary ==\n" + json.dumps(summary, indent=2))
    if cfg.tracking.enabled:
        print(f"MLflow: mlflow ui --backend-store-uri {summary['mlflow_tracking_uri']}   (experiment "
              f"{cfg.tracking.experiment_name!r}, run {summary['run_name']!r})")
    note = accuracy_note(args.preset, summary["accuracy"], summary["steps"])
    if note:  # last, where a first-time user's eye lands
        print(note)


if __name__ == "__main__":
    sys.exit(main())

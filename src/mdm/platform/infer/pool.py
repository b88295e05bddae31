"""What both batch-inference jobs share (generation/job.py, likelihood/job.py): the driver-side
checks made before any actor starts, and the Ray Data actor-pool plumbing around the job.

    from mdm.platform.infer.pool import InferenceError, load_task, load_tokenizer, actor_model, collect
    task = load_task("arithmetic", "test", cfg.data, need_split=True)      # InferenceError: no such task/split
    src = resolve_sources(cfg, "--model value or None")   # the model, and the adapter on top (src.adapter)
    tokenizer = load_tokenizer(src, trust_remote_code=False)
    ds = model_stage(rows, cfg, MyActor, **actor_paths(src, cfg), my_arg=...)   # the actor pool (ModelActor)
    results = check_complete(collect(ds, len(rows), progress_callback), len(rows))   # sorted by "index"

Every row carries an "index"; `check_complete` insists that each came back exactly once.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from mdm.platform.adapter import adapter_base, check_fits
from mdm.platform.infer.model_source import ModelSource, ModelSourceError, resolve_model
from mdm.platform.registry import get_registry

if TYPE_CHECKING:
    from mdm.platform.config import RunConfig
    import ray.data
    from mdm.platform.infer.eval_config import EvalConfig
    from mdm.platform.train.data_config import DataConfig


class InferenceError(ValueError):
    """A batch-inference input problem found before any actor starts (model, task, split, prompts)."""


# ----------------------------------------------------------------------------- inputs (driver side)

def load_task(name: Optional[str], split: str, data_cfg: DataConfig, need_split: bool) -> Any:
    """The registered task `name`, built on `data_cfg`; InferenceError when there is none or (`need_split`)
    when it has no `split`."""
    if not name:
        raise InferenceError("no task: pass --task NAME or set eval.task (`mdm list tasks` lists them)")
    # data.source only when not the default, so that users' own packs need not take it.
    source = {"source": data_cfg.source} if data_cfg.source != "auto" else {}
    task = get_registry("tasks").get(name)(data_dir=data_cfg.task_data_dir, **source)
    splits = tuple(getattr(task, "splits", ()))
    if need_split and split not in splits:
        raise InferenceError(f"task {name!r} has no split {split!r} to evaluate on; its splits: "
                             f"{', '.join(splits) or '(none)'} (choose one with --split, or pass --prompts FILE)")
    return task


def load_tokenizer(src: ModelSource, trust_remote_code: bool) -> Any:
    """The tokenizer saved with the resolved model `src`; InferenceError naming where it looked otherwise."""
    from mdm.platform.tokenizer import load_tokenizer as load_saved  # not this function's own name

    try:
        return load_saved(src.path, trust_remote_code)
    except (OSError, ValueError) as e:
        where = "hub id" if src.kind == "hub" else "model directory"
        raise InferenceError(f"--model {src.spec}: cannot load a tokenizer from the {where} {src.path} ({e}); "
                             f"the tokenizer must be saved alongside the model (save_pretrained)") from None


# ----------------------------------------------------------------------------- the actor pool

def tracking_uri(cfg: RunConfig) -> Optional[str]:
    """The MLflow tracking URI the actors get (an `mlflow:` model is fetched through it)."""
    from mdm.platform.tracking.tracker import resolve_uri

    return resolve_uri(cfg.tracking.tracking_uri)


def gpus_per_actor(eval_cfg: EvalConfig) -> float:
    """`eval.gpus_per_actor`, or by default one GPU when the cluster has any, else none."""
    import ray

    if eval_cfg.gpus_per_actor is not None:
        return float(eval_cfg.gpus_per_actor)
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def restart_args(eval_cfg: EvalConfig) -> dict[str, int]:
    """Actor fault tolerance. Ray Data's actor pools already restart dead actors and retry their batches
    forever (-1, -1); pass the knobs only when changed (Ray 2.60 deprecates passing remote args)."""
    args = {"max_restarts": eval_cfg.max_restarts, "max_task_retries": eval_cfg.max_task_retries}
    return {} if args == {"max_restarts": -1, "max_task_retries": -1} else args


def model_stage(rows: list[dict], cfg: RunConfig, actor: type, **actor_kwargs: object) -> ray.data.Dataset:
    """`rows` as a Ray Data dataset, one block per `eval.batch_size` batch, mapped by the model-holding `actor`
    class (a `model_actor.ModelActor`) on an autoscaling actor pool (`eval.min/max/initial_actors`), with the
    GPUs, CPUs, device and restart policy the `eval` section asks for. `actor_kwargs` are the actor's own
    arguments beyond the model's (`model_path` and `adapter_path`, from `actor_paths`; `engine`, `model_cfg`,
    `device`, `seed`, `auto_import`, `tracking_uri`, which this fills in)."""
    import math

    import ray.data

    ev = cfg.eval
    # One block per batch: a block is the unit Ray Data hands to an actor, so blocks bigger than a batch
    # would serialise several batches on one actor while others idle.
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / ev.batch_size)))
    gpus = gpus_per_actor(ev)
    compute = ray.data.ActorPoolStrategy(min_size=ev.min_actors, max_size=ev.max_actors,
                                         initial_size=ev.initial_actors,
                                         max_tasks_in_flight_per_actor=ev.max_tasks_in_flight_per_actor)
    device = ev.device if gpus > 0 or ev.device != "auto" else "cpu"
    kwargs = {"engine": cfg.engine, "model_cfg": cfg.model, "device": device, "seed": ev.seed,
              "auto_import": tuple(cfg.auto_import), "tracking_uri": tracking_uri(cfg), **actor_kwargs}
    return ds.map_batches(actor, batch_size=ev.batch_size, batch_format="numpy", compute=compute,
                          fn_constructor_kwargs=kwargs, num_gpus=gpus or None, num_cpus=ev.cpus_per_actor,
                          **restart_args(ev))


def resolve_sources(cfg: RunConfig, model: Optional[str]) -> ModelSource:
    """`model` (else eval.model) resolved on the driver, with eval.adapter (`--adapter`) resolved as its
    `adapter`; without a model, the base the adapter records. ModelSourceError when neither names one, or when the
    adapter does not fit the base (`adapter.check_fits`)."""
    uri, root = cfg.tracking.tracking_uri, cfg.train.output_dir
    adapter = resolve_model(cfg.eval.adapter, tracking_uri=uri, export_root=root, adapter=True) \
        if cfg.eval.adapter else None
    base = model or cfg.eval.model or (adapter_base(Path(adapter.path)) if adapter and adapter.kind != "hub" else None)
    src = resolve_model(base or "", tracking_uri=uri, export_root=root)
    if adapter is None:
        return src
    if "hub" not in (src.kind, adapter.kind):
        try:
            check_fits(Path(adapter.path), Path(src.path))
        except ValueError as e:
            raise ModelSourceError(str(e)) from None
    return dataclasses.replace(src, adapter=adapter)


def actor_paths(src: ModelSource, cfg: RunConfig) -> dict[str, Optional[str]]:
    """The actors' `model_path` and `adapter_path` (None without an adapter), each as `actor_model` gives it."""
    return {"model_path": actor_model(src, cfg), "adapter_path": actor_model(src.adapter, cfg) if src.adapter else None}


def actor_model(src: ModelSource, cfg: RunConfig) -> str:
    """What the sampler actors load: the driver's local path when the cluster is this machine, else what an
    actor can fetch on its own node (`src.remote`: a storage URI or an MLflow runs:/ path)."""
    from mdm.platform.runtime.ray_runtime import is_local_cluster

    if src.remote is None or is_local_cluster(cfg.ray):
        if src.kind not in ("hub",) and not is_local_cluster(cfg.ray):
            print(f"mdm infer: warning: {src.spec} is a path on this machine; actors on other nodes "
                  f"see it only on a shared mount (give a storage URI or mlflow:<run> otherwise)", file=sys.stderr)
        return src.path
    return src.remote


def collect(ds: ray.data.Dataset, total: int, progress_callback: Optional[Callable[[int, int], None]]) -> list[dict]:
    """Stream `ds` back to the driver as one dict per row; `progress_callback(done, total)` after each batch."""
    out: list[dict] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        keys = list(batch)
        for j in range(len(batch["index"])):
            out.append({k: batch[k][j] for k in keys})
        if progress_callback is not None:
            progress_callback(len(out), total)
    return out


def check_complete(results: list[dict], n: int) -> list[dict]:
    """Sort by index; raise when any index is missing or repeated (never silently drop or dedupe)."""
    seen: dict[int, int] = {}
    for r in results:
        seen[int(r["index"])] = seen.get(int(r["index"]), 0) + 1
    missing = [i for i in range(n) if i not in seen]
    repeated = sorted(i for i, c in seen.items() if c > 1)
    if missing or repeated or len(seen) != n:
        raise RuntimeError(f"batch inference output is not one row per input: {len(results)} rows for {n} inputs; "
                           f"missing indices {missing[:20]}, repeated {repeated[:20]}")
    return sorted(results, key=lambda r: int(r["index"]))

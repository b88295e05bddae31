"""Run identity: what names a run, a sweep and a trial, what a re-run resumes, and where a run's files live.

    name = run_name(cfg)                 # `run_name`, else "<task or data file>-<8 hex of the run-defining keys>"
    cfg = absolute_paths(cfg)            # local paths absolute (workers and trials run elsewhere)
    storage_root(cfg)                    # Ray Train / Tune storage: an absolute local path or a URI
    output_root(cfg)                     # train.output_dir; <storage root>/outputs when that is a URI
    export_dir(cfg, name)                # <output_root>/<run>/final, the Hugging Face export
    sweep_name(cfg, space); child_run_name(sweep, trial_id)
    trial_label(flat, ["train.train_mode", "train.lr", "train.seed"], engine=spec)  # "MIRROR lr=1e-3 seed=1"
    tracked_params(cfg)                  # the params a run logs: no per-run-unique key, inert keys as "inert"

Names never contain a clock: the same command (the same config) gets the same name again, so Ray Train
restores the run's last checkpoint from `<ray.storage_path>/<run>` and MLflow logs into the run of that
name. Keys that say where or how a run is watched or its model written (`export.*`), not what is trained,
are left out of the hash (`RUN_NAME_EXCLUDED`); `ray.num_workers` and `ray.use_gpu` stay in, since they change the global batch and
the numerics. `train.output_dir` is left out on purpose: moving the exports elsewhere continues the same
run (its checkpoints are under `ray.storage_path`), it does not start a new one.

A trial's identity (`child_run_name`, its Train directory, the `mdm.run` tag MLflow finds it by) differs
from what a person reads: its MLflow display name is `trial_label`, the swept values (the engine names its
objective, e.g. `MIRROR+PPOTS(EPR) lr=1e-3 seed=1`), with the trial id in the tag `mdm.trial_id`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

from mdm.platform.config_ops import flatten, with_overrides
from mdm.platform.engine_api import inert_keys
from mdm.platform.registry import get_registry

if TYPE_CHECKING:
    from mdm.platform.tuner.space import SweepSpace
    from mdm.platform.config import RunConfig

# Left out of a run's derived name (prefixes of dotted keys).
RUN_NAME_EXCLUDED = ("run_name", "ray.address", "ray.num_cpus", "ray.cpus_per_worker", "ray.gpus_per_worker",
                     "ray.storage_path", "ray.max_failures", "ray.num_to_keep", "ray.gpu_mem_gib",
                     "ray.stop_grace_s", "tracking.", "tune.", "eval.", "sampler.", "likelihood.",
                     "train.logging_steps", "train.output_dir", "data.task_data_dir", "data.source", "china",
                     "train.china", "export.")
# Left out of a sweep's derived name: where and how fast it runs, not what it searches.
SWEEP_NAME_EXCLUDED = ("run_name", "tracking.", "ray.address", "ray.num_cpus", "ray.gpu_mem_gib",
                       "ray.stop_grace_s", "tune.max_concurrent_trials", "tune.cpus_per_trial", "tune.reserve_cpus",
                       "tune.max_failures", "likelihood.")
# Logged nowhere as params: unique to one run, so they clutter every comparison (the name is a tag).
RUN_UNIQUE = ("run_name",)
INERT = "inert"  # the param value of a key that cannot change the run (EngineSpec.conditions)
# Config keys holding local paths: made absolute on the driver, since workers and trials run elsewhere.
PATH_KEYS = ("train.train_data_path", "train.output_dir", "train.model", "data.eval_data_path", "data.tokenizer",
             "data.task_data_dir", "ray.storage_path", "deepspeed.config_path")
# Of those, the ones that may also be a hub id (kept as given unless a local path of that name exists).
MAYBE_HUB_ID = ("train.model", "data.tokenizer")


def _digest(obj: object) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def derive_run_name(cfg: RunConfig) -> str:
    """`<task or data file>-<8 hex>` from the run-defining config keys; stable across machines and days."""
    flat = {k: v for k, v in flatten(cfg).items() if not k.startswith(RUN_NAME_EXCLUDED)}
    stem = cfg.train.task or os.path.splitext(os.path.basename(str(cfg.train.train_data_path or "data")
                                                               .split(",")[0].rstrip("/")))[0]
    return f"{stem}-{_digest(flat)}"


def run_name(cfg: RunConfig) -> str:
    """The run's name: the `run_name` key when set, else `derive_run_name(cfg)`."""
    return cfg.run_name or derive_run_name(cfg)


def sweep_name(cfg: RunConfig, space: SweepSpace) -> str:
    """`tune.name`, else `sweep-<8 hex>` of the config's run-defining keys and the search space."""
    if cfg.tune.name:
        return cfg.tune.name
    flat = {k: v for k, v in flatten(cfg).items() if not k.startswith(SWEEP_NAME_EXCLUDED)}
    return "sweep-" + _digest([flat, space.describe(), space.conditions])


def child_run_name(sweep: str, trial_id: str) -> str:
    """A trial's Train run name and MLflow child run name: stable across restarts and resumes."""
    return f"{sweep}-{trial_id}"


def format_value(v: object) -> str:
    """A swept value as a person writes it: 0.001 -> 1e-3, 3e-4, 0.25, 64, True -> true."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4):
            mant, exp = f"{v:.2e}".split("e")
            return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
        return f"{v:g}"
    return str(v)


def trial_label(flat: Mapping[str, Any], keys: Sequence[str], engine: Optional[Any] = None) -> str:
    """A readable name of one trial from its swept `keys` (values looked up in `flat`, the trial's flattened
    config): the engine's label of its `label_keys` when any of them is swept, then `name=value` for the
    others (the last part of the dotted key, unless two keys share it), skipping inert keys."""
    spec = engine if engine is not None else get_registry("engines").get(flat.get("engine", "llada_plus"))
    inert = inert_keys(spec.conditions, flat)
    covered = set(spec.label_keys) if spec.label is not None else set()
    parts = [spec.label(flat)] if covered & set(keys) else []
    rest = [k for k in keys if k not in covered and k not in inert]
    tails = [k.rsplit(".", 1)[-1] for k in rest]
    for k, tail in zip(rest, tails):
        parts.append(f"{tail if tails.count(tail) == 1 else k}={format_value(flat.get(k))}")
    return " ".join(parts) or "default"


def tracked_params(cfg: RunConfig) -> dict[str, Any]:
    """The flattened config as a run's params: per-run-unique keys (RUN_UNIQUE) left out, and keys that
    cannot change this run (the engine's conditions, e.g. train.p_model with train.PPOTS off) as "inert"."""
    flat = flatten(cfg)
    inert = inert_keys(get_registry("engines").get(cfg.engine).conditions, flat)
    return {k: INERT if k in inert else v for k, v in flat.items() if k not in RUN_UNIQUE}


def is_uri(path: str) -> bool:
    """True for `s3://...`, `gs://...` and other URIs (left as they are), False for local paths."""
    return "://" in path


def _absolute(value: str, maybe_hub_id: bool) -> str:
    if is_uri(value):
        return value
    parts = [p.strip() for p in value.split(",")]
    if maybe_hub_id and not all(os.path.exists(p) for p in parts):
        return value  # a hub id, not a path
    return ",".join(os.path.abspath(p) for p in parts)


def absolute_paths(cfg: RunConfig) -> Any:
    """`cfg` with local paths absolute and the tracking URI resolved, as seen from this working directory."""
    from mdm.platform.tracking.tracker import resolve_uri

    flat = flatten(cfg)
    fix: dict[str, Any] = {}
    for key in PATH_KEYS:
        v = flat.get(key)
        if isinstance(v, str) and v and v != "tiny":
            fix[key] = _absolute(v, maybe_hub_id=key in MAYBE_HUB_ID)
    if cfg.tracking.enabled:
        fix["tracking.tracking_uri"] = resolve_uri(cfg.tracking.tracking_uri)
    return with_overrides(cfg, fix)


def storage_root(cfg: RunConfig) -> str:
    """`ray.storage_path` as Ray Train and Tune get it: a URI unchanged, a local path absolute."""
    path = cfg.ray.storage_path
    return path if is_uri(path) else os.path.abspath(path)


def output_root(cfg: RunConfig) -> str:
    """Where a run's outputs go (exports, predictions, summaries): `train.output_dir`, except that with an
    object-store storage root (`ray.storage_path: s3://...`) a local `train.output_dir` becomes
    `<storage root>/outputs`: a local path written on one node of a cluster is not there on the others."""
    out, root = cfg.train.output_dir, storage_root(cfg)
    if is_uri(out):
        return out.rstrip("/")
    if is_uri(root):
        return f"{root.rstrip('/')}/outputs"
    return os.path.abspath(out)


def export_dir(cfg: RunConfig, name: str) -> str:
    """Where a run's final Hugging Face export goes: `<output_root(cfg)>/<run name>/final`."""
    out = output_root(cfg)
    return f"{out}/{name}/final" if is_uri(out) else os.path.join(out, name, "final")

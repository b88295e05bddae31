"""The search space of a comparison: the `compare` section as a grid sweep, and what one cell trains.

    space = comparison_space(cfg)             # SweepSpace: compare.grid x compare.lrs x compare.seeds, deduped
    cell = cell_overrides(cfg, space.trials[0])   # + train.batch_size_per_gpu under compare.equalize
    group_label(flat, space)                  # "MIRROR+PPOTS(EPR) lr=1e-3": the configuration, seed left out
    swept_keys(space)                         # the grid keys in order, seed last

A comparison is a sweep whose every dimension is a grid (`mdm.platform.tune.space` validates each key and
value against the config schema and drops the cells that differ only by inert keys), so every configuration
gets the same learning rates and the same seeds and nothing else varies. The batch a cell trains with
follows `compare.equalize` (see compare_config.py); a cell whose batch cannot be divided evenly is an
error naming the keys, before anything starts.
"""

from __future__ import annotations

from typing import Any, Mapping

from mdm.platform.config_ops import flatten
from mdm.platform.fields import ConfigError
from mdm.platform.registry import get_registry
from mdm.platform.runs import trial_label
from mdm.platform.tune.space import SweepSpace, parse_sweep

SEED_KEY = "train.seed"
LR_KEY = "train.lr"
BATCH_KEY = "train.batch_size_per_gpu"


def comparison_space(cfg: Any) -> SweepSpace:
    """`compare.grid` x `compare.lrs` x `compare.seeds` as a validated, deduplicated grid sweep."""
    c = cfg.compare
    grid = grid_keys(c.grid)
    if not grid:
        raise ConfigError("compare.grid is empty: give the configurations to compare, e.g. "
                          "--set 'compare.grid={train.train_mode: [Normal, MIRROR], train.PPOTS: [false, true]}'")
    for key in (SEED_KEY, BATCH_KEY):
        if key in grid:
            raise ConfigError(f"compare.grid.{key}: set {'compare.seeds' if key == SEED_KEY else key + ' and compare.equalize'} "
                              f"instead (the comparison crosses every configuration with the same seeds and batch rule)")
    if LR_KEY in grid and c.lrs:
        raise ConfigError("compare.grid.train.lr and compare.lrs both set the learning rates; keep compare.lrs")
    sweep: dict[str, Any] = {k: {"grid": list(v)} for k, v in grid.items()}
    if c.lrs:
        sweep[LR_KEY] = {"grid": list(c.lrs)}
    sweep[SEED_KEY] = {"grid": list(c.seeds)}
    space = parse_sweep(sweep, cfg, "compare")
    for trial in space.trials:
        cell_overrides(cfg, trial)  # every cell's batch divides evenly, or fail now
    return space


def grid_keys(grid: Mapping[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    """`compare.grid` as {dotted key: values}: nested (`train: {PPOTS: [...]}`, what `--set
    compare.grid.train.PPOTS=[true]` makes) and dotted (`train.PPOTS: [...]`) forms are the same."""
    out: dict[str, list[Any]] = {}
    for k, v in grid.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(grid_keys(v, key))
        elif not isinstance(v, list) or not v:
            raise ConfigError(f"compare.grid.{key} must be a non-empty list of values, got {v!r}")
        else:
            out[key] = list(v)
    return out


def cell_overrides(cfg: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` plus the batch this cell trains with under `compare.equalize`."""
    out = dict(params)
    spec = get_registry("engines").get(cfg.engine)
    if cfg.compare.equalize == "forwards" and spec.forwards_per_sequence is not None:
        flat = {**flatten(cfg), **out}  # the values were validated by parse_sweep
        per_seq = spec.forwards_per_sequence(flat)
        batch = cfg.train.batch_size_per_gpu
        if batch % per_seq:
            raise ConfigError(f"compare.equalize: forwards gives {trial_label(flat, list(params), spec)} "
                              f"{batch}/{per_seq} sequences per micro-batch ({per_seq} forward rows each); make "
                              f"{BATCH_KEY} ({batch}) a multiple of {per_seq}, or set compare.equalize: batch")
        out[BATCH_KEY] = batch // per_seq
    return out


def swept_keys(space: SweepSpace) -> list[str]:
    """The comparison's grid keys in order, the seed last."""
    keys = [d.key for d in space.dims if d.key != SEED_KEY]
    return keys + [SEED_KEY]


def group_label(flat: Mapping[str, Any], space: SweepSpace) -> str:
    """The configuration a trial belongs to: its label without the seed."""
    return trial_label(flat, [k for k in swept_keys(space) if k != SEED_KEY])

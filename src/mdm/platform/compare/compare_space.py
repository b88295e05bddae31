"""The search space of a comparison: the `compare` section as a grid sweep, and what one cell trains.

    space = comparison_space(cfg)             # SweepSpace: compare.grid x compare.lrs x compare.seeds, deduped,
                                              # plus the baseline's positive-control arms (k x its batch)
    cell = cell_overrides(cfg, space.trials[0])   # + train.batch_size_per_gpu under compare.equalize
    group_label(flat, space)                  # "MIRROR+PPOTS(EPR) lr=1e-3": the configuration, seed left out
    cell_label(flat, space)                   # the same with the seed: a trial's display name
    swept_keys(space)                         # the grid keys in order, seed last

A comparison is a sweep whose every dimension is a grid (`mdm.platform.tuner.space` validates each key and
value against the config schema and drops the cells that differ only by inert keys), so every configuration
gets the same learning rates and the same seeds and nothing else varies. The batch a cell trains with
follows `compare.equalize` (see compare_config.py); a cell whose batch cannot be divided evenly is an
error naming the keys, before anything starts.

Positive controls (`compare.control_batch_multipliers: [1.6, 2]`): for every seed (and learning rate), the
baseline configuration (`compare.baseline`, default Standard) again with `compare.batch_multiplier` = k, i.e.
round(k x its batch) sequences per micro-batch; their label is the baseline's with " batch×k".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from mdm.platform.config_ops import flatten
from mdm.platform.fields import ConfigError
from mdm.platform.registry import get_registry
from mdm.platform.runs import trial_label
from mdm.platform.tuner.space import SweepSpace, parse_sweep

if TYPE_CHECKING:
    from mdm.platform.config import RunConfig

SEED_KEY = "train.seed"
LR_KEY = "train.lr"
BATCH_KEY = "train.batch_size_per_gpu"
MULT_KEY = "compare.batch_multiplier"


def comparison_space(cfg: RunConfig) -> SweepSpace:
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
    labels = sorted({objective_label({**space.base, **t}, space) for t in space.trials})
    if c.baseline not in labels:
        raise ConfigError(f"compare.baseline {c.baseline!r} is not a configuration of compare.grid (nothing would be "
                          f"paired against it, and it has no control arms); its configurations: {', '.join(labels)}")
    space.trials += control_trials(cfg, space)
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


def cell_overrides(cfg: RunConfig, params: Mapping[str, Any]) -> dict[str, Any]:
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
    mult = float(out.get(MULT_KEY, 1.0))
    if mult != 1.0:
        out[BATCH_KEY] = max(1, round(out.get(BATCH_KEY, cfg.train.batch_size_per_gpu) * mult))
    return out


def control_trials(cfg: RunConfig, space: SweepSpace) -> list[dict[str, Any]]:
    """The baseline's cells again with `compare.batch_multiplier` = k, for each k in
    `compare.control_batch_multipliers` (every seed and learning rate of the baseline)."""
    mults = list(cfg.compare.control_batch_multipliers)
    if not mults:
        return []
    base = [t for t in space.trials if objective_label({**space.base, **t}, space) == cfg.compare.baseline]
    return [{**t, MULT_KEY: float(k)} for k in mults for t in base]


def swept_keys(space: SweepSpace) -> list[str]:
    """The comparison's grid keys in order, the seed last."""
    keys = [d.key for d in space.dims if d.key != SEED_KEY]
    return keys + [SEED_KEY]


def group_label(flat: Mapping[str, Any], space: SweepSpace) -> str:
    """The configuration a trial belongs to: its label without the seed (" batch×k" on a control arm)."""
    label = trial_label(flat, [k for k in swept_keys(space) if k != SEED_KEY])
    mult = float(flat.get(MULT_KEY, 1.0))
    return label if mult == 1.0 else f"{label} batch×{mult:g}"


def objective_label(flat: Mapping[str, Any], space: SweepSpace) -> str:
    """The configuration's training objective alone (the engine's label: "Standard", "MIRROR+PPOTS(EPR)"),
    without learning rate or other swept keys: what `compare.baseline` names."""
    spec = get_registry("engines").get(flat.get("engine", "llada_plus"))
    if spec.label is None:
        return group_label(flat, space)
    mult = float(flat.get(MULT_KEY, 1.0))
    return spec.label(flat) if mult == 1.0 else f"{spec.label(flat)} batch×{mult:g}"


def stratum_label(flat: Mapping[str, Any], space: SweepSpace) -> str:
    """What a configuration shares with the baseline it is paired against: its swept keys other than the
    objective's and the seed ("lr=1e-3"; "" when only the objective is swept)."""
    spec = get_registry("engines").get(flat.get("engine", "llada_plus"))
    covered = set(spec.label_keys) if spec.label is not None else set()
    keys = [k for k in swept_keys(space) if k != SEED_KEY and k not in covered]
    return trial_label(flat, keys) if keys else ""


def cell_label(flat: Mapping[str, Any], space: SweepSpace) -> str:
    """A trial's display name: its configuration label and its seed ("MIRROR lr=1e-3 seed=1")."""
    return f"{group_label(flat, space)} {trial_label(flat, [SEED_KEY])}"

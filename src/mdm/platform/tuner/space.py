"""A sweep file parsed, validated against the config schema, and turned into a Ray Tune search space.

A sweep file names a search space in the same dotted keys as `--set`:

    train.lr: {loguniform: [1.0e-5, 1.0e-3]}
    train.train_mode: {grid: [Normal, MIRROR]}
    train.PPOTS: {grid: [false, true]}
    train.p_model: {grid: [EPR, AP]}
    train.max_steps: 20                          # a plain value is a fixed override for every trial
    conditions:                                  # optional: extra "KEY matters only when OTHER == VALUE"
      train.mix_uniform: {train.PPOTS: true}

Distributions: `choice: [a, b]` (random pick), `grid: [a, b]` (every value, crossed with the other grid keys),
`uniform: [low, high]`, `loguniform: [low, high]` (0 < low), `randint: [low, high]` (high exclusive, as Tune's).
Nested YAML (`train: {lr: {loguniform: ...}}`) is the same as the dotted form.

    space = load_sweep("sweep.yaml", cfg)      # SweepError naming the key on any mistake, before any trial
    space.trials                               # the deduplicated grid: list of {dotted key: value}
    space.param_space("random")                # {"grid": tune.grid_search(trials), "sample": {...}}

Conditional keys and deduplication: some keys are ignored unless another key has a value; the engine
declares which (`EngineSpec.conditions`: for LLaDA+, `train.p_model` and the other P-POTS knobs only matter
when `train.PPOTS` is on; `model.lora.alpha`, `dropout` and `target_modules` only when `model.lora.r` is not
0). Crossing the grid naively would run PPOTS-off trials once per p_model, all identical. So the grid is
expanded here, not by Tune: every combination is canonicalised
(an ignored key is reset to the base config's value), duplicates are dropped, and the explicit list of trial
dicts goes to Tune as one `grid_search` dimension. Random dimensions (`choice`, `uniform`, ...) stay Tune
domains; an ignored key drawn at random is canonicalised in the trial (`canonicalize`), so its config and
MLflow params show what actually ran. With the Optuna searcher (no grid support) grid keys become
categorical choices and only the trial-side canonicalisation applies.

Every candidate value (each choice/grid value, each range bound) is applied to the base config through
`mdm.platform.config.with_overrides`, so unknown keys, wrong types and invalid choices fail here, named.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from omegaconf import OmegaConf

from mdm.platform.config_ops import flatten, with_overrides
from mdm.platform.engine_api import meets
from mdm.platform.fields import ConfigError
from mdm.platform.registry import get_registry

if TYPE_CHECKING:
    from mdm.platform.config import RunConfig

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
RESERVED = ("conditions",)



class SweepError(ConfigError):
    """A mistake in a sweep file; the message names the file and the key."""


@dataclass
class Dim:
    """One searched key: its distribution name and its arguments (values, or [low, high])."""

    key: str
    dist: str
    args: list[Any]

    def describe(self) -> str:
        return f"{self.dist}{json.dumps(self.args)}"


@dataclass
class SweepSpace:
    """A validated sweep: fixed overrides, searched dimensions, the conditions and the deduplicated grid."""

    fixed: dict[str, Any]
    dims: list[Dim]
    conditions: dict[str, dict[str, Any]]
    base: dict[str, Any]                         # flatten(base cfg): the canonical values of ignored keys
    trials: list[dict[str, Any]] = field(default_factory=list)
    n_grid_raw: int = 1                          # grid size before dedup (for the log and the parent run)

    @property
    def grid_dims(self) -> list[Dim]:
        return [d for d in self.dims if d.dist == "grid"]

    @property
    def random_dims(self) -> list[Dim]:
        return [d for d in self.dims if d.dist != "grid"]

    def describe(self) -> dict[str, str]:
        """{key: "loguniform[1e-05, 0.001]"} for MLflow params and logs."""
        out = {d.key: d.describe() for d in self.dims}
        out.update({k: f"fixed {json.dumps(v)}" for k, v in self.fixed.items()})
        return out

    def describe_yaml(self) -> str:
        """`describe()` as YAML lines ("train.lr: loguniform[1e-05, 0.001]"), for a run's description."""
        return "\n".join(f"{k}: {v}" for k, v in self.describe().items())

    def canonicalize(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """`params` with every key whose condition fails reset to the base config's value."""
        return canonicalize(params, self.base, self.conditions)

    def param_space(self, searcher: str) -> dict[str, Any]:
        """The Tuner's param_space: {"grid": grid_search over trial dicts, "sample": {key: Tune domain}}."""
        from ray import tune

        sample: dict[str, Any] = {}
        dims = self.dims if searcher == "optuna" else self.random_dims
        for d in dims:
            a = d.args
            if d.dist in ("choice", "grid"):
                sample[d.key] = tune.choice(a)
            elif d.dist == "uniform":
                sample[d.key] = tune.uniform(a[0], a[1])
            elif d.dist == "loguniform":
                sample[d.key] = tune.loguniform(a[0], a[1])
            else:
                sample[d.key] = tune.randint(a[0], a[1])
        space: dict[str, Any] = {"sample": sample}
        if searcher != "optuna":
            space["grid"] = tune.grid_search(self.trials)
        return space

    def overrides_for(self, trial_config: Mapping[str, Any]) -> dict[str, Any]:
        """A Tune trial config ({"grid": ..., "sample": ...}) -> the canonical dotted overrides it runs."""
        params = {**self.fixed, **dict(trial_config.get("grid") or {}), **dict(trial_config.get("sample") or {})}
        return self.canonicalize(params)


def canonicalize(params: Mapping[str, Any], base: Mapping[str, Any],
                 conditions: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Reset each conditional key whose condition (looked up in params, then base) fails to base's value."""
    out = dict(params)
    for key, cond in conditions.items():
        if key not in out:
            continue
        if not all(meets(out.get(other, base.get(other)), want) for other, want in cond.items()):
            out[key] = base.get(key)
    return out


def _flatten_spec(node: object, leaves: set[str], prefix: str = "") -> dict[str, Any]:
    """Nested or dotted YAML -> {dotted key: spec}. A config leaf key, or a mapping whose keys are all
    distribution names, ends the descent (so `train.lr: {normal: ...}` is reported as a bad distribution)."""
    if prefix in leaves or not isinstance(node, dict) or not node or (prefix and set(node) <= set(DISTRIBUTIONS)):
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flatten_spec(v, leaves, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _typed(cfg: RunConfig, key: str, value: object, where: str) -> Any:
    """`value` applied to `key` of cfg and read back typed; SweepError naming the key if the schema refuses it."""
    try:
        out = with_overrides(cfg, {key: value})
    except (ConfigError, ValueError, TypeError) as e:
        raise SweepError(f"{where}: key {key}: {e}") from None
    flat = flatten(out)
    if key not in flat:  # a whole section was given a scalar, or similar
        raise SweepError(f"{where}: key {key} is not a single config value")
    return flat[key]


def _parse_dim(cfg: RunConfig, key: str, spec: object, where: str) -> Dim | None:
    if not isinstance(spec, dict):
        return None
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise SweepError(f"{where}: key {key}: bad distribution {spec!r}; expected one of "
                         f"{', '.join(f'{{{d}: [...]}}' for d in DISTRIBUTIONS)}")
    dist, args = next(iter(spec.items()))
    if not isinstance(args, list) or not args:
        raise SweepError(f"{where}: key {key}: {dist} needs a non-empty list, got {args!r}")
    if dist in ("choice", "grid"):
        return Dim(key, dist, [_typed(cfg, key, v, where) for v in args])
    if len(args) != 2:
        raise SweepError(f"{where}: key {key}: {dist} needs [low, high], got {args!r}")
    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise SweepError(f"{where}: key {key}: {dist} bounds must be numbers, got {args!r}")
    low, high = args
    if dist == "randint":
        if not all(isinstance(a, int) for a in args):
            raise SweepError(f"{where}: key {key}: randint bounds must be integers, got {args!r}")
        _typed(cfg, key, low, where), _typed(cfg, key, high - 1, where)
    else:
        low, high = float(low), float(high)
        _typed(cfg, key, low, where), _typed(cfg, key, high, where)
    if not low < high:
        raise SweepError(f"{where}: key {key}: {dist} needs low < high, got {args!r}")
    if dist == "loguniform" and low <= 0:
        raise SweepError(f"{where}: key {key}: loguniform needs 0 < low, got {args!r}")
    return Dim(key, dist, [low, high])


def parse_sweep(data: Mapping[str, Any], cfg: RunConfig, where: str = "sweep") -> SweepSpace:
    """Validate a sweep mapping against `cfg`'s schema and expand + dedupe its grid."""
    data = dict(data)
    extra_cond = data.pop("conditions", None) or {}
    if not isinstance(extra_cond, dict):
        raise SweepError(f"{where}: conditions must map KEY -> {{OTHER_KEY: VALUE}}, got {extra_cond!r}")
    # "KEY only matters when OTHER == VALUE": the engine declares its own (EngineSpec.conditions); a sweep
    # file adds more under `conditions:`.
    conditions = {k: dict(v) for k, v in get_registry("engines").get(cfg.engine).conditions.items()}
    for key, cond in extra_cond.items():
        if not isinstance(cond, dict) or not cond:
            raise SweepError(f"{where}: conditions.{key}: expected {{OTHER_KEY: VALUE}}, got {cond!r}")
        _typed(cfg, key, flatten(cfg).get(key), f"{where}: conditions")  # the key must exist
        conditions[key] = {k: _typed(cfg, k, v, f"{where}: conditions.{key}") for k, v in cond.items()}

    fixed: dict[str, Any] = {}
    dims: list[Dim] = []
    for key, spec in _flatten_spec(data, set(flatten(cfg))).items():
        if not key:
            raise SweepError(f"{where}: the top level must be a mapping of dotted keys")
        dim = _parse_dim(cfg, key, spec, where)
        if dim is None:
            fixed[key] = _typed(cfg, key, spec, where)
        else:
            dims.append(dim)
    if not dims and not fixed:
        raise SweepError(f"{where}: empty sweep; give at least one key, e.g. train.lr: {{loguniform: [1.0e-5, 1.0e-3]}}")
    try:  # the fixed overrides together must also make a valid config
        base_cfg = with_overrides(cfg, fixed) if fixed else cfg
    except (ConfigError, ValueError, TypeError) as e:
        raise SweepError(f"{where}: {e}") from None
    space = SweepSpace(fixed=fixed, dims=dims, conditions=conditions, base=flatten(base_cfg))
    _expand_grid(space)
    return space


def _expand_grid(space: SweepSpace) -> None:
    grid = space.grid_dims
    combos = list(itertools.product(*[d.args for d in grid])) if grid else [()]
    space.n_grid_raw = len(combos)
    seen: set[str] = set()
    for combo in combos:
        trial = {d.key: v for d, v in zip(grid, combo)}
        # Canonicalise against the fixed overrides too, so `train.PPOTS: false` fixed still dedupes p_model.
        canon = {k: v for k, v in space.canonicalize({**space.fixed, **trial}).items() if k in trial}
        sig = json.dumps(canon, sort_keys=True, default=str)
        if sig not in seen:
            seen.add(sig)
            space.trials.append(canon)


def load_sweep(sweep: str | Path | Mapping[str, Any], cfg: RunConfig) -> SweepSpace:
    """Read a sweep YAML (or take a mapping) and validate it against `cfg`; SweepError names file and key."""
    if isinstance(sweep, Mapping):
        return parse_sweep(sweep, cfg, "sweep")
    path = Path(sweep)
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as e:  # yaml errors carry line and column
        raise SweepError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: the top level must be a mapping of dotted keys, got {type(data).__name__}")
    return parse_sweep(data, cfg, str(path))

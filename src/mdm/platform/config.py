"""The typed run configuration: YAML files merged in order, then dotted `--set` overrides.

    cfg = load_config(["base.yaml", "overlay.yaml"], ["train.lr=1e-5", "train.train_mode=MIRROR"])
    cfg.train.lr            # 1e-05, a float
    print(dump_config(cfg)) # (config_ops) the merged config as YAML; load_config([that file]) gives it back

Merging and type checking are OmegaConf's (structured configs over dataclasses): mappings merge deeply,
lists and scalars are replaced, `--set` values parse as YAML scalars (`1e-5`, `true`, `null`, `[1,2]`).
This module adds what a person needs on top: unknown keys and bad values name the key, the file or
`--set` that brought them, and the nearest valid name.

The schema is assembled from sections owned by the components that read them: the platform's
(`data`, `ray`, `deepspeed`, `export`, `tracking`, `tune`, `eval`, `compare`, `rl`) and the chosen engine's (`train`, `model`,
`sampler`, and `likelihood` when it scores likelihoods, from its `EngineSpec` in the `engines` registry). A
field declares its allowed values with `choice(...)` or `registry_choice(...)` metadata.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mdm.platform.config_ops import Source, check_choices, flatten_tree, merge_error
from mdm.platform.engine_api import BaseTrainConfig, EngineSpec
from mdm.platform.fields import ConfigError
from mdm.platform.infer.eval_config import EvalConfig
from mdm.platform.registry import auto_import as _auto_import
from mdm.platform.registry import get_registry, load_builtins
from mdm.platform.runtime.ray_config import RayConfig
from mdm.platform.tracking.tracking_config import TrackingConfig
from mdm.platform.train.data_config import DataConfig
from mdm.platform.train.deepspeed_config import DeepSpeedConfig
from mdm.platform.train.export_config import ExportConfig
from mdm.platform.compare.compare_config import CompareConfig
from mdm.platform.rl.rl_config import RLConfig
from mdm.platform.tuner.tune_config import TuneConfig

DEFAULT_ENGINE = "llada_plus"
# The platform's sections (fields of RunConfig); each class lives beside the component that reads it.
PLATFORM_SECTIONS = ("data", "ray", "deepspeed", "export", "tracking", "tune", "eval", "compare", "rl")
# Keys that moved: a file or --set that still uses one is told where it went, and why.
MOVED = {"ray.run_name": ("run_name", "one key names a run"),
         "tracking.run_name": ("run_name", "one key names a run"),
         "eval.data_dir": ("data.task_data_dir", "one key says where a task's raw data is, for preprocess, "
                                                 "train and infer alike")}


@dataclass
class RunConfig:
    """The root config: the run's identity, the chosen engine's sections and the platform's sections.

    `train` is the engine's train section (a `BaseTrainConfig` subclass: the seed's engine-agnostic keys plus
    the engine's own); `model`, `sampler` and `likelihood` are the engine's sections (`EngineSpec.model_config`,
    `sampler_config`, `likelihood_config`; `likelihood` is None for an engine that scores no likelihoods). A
    loaded config is an instance of `schema_for(engine)`, this class with the engine's section classes."""

    engine: str = DEFAULT_ENGINE
    auto_import: List[str] = field(default_factory=list)
    run_name: Optional[str] = None
    china: bool = False  # the seed's hub-mirror switch (also accepted as train.china): see mdm.platform.hub
    train: BaseTrainConfig = field(default_factory=BaseTrainConfig)
    model: Any = None        # the engine's ModelConfig
    sampler: Any = None      # the engine's SamplerConfig
    likelihood: Any = None   # the engine's LikelihoodConfig, when it has one
    data: DataConfig = field(default_factory=DataConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    rl: RLConfig = field(default_factory=RLConfig)


def schema_for(engine: str) -> type[RunConfig]:
    """The root dataclass for `engine`: `RunConfig` with the engine's section classes and its name as default."""
    return _schema(engine, get_registry("engines").get(engine))


@functools.lru_cache(maxsize=None)
def _schema(engine: str, spec: EngineSpec) -> type[RunConfig]:
    # Cached so that two configs of one engine share a class (and compare equal).
    fields: list[tuple[str, Any, Any]] = [("engine", str, field(default=engine))]
    sections = [("train", spec.train_config), ("model", spec.model_config), ("sampler", spec.sampler_config)]
    if spec.likelihood_config is not None:  # optional: engines that can score by likelihood
        sections.append(("likelihood", spec.likelihood_config))
    fields += [(name, cls, field(default_factory=cls)) for name, cls in sections]
    return dataclasses.make_dataclass(f"RunConfig_{engine}", fields, bases=(RunConfig,))


# ----------------------------------------------------------------------------- loading

def _read_yaml(path: str) -> DictConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = OmegaConf.load(p)
    except Exception as e:  # yaml.YAMLError carries the line and column
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None or isinstance(data, DictConfig) and len(data) == 0:
        return OmegaConf.create({})
    if not isinstance(data, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _parse_override(item: str) -> DictConfig:
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set train.lr=1e-5")
    key, value = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item}: bad key {key!r}")
    try:
        return OmegaConf.from_dotlist([f"{key}={value}"])
    except OmegaConfBaseException as e:
        raise ConfigError(f"--set {item}: cannot parse the value ({e})") from e


def load_config(files: Iterable[str] = (), overrides: Iterable[str] = (), auto_import: Iterable[str] = ()) -> RunConfig:
    """Merge YAML `files` in order, then `overrides` ("a.b=value"); return the typed, validated config.

    Raises ConfigError naming the key, its source and the nearest valid name on any mistake.
    """
    sources = [Source(str(f), _read_yaml(str(f))) for f in files]
    sources += [Source(f"--set {o}", _parse_override(o)) for o in overrides]

    load_builtins()
    # User plugins (task packs, p_models) must be registered before names are validated.
    extra = list(auto_import)
    for s in sources:
        extra += list(s.data.get("auto_import", None) or [])
    if extra:
        _auto_import(extra)

    engine = DEFAULT_ENGINE
    for s in sources:
        engine = s.data.get("engine", engine)
    engines = get_registry("engines")
    if engine not in engines:
        where = next((s.label for s in reversed(sources) if "engine" in s.data), "default")
        raise ConfigError(f"bad value for engine (from {where}): {engines.unknown_message(engine)}")

    merged = OmegaConf.structured(schema_for(engine))
    origin: dict[str, str] = {}
    for s in sources:
        for key in flatten_tree(OmegaConf.to_container(s.data, resolve=False)):
            if key in MOVED:
                raise ConfigError(f"{key} (from {s.label}) is now {MOVED[key][0]}: {MOVED[key][1]}")
        _drop_schema_module(s)
        try:
            merged = OmegaConf.merge(merged, s.data)
        except OmegaConfBaseException as e:
            raise merge_error(e, OmegaConf.structured(schema_for(engine)), s) from None
        for key in flatten_tree(OmegaConf.to_container(s.data, resolve=False)):
            origin[key] = s.label
    cli_imports = [m for m in auto_import if m not in merged.auto_import]
    if cli_imports:  # recorded so that a dumped config re-imports them
        merged.auto_import = list(merged.auto_import) + cli_imports
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid config: {e}") from None
    except (ValueError, TypeError) as e:  # a section's __post_init__ check names its key first
        key = str(e).split(" ", 1)[0]
        raise ConfigError(f"{e} (from {origin.get(key, 'default')})") from None
    check_choices(cfg, "", origin)
    _note_overridden(cfg, origin)
    return cfg


_NOTED: set[str] = set()
OLD_SCHEMA_MODULE = "mdm.tasks.data"  # the only value data.schema_module ever had in a shipped config


def _drop_schema_module(source: Source) -> None:
    """`data.schema_module` (a module imported by name) was replaced by `data.schema` (a registered name):
    its default is accepted with a one-line note, anything else names the migration."""
    data = source.data.get("data", None)
    if not isinstance(data, DictConfig) or "schema_module" not in data:
        return
    value = data.pop("schema_module")
    if value != OLD_SCHEMA_MODULE:
        raise ConfigError(f"data.schema_module (from {source.label}) is no longer read: register a "
                          f"mdm.platform.train.data_config.RowSchema in the `schemas` registry (from a module in "
                          f"auto_import) and set data.schema to its name")
    _note_once(f"mdm: note: data.schema_module (from {source.label}) is deprecated and ignored; the default "
               f"schema is data.schema: prompt_completion")


def _note_once(msg: str) -> None:
    if msg not in _NOTED:
        _NOTED.add(msg)
        print(msg, file=sys.stderr)


def _note_overridden(cfg: RunConfig, origin: dict[str, str]) -> None:
    """Say once on stderr when an explicitly set key cannot take effect because another key wins (a value
    equal to the default changes nothing either way, so a dumped config loaded back stays quiet)."""
    t = cfg.train
    default_epochs = {f.name: f.default for f in dataclasses.fields(t)}["epochs"]
    if t.max_steps > 0 and "train.epochs" in origin and t.epochs != default_epochs:
        msg = (f"mdm: note: train.epochs={t.epochs} (from {origin['train.epochs']}) has no effect: train.max_steps="
               f"{t.max_steps} (from {origin.get('train.max_steps', 'default')}) wins; set train.max_steps=-1 to "
               f"train by epochs")
        _note_once(msg)

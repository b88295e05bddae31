"""The typed run configuration: YAML files merged in order, then dotted `--set` overrides.

    cfg = load_config(["base.yaml", "overlay.yaml"], ["train.lr=1e-5", "train.train_mode=MIRROR"])
    cfg.train.lr            # 1e-05, a float
    print(dump_config(cfg)) # the merged, defaulted config as YAML; load_config([that file]) gives it back

Merging and type checking are OmegaConf's (structured configs over dataclasses): mappings merge deeply,
lists and scalars are replaced, `--set` values parse as YAML scalars (`1e-5`, `true`, `null`, `[1,2]`).
This module adds what a person needs on top: unknown keys and bad values name the key, the file or
`--set` that brought them, and the nearest valid name.

The schema is assembled from sections owned by the components that read them: the platform's
(`data`, `ray`, `deepspeed`, `tracking`, `tune`, `eval`) and the chosen engine's (`train`, `model`,
`sampler`, from its `EngineSpec` in the `engines` registry). A field declares its allowed values with
`choice(...)` or `registry_choice(...)` metadata.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from mdm.platform.registry import get_registry, load_builtins

DEFAULT_ENGINE = "llada_plus"


class ConfigError(ValueError):
    """A configuration mistake; the message says which key, where it came from and what would be valid."""


def choice(default: Any, choices: Iterable[Any]) -> Any:
    """A dataclass field whose value must be one of `choices`."""
    return field(default=default, metadata={"choices": tuple(choices)})


def registry_choice(default: Any, kind: str) -> Any:
    """A dataclass field whose value must be a registered name of `kind` (tasks, p_models, ...)."""
    return field(default=default, metadata={"registry": kind})


def _platform_sections() -> list[tuple[str, type]]:
    # Imported here so each section stays in the module of the component that reads it.
    from mdm.platform.batch_infer_config import EvalConfig
    from mdm.platform.ds_config import DeepSpeedConfig
    from mdm.platform.ingest_config import DataConfig
    from mdm.platform.ray_config import RayConfig
    from mdm.platform.tracking_config import TrackingConfig
    from mdm.platform.tune_config import TuneConfig

    return [("data", DataConfig), ("ray", RayConfig), ("deepspeed", DeepSpeedConfig),
            ("tracking", TrackingConfig), ("tune", TuneConfig), ("eval", EvalConfig)]


def schema_for(engine: str) -> type:
    """The root dataclass for `engine`: engine name, auto imports, engine sections, platform sections."""
    return _schema(engine, get_registry("engines").get(engine))


@functools.lru_cache(maxsize=None)
def _schema(engine: str, spec: Any) -> type:
    # Cached so that two configs of one engine share a class (and compare equal, and pickle).
    fields: list[tuple[str, Any, Any]] = [
        ("engine", str, field(default=engine)),
        ("auto_import", List[str], field(default_factory=list)),
    ]
    for name, cls in [("train", spec.train_config), ("model", spec.model_config),
                      ("sampler", spec.sampler_config)] + _platform_sections():
        fields.append((name, cls, field(default_factory=cls)))
    return dataclasses.make_dataclass("Config", fields)


# ----------------------------------------------------------------------------- loading

@dataclass
class _Source:
    label: str           # "base.yaml" or "--set train.lr=1e-5"
    data: DictConfig


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


# Names people bring from other trainers (HF TrainingArguments, torchtune) -> ours.
ALIASES = {
    "learning_rate": "lr", "per_device_train_batch_size": "batch_size_per_gpu", "batch_size": "batch_size_per_gpu",
    "gradient_accumulation_steps": "grad_accum", "num_train_epochs": "epochs", "max_seq_length": "max_len",
    "max_length": "max_len", "evaluation_strategy": "eval_strategy", "lr_scheduler": "lr_scheduler_type",
    "warmup": "warmup_steps", "num_epochs": "epochs", "mode": "train_mode", "ppots": "PPOTS",
}


def _suggest(key: str, valid: Iterable[str]) -> str:
    """The nearest valid dotted key: a known alias, the initials (learning_rate -> lr), or difflib."""
    valid = list(valid)
    parent, _, leaf = key.rpartition(".")
    names = {v.rpartition(".")[2]: v for v in valid}
    initials = "".join(w[0] for w in leaf.split("_") if w)
    for guess in (ALIASES.get(leaf), leaf.lower(), initials if "_" in leaf else None):
        if guess in names:
            return f"; did you mean {names[guess]}?"
    hint = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {hint[0]}?" if hint else ""


def _section_keys(schema: DictConfig, prefix: str) -> list[str]:
    node = OmegaConf.select(schema, prefix) if prefix else schema
    if isinstance(node, DictConfig):
        return [f"{prefix}.{k}" if prefix else str(k) for k in node.keys()]
    return []


def _merge_error(e: OmegaConfBaseException, schema: DictConfig, source: _Source) -> ConfigError:
    full_key = getattr(e, "full_key", None) or ""
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
        parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
        valid = _section_keys(schema, parent)
        return ConfigError(f"unknown key {full_key} (from {source.label}){_suggest(full_key, valid)}"
                           f" valid keys here: {', '.join(k.rsplit('.', 1)[-1] for k in valid)}")
    if not full_key:
        return ConfigError(f"{source.label}: {str(e).splitlines()[0]}")
    if isinstance(e, ValidationError):
        msg = str(e).splitlines()[0]
        return ConfigError(f"bad value for {full_key} (from {source.label}): {msg}")
    return ConfigError(f"{source.label}: {e}")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


_YAML_BOOLS = {"False": ("no", "off", "false"), "True": ("yes", "on", "true")}


def _check_choices(obj: Any, prefix: str, origin: dict[str, str]) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        where = origin.get(key, "default")
        if dataclasses.is_dataclass(value):
            _check_choices(value, key, origin)
        elif "choices" in f.metadata and str(value) in _YAML_BOOLS and value not in f.metadata["choices"] and any(
                c in f.metadata["choices"] for c in _YAML_BOOLS[str(value)]):
            # YAML 1.1 reads `eval_strategy: no` as false; the seed's files say exactly that.
            setattr(obj, f.name, next(c for c in _YAML_BOOLS[str(value)] if c in f.metadata["choices"]))
        elif "choices" in f.metadata and value not in f.metadata["choices"]:
            valid = [str(c) for c in f.metadata["choices"]]
            raise ConfigError(f"bad value {value!r} for {key} (from {where}){_suggest(str(value), valid)}"
                              f" valid: {', '.join(valid)}")
        elif "registry" in f.metadata and value is not None:
            reg = get_registry(f.metadata["registry"])
            if value not in reg:
                raise ConfigError(f"bad value for {key} (from {where}): {reg.unknown_message(value)}")


def load_config(files: Iterable[str] = (), overrides: Iterable[str] = (), auto_import: Iterable[str] = ()) -> Any:
    """Merge YAML `files` in order, then `overrides` ("a.b=value"); return the typed, validated config.

    Raises ConfigError naming the key, its source and the nearest valid name on any mistake.
    """
    sources = [_Source(str(f), _read_yaml(str(f))) for f in files]
    sources += [_Source(f"--set {o}", _parse_override(o)) for o in overrides]

    load_builtins()
    # User plugins (task packs, p_models) must be registered before names are validated.
    extra = list(auto_import)
    for s in sources:
        extra += list(s.data.get("auto_import", None) or [])
    if extra:
        from mdm.platform.registry import auto_import as _auto_import
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
        try:
            merged = OmegaConf.merge(merged, s.data)
        except OmegaConfBaseException as e:
            raise _merge_error(e, OmegaConf.structured(schema_for(engine)), s) from None
        for key in _flatten(OmegaConf.to_container(s.data, resolve=False)):
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
    _check_choices(cfg, "", origin)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def flatten(cfg: Any) -> dict[str, Any]:
    """The config as {"train.lr": 1e-5, ...}: the key space of `--set` and of Tune search spaces."""
    return _flatten(to_dict(cfg))


def dump_config(cfg: Any) -> str:
    """The config as YAML that `load_config` reads back to an equal config."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def with_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """A copy of `cfg` with dotted-key `overrides` applied and validated (used by Tune trials)."""
    base = OmegaConf.structured(cfg)
    src = _Source("overrides", OmegaConf.create({}))
    for key, value in overrides.items():
        OmegaConf.update(src.data, key, value, force_add=True)
    try:
        merged = OmegaConf.merge(base, src.data)
    except OmegaConfBaseException as e:
        raise _merge_error(e, OmegaConf.structured(type(cfg)), src) from None
    out = OmegaConf.to_object(merged)
    _check_choices(out, "", {k: "overrides" for k in overrides})
    return out


# ----------------------------------------------------------------------------- CLI glue

def add_config_args(parser: Any) -> None:
    """The seed's config flags, shared by `mdm train`, `mdm tune`, `mdm config`, `mdm infer`."""
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help="YAML config file; repeat to overlay (later files win)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="dotted override parsed as YAML, e.g. --set train.lr=1e-5 (repeatable)")
    parser.add_argument("--auto_import", action="append", default=[], metavar="MODULE",
                        help="import MODULE first so it can register tasks, p_models, samplers")
    parser.add_argument("--dump_config", action="store_true",
                        help="print the merged, defaulted config as YAML and exit")


def config_from_args(args: Any) -> Any:
    return load_config(args.config, args.overrides, args.auto_import)


def config_or_dump(args: Any) -> Optional[Any]:
    """The merged config of `add_config_args` flags, or None after printing it when `--dump_config` was given.

    Every entry point (`mdm train|tune|infer|generate`) starts with `cfg = config_or_dump(args)` and returns 0
    when it is None, so `--dump_config` means the same everywhere: merge, validate, print, run nothing.
    """
    cfg = config_from_args(args)
    if args.dump_config:
        sys.stdout.write(dump_config(cfg))
        return None
    return cfg


"""Operations on a loaded config: flatten it to dotted keys, dump it as YAML, apply overrides, explain mistakes.

    flatten(cfg)                        # {"train.lr": 1e-05, ...}: the key space of --set and of sweeps
    dump_config(cfg)                    # YAML that mdm.platform.config.load_config reads back to an equal config
    with_overrides(cfg, {"train.lr": 3e-4})   # a validated copy (Tune trials, best configs, --sampler)

These work on any config object the loader built, whatever its sections, so the components that receive a
config (train, tune, infer) use them without importing the loader (`mdm.platform.config`), which imports
their sections: the dependency runs one way.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from mdm.platform.fields import ConfigError
from mdm.platform.registry import get_registry

if TYPE_CHECKING:
    from mdm.platform.config import RunConfig


@dataclass
class Source:
    label: str           # "base.yaml" or "--set train.lr=1e-5"
    data: DictConfig


# Names people bring from other trainers (HF TrainingArguments, torchtune) -> ours.
ALIASES = {
    "learning_rate": "lr", "per_device_train_batch_size": "batch_size_per_gpu", "batch_size": "batch_size_per_gpu",
    "gradient_accumulation_steps": "grad_accum", "num_train_epochs": "epochs", "max_seq_length": "max_len",
    "max_length": "max_len", "evaluation_strategy": "eval_strategy", "lr_scheduler": "lr_scheduler_type",
    "warmup": "warmup_steps", "num_epochs": "epochs", "mode": "train_mode", "ppots": "PPOTS",
}


def suggest(key: str, valid: Iterable[str]) -> str:
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


def merge_error(e: OmegaConfBaseException, schema: DictConfig, source: Source) -> ConfigError:
    full_key = getattr(e, "full_key", None) or ""
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
        parent = full_key.rsplit(".", 1)[0] if "." in full_key else ""
        valid = _section_keys(schema, parent)
        return ConfigError(f"unknown key {full_key} (from {source.label}){suggest(full_key, valid)}"
                           f" valid keys here: {', '.join(k.rsplit('.', 1)[-1] for k in valid)}")
    if not full_key:
        return ConfigError(f"{source.label}: {str(e).splitlines()[0]}")
    if isinstance(e, ValidationError):
        msg = str(e).splitlines()[0]
        return ConfigError(f"bad value for {full_key} (from {source.label}): {msg}")
    return ConfigError(f"{source.label}: {e}")


def flatten_tree(node: object, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flatten_tree(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


_YAML_BOOLS = {"False": ("no", "off", "false"), "True": ("yes", "on", "true")}


def check_choices(obj: object, prefix: str, origin: dict[str, str]) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        where = origin.get(key, "default")
        if dataclasses.is_dataclass(value):
            check_choices(value, key, origin)
        elif "choices" in f.metadata and str(value) in _YAML_BOOLS and value not in f.metadata["choices"] and any(
                c in f.metadata["choices"] for c in _YAML_BOOLS[str(value)]):
            # YAML 1.1 reads `eval_strategy: no` as false; the seed's files say exactly that.
            setattr(obj, f.name, next(c for c in _YAML_BOOLS[str(value)] if c in f.metadata["choices"]))
        elif "choices" in f.metadata and value not in f.metadata["choices"]:
            valid = [str(c) for c in f.metadata["choices"]]
            raise ConfigError(f"bad value {value!r} for {key} (from {where}){suggest(str(value), valid)}"
                              f" valid: {', '.join(valid)}")
        elif "registry" in f.metadata and value is not None:
            reg = get_registry(f.metadata["registry"])
            if value not in reg:
                raise ConfigError(f"bad value for {key} (from {where}): {reg.unknown_message(value)}")
            setattr(obj, f.name, reg.canonical(value))  # an alias (the seed's llada_gsm8k) -> gsm8k


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The config as plain nested dicts."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def flatten(cfg: RunConfig) -> dict[str, Any]:
    """The config as {"train.lr": 1e-5, ...}: the key space of `--set` and of Tune search spaces."""
    return flatten_tree(to_dict(cfg))


def dump_config(cfg: RunConfig) -> str:
    """The config as YAML that `load_config` reads back to an equal config."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def with_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A copy of `cfg` with dotted-key `overrides` applied and validated (used by Tune trials)."""
    base = OmegaConf.structured(cfg)
    src = Source("overrides", OmegaConf.create({}))
    for key, value in overrides.items():
        OmegaConf.update(src.data, key, value, force_add=True)
    try:
        merged = OmegaConf.merge(base, src.data)
    except OmegaConfBaseException as e:
        raise merge_error(e, OmegaConf.structured(type(cfg)), src) from None
    out = OmegaConf.to_object(merged)
    check_choices(out, "", {k: "overrides" for k in overrides})
    return out

"""Loading a tokenizer: the one place the platform, the engines and the tasks call `AutoTokenizer`.

    tok = load_tokenizer("GSAI-ML/LLaDA-8B-Instruct")            # hub id or local directory
    tok = load_tokenizer("s3://bucket/mdm/data/tokenizer")       # a storage URI: downloaded once per node
    tok = load_tokenizer(path, trust_remote_code=cfg.model.trust_remote_code)

`trust_remote_code` is passed explicitly, always: False (the default, and `model.trust_remote_code`'s) means
a tokenizer whose config points at custom Python code is refused instead of transformers asking on standard
input (where a "y" ran a model directory's Python), so nothing from a model directory or hub repository runs
unless the config says so. The refusal is an OSError that names the directory, the code it points at and the
key that would allow it.
"""

from __future__ import annotations

import json
import os
from typing import Any


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """`AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=...)`; OSError saying what was tried."""
    from transformers import AutoTokenizer

    from mdm.platform import storage

    if storage.is_uri(str(name_or_path)):  # s3://, gs://: a per-node cached copy (storage.local_copy)
        try:
            name_or_path = storage.local_copy(str(name_or_path))
        except (OSError, FileNotFoundError) as e:
            raise OSError(f"cannot load tokenizer from {name_or_path}: {e}") from e
    where = "local directory" if os.path.isdir(str(name_or_path)) else "hub id (or path)"
    if where == "local directory":
        _register_model_type(str(name_or_path))
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except ValueError as e:
        if not trust_remote_code and "trust_remote_code" in str(e):
            raise OSError(f"refusing to load the tokenizer of {where} {name_or_path!r}: it points at custom Python "
                          f"code ({_custom_code(name_or_path)}), which was not run. Set model.trust_remote_code: "
                          f"true only if you trust that code") from None
        raise OSError(f"cannot load tokenizer from {where} {name_or_path!r}: {e}") from e
    except OSError as e:
        raise OSError(f"cannot load tokenizer from {where} {name_or_path!r}: {e}") from e


def _register_model_type(path: str) -> None:
    """AutoTokenizer reads a model directory's config.json before its tokenizer files. For a model_type that
    transformers does not know (an engine's own, e.g. `llada`, registered only once the engine's model code is
    imported) it falls back to the bare base config class and warns "You are using a model of type `llada` to
    instantiate a model of type ``". A process that reads the tokenizer of an exported model before building
    the model (the eval driver, each sampler actor) has not imported that code yet: the engines register their
    Auto classes first (`EngineSpec.register_auto_classes`)."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError):
        return  # no model config (a bare tokenizer directory): nothing for AutoTokenizer to mistake
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not isinstance(model_type, str) or model_type in CONFIG_MAPPING:
        return
    from mdm.platform.registry import get_registry, load_builtins

    load_builtins()
    engines = get_registry("engines")
    for name in engines.names():
        hook = getattr(engines.get(name), "register_auto_classes", None)
        if hook is not None:
            hook()


def _custom_code(name_or_path: str) -> str:
    """What a local tokenizer_config.json's auto_map names, for the refusal message."""
    import json

    try:
        with open(os.path.join(name_or_path, "tokenizer_config.json")) as f:
            auto_map = json.load(f).get("auto_map", {})
        names = sorted({n for v in auto_map.values() for n in (v if isinstance(v, list) else [v]) if n})
        return "auto_map: " + ", ".join(names) if names else "auto_map in its config"
    except (OSError, ValueError, AttributeError):
        return "auto_map in its config"

"""Loading a tokenizer: the one place the platform, the engines and the tasks call `AutoTokenizer`.

    tok = load_tokenizer("GSAI-ML/LLaDA-8B-Instruct")            # hub id or local directory
    tok = load_tokenizer(path, trust_remote_code=cfg.model.trust_remote_code)

`trust_remote_code` is passed explicitly, always: False (the default, and `model.trust_remote_code`'s) means
a tokenizer whose config points at custom Python code is refused instead of transformers asking on standard
input, so nothing from a model directory or hub repository runs unless the config says so.
"""

from __future__ import annotations

import os
from typing import Any


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """`AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=...)`; OSError saying what was tried."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        where = "local directory" if os.path.isdir(str(name_or_path)) else "hub id (or path)"
        raise OSError(f"cannot load tokenizer from {where} {name_or_path!r}: {e}") from e

"""The seed's `china` switch: Hugging Face downloads through the hf-mirror.com mirror.

    apply_hub_mirror(cfg)      # every entry point, right after loading its config (`config_args`)

`china: true` (at the top level, or `train.china` as in the seed's base config) sets
`HF_ENDPOINT=https://hf-mirror.com` for this process and everything it starts (an embedded Ray's workers
inherit it), unless HF_ENDPOINT is already set: yours wins. It says so in one line on stderr. `china: false`
(the default) changes nothing. huggingface_hub and datasets read HF_ENDPOINT when first imported; loading a
config imports neither, so this is early enough -- when something imported them before, the line says to set
HF_ENDPOINT before Python starts instead.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from mdm.platform.config import RunConfig

MIRROR = "https://hf-mirror.com"
_said: set[str] = set()


def apply_hub_mirror(cfg: RunConfig) -> Optional[str]:
    """Point Hugging Face downloads at MIRROR when the config's `china` (or `train.china`) is true; returns
    the line printed (None when the switch is off)."""
    if not (getattr(cfg, "china", False) or getattr(getattr(cfg, "train", None), "china", False)):
        return None
    current = os.environ.get("HF_ENDPOINT", "").rstrip("/")
    if current and current != MIRROR:
        line = f"mdm: china: true, but HF_ENDPOINT={current} is already set and wins"
    else:
        os.environ["HF_ENDPOINT"] = MIRROR
        line = f"mdm: china: true -> Hugging Face downloads go through {MIRROR} (HF_ENDPOINT)"
        late = [m for m in ("huggingface_hub", "datasets") if m in sys.modules]
        if late:
            line += (f"; but {' and '.join(late)} were imported before the config was read: set "
                     f"HF_ENDPOINT={MIRROR} before starting Python")
    if line not in _said:
        _said.add(line)
        print(line, file=sys.stderr, flush=True)
    return line

"""`export` section: what a training run writes as its model at the end (`checkpoint.export_hf`).

`merge_lora`: with adapters (an engine's `model.lora`), the export is PEFT's adapter directory; true adds a
full model with the adapters merged into the base weights in `<export>/merged` (loadable without PEFT, at the
size of the base model). An error when the model has no adapters.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ExportConfig:
    merge_lora: bool = False

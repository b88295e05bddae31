"""Adapters (LoRA through PEFT) as the evaluation paths load them: a base model with an adapter directory on top.

    model = eval_model(spec, model_cfg, "outputs/base", tokenizer, adapter="outputs/run-lora/final")
    is_adapter_dir(Path("outputs/run-lora/final"))   # adapter_config.json + adapter_model.safetensors (or .bin)
    adapter_base(Path("outputs/run-lora/final"))     # the base it was trained on, as PEFT recorded it (or None)
    check_fits(Path("outputs/run-lora/final"), Path("outputs/base"))   # ValueError: adapts weights the base lacks
    is_adapter_model(model)                          # a peft.PeftModel

`eval_model` is the one way `mdm infer` (both modes), `mdm lm-eval`, `mdm generate` and the logged MLflow model
build what they evaluate: the engine's `build_model`, without the fresh adapters a config with `model.lora`
asks for in training, then the adapter loaded with `PeftModel.from_pretrained` and merged into the base
weights (`merge_and_unload`), so the samplers and the likelihood see a plain model at the base's speed. An
adapter whose tensors do not match what it builds on the base (another base, another `target_modules`) is a
ValueError naming both, never a silently half-loaded model; `check_fits` finds the same on the driver from the
safetensors headers alone (no weights loaded), before any actor starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import torch

    from mdm.platform.engine_api import EngineSpec

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def is_adapter_model(model: torch.nn.Module) -> bool:
    """True for a PEFT model (a frozen base with adapters)."""
    try:
        import peft
    except ImportError:  # without PEFT nothing can have built one
        return False
    return isinstance(model, peft.PeftModel)


def is_adapter_dir(path: Path) -> bool:
    """True when `path` is PEFT's adapter directory (what a LoRA run exports)."""
    return (path / ADAPTER_CONFIG).is_file() and any((path / w).is_file() for w in ADAPTER_WEIGHTS)


def adapter_base(path: Path) -> Optional[str]:
    """The base model the adapter at `path` was trained on, as PEFT recorded it (None when it did not)."""
    try:
        base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None
    return str(base) if base else None


def _adapter_keys(path: Path) -> set[str]:
    """The tensor names in the adapter's weights file (read from the safetensors header only)."""
    weights = path / ADAPTER_WEIGHTS[0]
    if not weights.is_file():
        import torch

        return set(torch.load(path / ADAPTER_WEIGHTS[1], map_location="cpu", weights_only=True))
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        return set(f.keys())


def _shapes(path: Path) -> dict[str, list[int]]:
    """{tensor name: shape} of every `*.safetensors` in `path`, from the headers."""
    from safetensors import safe_open

    out: dict[str, list[int]] = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            out.update({k: list(sf.get_slice(k).get_shape()) for k in sf.keys()})
    return out


def check_fits(adapter: Path, base: Path) -> None:
    """ValueError naming both when the LoRA adapter at `adapter` adapts a weight the base model at `base` lacks,
    or one of another shape (another base, or another size). A base without safetensors is not checked here
    (`with_adapter` checks it where it loads)."""
    base_shapes = _shapes(base)
    if not base_shapes or not (adapter / ADAPTER_WEIGHTS[0]).is_file():
        return
    for key, shape in sorted(_shapes(adapter).items()):
        module, _, kind = key.removeprefix("base_model.model.").rpartition(".lora_")
        if kind not in ("A.weight", "B.weight"):
            continue
        weight = base_shapes.get(f"{module}.weight")
        axis, want = (1, shape[1]) if kind == "A.weight" else (0, shape[0])
        if weight is None or len(weight) != 2 or weight[axis] != want:
            found = "no such weight" if weight is None else f"its weight is {weight}"
            raise ValueError(f"--adapter {adapter} does not fit the base model {base}: it adapts {module} "
                             f"(lora_{kind.split('.')[0]} {shape}), and the base has {found}; was it trained on "
                             f"another base? (its adapter_config.json names {adapter_base(adapter)!r})")


def with_adapter(model: torch.nn.Module, adapter: str, base: str = "the base model") -> torch.nn.Module:
    """`model` with the adapter directory `adapter` loaded on top and merged into its weights; ValueError when
    the adapter's tensors are not exactly those it adapts on `model`."""
    from peft import PeftModel, get_peft_model_state_dict

    try:
        peft_model = PeftModel.from_pretrained(model, adapter)
    except (ValueError, RuntimeError, KeyError) as e:  # target modules missing, tensor shapes that differ
        raise ValueError(f"--adapter {adapter} does not fit {base}: {str(e).splitlines()[0]}") from None
    expected = set(get_peft_model_state_dict(peft_model))
    stored = _adapter_keys(Path(adapter))
    if stored != expected:
        extra, missing = sorted(stored - expected), sorted(expected - stored)
        raise ValueError(f"--adapter {adapter} does not fit {base}: {len(extra)} of its tensors adapt nothing there "
                         f"(e.g. {extra[:2]}), {len(missing)} adapted weights have none (e.g. {missing[:2]}); "
                         f"was it trained on another base or with other model.lora.target_modules?")
    return peft_model.merge_and_unload()


def eval_model(spec: EngineSpec, model_cfg: Any, path: str, tokenizer: Any,
               adapter: Optional[str] = None) -> torch.nn.Module:
    """The model an evaluation path runs: the engine's `build_model` of `path`, with `adapter` (a local adapter
    directory) merged in when given (see the module docstring)."""
    model = spec.build_model(model_cfg, path, tokenizer)
    if is_adapter_model(model):  # model.lora in the config adds fresh adapters for training: not evaluated
        model = model.unload()
    return with_adapter(model, adapter, base=path) if adapter else model

"""The MLflow model of an exported checkpoint: a pyfunc that samples (text prompts in, generated texts out).

    model = mlflow.pyfunc.load_model("models:/<model id>")        # or runs:/..., models:/<name>/<version>
    model.predict(["What is 7 plus 5?"])                           # -> ["7 + 5 = 12\n#### 12"]
    model.predict(["What is 7 plus 5?"], params={"seed": 1})       # the sampler's seed (temperature > 0)

Logged by `mdm.platform.tracking.model_log.log_sampler_model` as "models from code": MLflow stores this
file and the `mdm` package next to the weights and runs them at load time, so nothing is unpickled. The
artifacts are the Hugging Face export (`hf_model`) and the run's config (`config`, the YAML `mdm train`
takes, dumped from a validated config); its `model` and `sampler` sections become the engine's dataclasses,
prompts are laid out as the config's task lays them out (else the platform's default layout) and sampled
through the one generation path. A LoRA run's export is PEFT's adapter directory: the model is then the run's
base (`train.model` as the config names it: a hub id, a directory, s3://, mlflow:; else the base PEFT recorded)
with the adapter merged in, as every evaluation path loads it (`mdm.platform.adapter.eval_model`). The base is
not copied into the model: it must be reachable where the model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import mlflow
from mlflow.pyfunc import PythonModel

if TYPE_CHECKING:
    from mlflow.pyfunc import PythonModelContext


class SamplerModel(PythonModel):
    """Loads tokenizer and model once; `predict` samples one text per prompt."""

    def load_context(self, context: PythonModelContext) -> None:
        import torch
        import yaml

        from mdm.platform.adapter import eval_model
        from mdm.platform.registry import auto_import, get_registry, load_builtins
        from mdm.platform.tokenizer import load_tokenizer

        path = context.artifacts["hf_model"]
        with open(context.artifacts["config"]) as f:
            cfg = yaml.safe_load(f)
        load_builtins()
        auto_import(list(cfg.get("auto_import") or []))
        self.spec = get_registry("engines").get(cfg["engine"])
        model_cfg = self.spec.model_config(**cfg.get("model", {}))
        self.sampler_cfg = self.spec.sampler_config(**cfg.get("sampler", {}))
        self.tokenizer = load_tokenizer(path, model_cfg.trust_remote_code)
        base, adapter = base_and_adapter(path, cfg)
        self.model = eval_model(self.spec, model_cfg, base, self.tokenizer, adapter=adapter).eval()
        task = (cfg.get("eval") or {}).get("task") or (cfg.get("train") or {}).get("task")
        self.task = get_registry("tasks").get(task)() if task else None
        self.torch = torch

    def predict(self, context: PythonModelContext, model_input: list[str], params: Optional[dict[str, Any]] = None) -> list[str]:
        """One sampled text per prompt (the type hints are the model's signature: MLflow reads them)."""
        from mdm.platform.infer.generation.generate import generate

        prompts = [str(p) for p in model_input]
        ids = self.task.encode_prompts(self.tokenizer, prompts) if self.task is not None else prompts
        gen = self.torch.Generator().manual_seed(int((params or {}).get("seed", 0)))
        with self.torch.inference_mode():
            out = generate(self.model, self.spec, self.sampler_cfg, ids, tokenizer=self.tokenizer, generator=gen)
        return list(out.texts or [])


def base_and_adapter(path: str, cfg: dict[str, Any]) -> tuple[str, Optional[str]]:
    """(`path`, None) for a full model; for PEFT's adapter directory, (the run's base as a local path or hub id,
    `path`). ValueError naming what was tried when no base can be found here."""
    from mdm.platform.adapter import adapter_base, is_adapter_dir
    from mdm.platform.infer.model_source import ModelSourceError, resolve_model

    if not is_adapter_dir(Path(path)):
        return path, None
    tried = []
    for spec in dict.fromkeys([(cfg.get("train") or {}).get("model"), adapter_base(Path(path))]):
        if spec and spec != "tiny":
            try:
                return resolve_model(spec, tracking_uri=(cfg.get("tracking") or {}).get("tracking_uri")).path, path
            except ModelSourceError as e:
                tried.append(str(e))
    raise ValueError("this MLflow model is a LoRA adapter and its base model cannot be loaded here"
                     + (f" ({'; '.join(tried)})" if tried else " (the run trained on the random tiny model: set "
                        "export.merge_lora: true and load <export>/merged)"))


mlflow.models.set_model(SamplerModel())

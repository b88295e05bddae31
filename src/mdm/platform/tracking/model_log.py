"""Log an exported checkpoint as an MLflow model (a pyfunc that samples), so it shows under Models and can
be registered, served or loaded with `mlflow.pyfunc.load_model`.

    info = log_sampler_model(uri, run_id, "outputs/run/final", dump_config(cfg))
    info.model_uri            # models:/<model id>; register: mlflow.register_model(info.model_uri, "name")

The model is `mdm/platform/infer/generation/sampler_model.py` as code plus the `mdm` package it imports (MLflow's
models-from-code: no pickle), the Hugging Face export and the config. The file is data to MLflow here,
never imported by this module (it belongs to the inference layer above tracking). LLaDA checkpoints are not a transformers pipeline task, so
MLflow's transformers flavour does not apply; this pyfunc is the model's one inference path
(`mdm.platform.infer.generation.generate`). The weights are copied into the model's artifacts: for a multi-GB
checkpoint set `tracking.log_model: false` (the export stays a run artifact, `final_model`).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

PACKAGE_DIR = str(Path(__file__).resolve().parents[2])   # src/mdm: bundled so the model loads anywhere
SAMPLER_CODE = os.path.join(PACKAGE_DIR, "platform", "infer", "generation", "sampler_model.py")
REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors", "omegaconf", "pyyaml", "numpy", "scipy")


def log_sampler_model(uri: str, run_id: str, export_dir: str, config_yaml: str, name: str = "model") -> Any:
    """Log `export_dir` (an HF save_pretrained directory with its tokenizer) as a pyfunc into `run_id`."""
    import mlflow
    import mlflow.pyfunc
    from mlflow.models import Model

    mlflow.set_tracking_uri(uri)   # Model.log resolves the store from the process's tracking URI...
    # ...and the logged model's experiment from the process's active one (else "Default"): the run's.
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient(uri).get_run(run_id).info.experiment_id)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # MLflow suggests an input example; predict's type hints (list[str] -> list[str]) are the signature.
        warnings.filterwarnings("ignore", message=".*input example.*")
        cfg_path = os.path.join(tmp, "config.yaml")
        Path(cfg_path).write_text(config_yaml)
        return Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id, python_model=SAMPLER_CODE,
                         artifacts={"hf_model": export_dir, "config": cfg_path}, code_paths=[PACKAGE_DIR],
                         pip_requirements=list(REQUIREMENTS), loader_module=None,
                         data_path=None, conda_env=None, input_example=None, infer_code_paths=False)

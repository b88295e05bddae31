"""The original scaffold's own files, unchanged (tests/fixtures/seed): its base config and task overlays load,
its `china` switch means something, its DeepSpeed JSON is resolved as Hugging Face's integration resolves one,
and base + overlay + JSON train a few steps on CPU with DeepSpeed (ZeRO-2, CPU offload, bf16).

    pytest tests/platform/test_seed_files.py -q          # ~1.5 minutes (the training run is marked slow)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from mdm.platform.config import load_config
from mdm.platform.fields import ConfigError
from mdm.platform.hub import MIRROR, apply_hub_mirror
from mdm.platform.train.ds_config import build_ds_config

SEED = Path(__file__).resolve().parents[1] / "fixtures" / "seed"
BASE = str(SEED / "train_llada_plus.yaml")
DS_JSON = str(SEED / "zero2_cpu_offload.json")


@pytest.mark.parametrize("task", ["gsm8k", "hitab", "openscience"])
def test_seed_base_and_overlay_load_unchanged(task: str) -> None:
    cfg = load_config([BASE, str(SEED / f"{task}.yaml")])
    t = cfg.train
    assert (t.task, t.train_data_path, t.eval_steps, t.china, cfg.china) == (
        task, f"./data/train/{task}.jsonl", None, False, False)
    assert (t.batch_size_per_gpu, t.grad_accum, t.max_len, t.lr, t.lr_scheduler_type, t.save_steps) == (
        1, 1, 4096, 5e-5, "linear", 100)
    assert (t.max_is_weight, t.n_starts, t.num_samples_t, t.mix_uniform) == (1e6, 20, 30, 0.0)
    assert t.output_dir == "outputs"  # the seed's null


def test_eval_steps_null_is_required_only_by_the_steps_strategy() -> None:
    assert load_config([BASE], ["train.eval_strategy=no"]).train.eval_steps is None
    with pytest.raises(ConfigError, match="train.eval_steps is null but train.eval_strategy: steps needs it"):
        load_config([BASE], ["train.eval_strategy=steps"])
    assert load_config([BASE], ["train.eval_strategy=steps", "train.eval_steps=50"]).train.eval_steps == 50


@pytest.mark.parametrize("key", ["china", "train.china"])
def test_china_points_hub_downloads_at_the_mirror(key: str, monkeypatch, capsys) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert apply_hub_mirror(load_config([BASE])) is None and "HF_ENDPOINT" not in os.environ
    line = apply_hub_mirror(load_config([BASE], [f"{key}=true"]))
    assert os.environ["HF_ENDPOINT"] == MIRROR == "https://hf-mirror.com" and "hf-mirror.com" in line
    monkeypatch.setenv("HF_ENDPOINT", "https://my.mirror")
    assert "HF_ENDPOINT=https://my.mirror is already set and wins" in apply_hub_mirror(
        load_config([BASE], [f"{key}=true"]))
    assert os.environ["HF_ENDPOINT"] == "https://my.mirror"


def _ds(overrides: list[str], path: str = DS_JSON):
    return load_config([BASE, str(SEED / "gsm8k.yaml")], [f"deepspeed.config_path={path}", *overrides])


def test_seed_json_on_cpu_takes_batch_from_train_and_drops_pinned_memory() -> None:
    cfg = _ds(["train.batch_size_per_gpu=4", "train.grad_accum=2"])
    notes: list[str] = []
    conf = build_ds_config(cfg.deepspeed, cfg.train, world_size=2, on_gpu=False, notes=notes)
    assert (conf["train_micro_batch_size_per_gpu"], conf["gradient_accumulation_steps"], conf["train_batch_size"]) \
        == (4, 2, 16)
    zero = conf["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": False}
    assert conf["bf16"] == {"enabled": True} and zero["stage"] == 2 and zero["reduce_bucket_size"] == 2e8
    assert any("train_micro_batch_size_per_gpu 1 -> 4 (train.batch_size_per_gpu)" in n for n in notes)
    assert any("pin_memory turned off" in n and "no GPU" in n for n in notes)
    on_gpu = build_ds_config(cfg.deepspeed, cfg.train, world_size=1, on_gpu=True)
    assert on_gpu["zero_optimization"]["offload_optimizer"]["pin_memory"] is True
    assert json.loads(Path(DS_JSON).read_text())["zero_optimization"]["offload_param"]["pin_memory"] is True


def _hf_reference(conf: dict, args: SimpleNamespace, hidden: int, total: int) -> dict:
    """Hugging Face's own resolution of "auto" (transformers' HfTrainerDeepSpeedConfig), with the three dict
    helpers it inherits from accelerate's HfDeepSpeedConfig (accelerate is not installed here)."""
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    class Reference(HfTrainerDeepSpeedConfig):
        def __init__(self, config: dict) -> None:  # skips the accelerate version check and the global weakref
            self.config, self.mismatches, self._dtype = config, [], None

        def find_config_node(self, ds_key_long: str):
            node, *path = self.config, *ds_key_long.split(".")
            for part in path[:-1]:
                node = node.get(part)
                if node is None:
                    return None, path[-1]
            return node, path[-1]

        def get_value(self, ds_key_long: str):
            node, key = self.find_config_node(ds_key_long)
            return None if node is None else node.get(key)

        def is_true(self, ds_key_long: str) -> bool:
            return bool(self.get_value(ds_key_long))

        def is_zero3(self) -> bool:
            return self.get_value("zero_optimization.stage") == 3

    ref = Reference(json.loads(json.dumps(conf)))
    ref.trainer_config_process(args)
    ref.trainer_config_finalize(args, SimpleNamespace(config=SimpleNamespace(hidden_size=hidden)), total)
    return ref.config


def test_auto_is_resolved_as_hugging_faces_integration_does(tmp_path: Path) -> None:
    autos = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
             "train_batch_size": "auto", "gradient_clipping": "auto",
             "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                       "weight_decay": "auto"}},
             "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto",
                                                               "warmup_num_steps": "auto",
                                                               "total_num_steps": "auto"}},
             "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                                   "stage3_param_persistence_threshold": "auto"},
             "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}
    path = tmp_path / "auto.json"
    path.write_text(json.dumps(autos))
    cfg = _ds(["train.batch_size_per_gpu=4", "train.grad_accum=3", "train.max_grad_norm=0.5", "train.lr=3e-4",
               "train.adam_beta2=0.95", "train.adam_epsilon=1e-6", "train.weight_decay=0.1", "train.warmup_steps=7",
               "deepspeed.precision=bf16"], str(path))
    ours = build_ds_config(cfg.deepspeed, cfg.train, world_size=2, total_steps=100, hidden_size=64, on_gpu=True)
    t = cfg.train
    args = SimpleNamespace(world_size=2, per_device_train_batch_size=4, gradient_accumulation_steps=3,
                           max_grad_norm=0.5, learning_rate=t.lr, adam_beta1=t.adam_beta1, adam_beta2=0.95,
                           adam_epsilon=1e-6, weight_decay=0.1, save_on_each_node=False, fp16=False,
                           fp16_full_eval=False, bf16=True, bf16_full_eval=False, get_warmup_steps=lambda n: 7)
    reference = _hf_reference(autos, args, hidden=64, total=100)
    assert {k: ours[k] for k in reference} == reference
    assert ours["zero_optimization"]["reduce_bucket_size"] == 64 * 64
    assert ours["scheduler"]["params"]["warmup_max_lr"] == 3e-4 and ours["bf16"]["enabled"] is True


def test_json_mistakes_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"fp16": {"enabled": true}}')
    cfg = _ds([], str(bad))
    with pytest.raises(ValueError, match="fp16.enabled is not supported on CPU"):
        build_ds_config(cfg.deepspeed, cfg.train, world_size=1, on_gpu=False)
    bad.write_text('{"optimizer": {"type": "AdamW", "params": {"lr": 0.1}}}')
    with pytest.raises(ValueError, match=r"optimizer.params.lr=0.1 vs train.lr=5e-05 \(set them to \"auto\""):
        build_ds_config(cfg.deepspeed, cfg.train, world_size=1, on_gpu=False)
    bad.write_text('{"zero_optimization": {"stage": "auto"}}')
    with pytest.raises(ValueError, match="\"auto\" at zero_optimization.stage has no value"):
        build_ds_config(cfg.deepspeed, cfg.train, world_size=1, on_gpu=False)
    bad.write_text('{"zero_optimization": ')
    with pytest.raises(ValueError, match=f"{bad}:1: not valid JSON"):
        build_ds_config(cfg.deepspeed, cfg.train, world_size=1, on_gpu=False)


@pytest.mark.slow
def test_seed_base_overlay_and_json_train_on_cpu(ray_local, tmp_path: Path, monkeypatch, capsys) -> None:
    """The seed's flow: preprocess into its layout (./data/train/gsm8k.jsonl, from the shipped GSM8K), then
    train with base + overlay + DeepSpeed JSON; only the model size and the budget come from --set."""
    from mdm.platform.commands.train import run
    from mdm.tasks.preprocess import main as preprocess

    monkeypatch.chdir(tmp_path)
    flags = ["--config", BASE, "--config", str(SEED / "gsm8k.yaml")]
    assert preprocess([*flags, "--tokenizer", "train-bpe", "--vocab_size", "300", "--limit", "40",
                       "--max_len", "512", "--no_progress"]) == 0
    assert Path("data/train/gsm8k.jsonl").is_file()
    cfg = load_config(flags[1::2], [
        f"deepspeed.config_path={DS_JSON}", "train.model=tiny", "data.tokenizer=data/train/gsm8k_tokenizer",
        "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.mlp_hidden_size=64",
        "train.max_steps=3", "train.logging_steps=1", f"ray.storage_path={tmp_path / 'ray'}",
        f"tracking.tracking_uri=sqlite:///{tmp_path}/mlruns.db"])
    assert run(cfg) == 0
    out = capsys.readouterr()
    assert "pin_memory turned off" in out.err and "mdm train: done at step 3" in out.out
    final = next(Path("outputs").glob("gsm8k-*/final"))  # the seed's output_dir: null -> ./outputs
    assert (final / "model.safetensors").is_file()
    loss = float(out.out.split("eval/loss ")[1].split(")")[0])
    assert math.isfinite(loss) and 0.5 * math.log(300) < loss < 3 * math.log(300)

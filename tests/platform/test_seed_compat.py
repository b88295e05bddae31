"""A seed user's names, flags and habits: task aliases, the legacy infer/score flags, a missing --auto_import
module, keys that used to do nothing, values that cannot work, and `import mdm` keeping Ray on loopback.

    pytest tests/platform/test_seed_compat.py -q        # ~30 s, no Ray
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mdm.platform import cli
from mdm.platform.commands.infer import main as infer_main
from mdm.platform.config import load_config
from mdm.platform.fields import ConfigError
from mdm.platform.infer.generation.job import _task_rows
from mdm.platform.infer.pool import InferenceError, load_task
from mdm.platform.registry import get_registry, load_builtins
from mdm.platform.train.driver import train_data_path

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "experiments" / "configs"
load_builtins()


def _py(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})})


def test_the_seeds_task_names_are_aliases(capsys) -> None:
    tasks = get_registry("tasks")
    for name in ("gsm8k", "hitab", "openscience"):
        assert tasks.get(f"llada_{name}") is tasks.get(name) and f"llada_{name}" not in tasks.names()
        assert load_config([], [f"train.task=llada_{name}"]).train.task == name  # one name in the run's config
    assert cli.main(["list", "tasks"]) == 0
    assert "llada_gsm8k -> gsm8k" in capsys.readouterr().out.splitlines()
    with pytest.raises(ConfigError, match="did you mean 'llada_hitab'"):
        load_config([], ["train.task=llada_hitabb"])


def test_legacy_infer_flags_are_aliases(tmp_path: Path, capsys) -> None:
    missing = str(tmp_path / "no_such_model")
    assert infer_main(["--task", "gsm8k", "--model_name", missing, "--out_file", "p.jsonl", "--steps", "8",
                       "--gen_length", "16", "--set", "sampler.block_length=16", "--dump_config"]) == 0
    dumped = capsys.readouterr().out
    assert "  steps: 8\n" in dumped and "  gen_length: 16\n" in dumped
    assert infer_main(["--task", "gsm8k", "--model_name", missing, "--out_file", str(tmp_path / "p.jsonl")]) == 2
    assert missing in capsys.readouterr().err  # --model_name reached --model
    assert not (tmp_path / "p.jsonl").exists()


def test_legacy_score_flag_and_aliased_task_records(tmp_path: Path, capsys) -> None:
    from mdm.tasks.harness import main as score_main

    preds = tmp_path / "p.jsonl"
    preds.write_text(json.dumps({"task": "llada_gsm8k", "prediction": "so #### 18", "gold_raw": "#### 18",
                                 "id": "a"}) + "\n")
    assert score_main(["--pred_jsonl", str(preds), "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert (metrics["task"], metrics["accuracy"], metrics["task_mismatch"]) == ("gsm8k", 1.0, 0)


def test_a_missing_auto_import_module_is_one_line(tmp_path: Path) -> None:
    for args in (["-m", "mdm", "train", "--auto_import", "no_such_mod_xyz", "--dump_config"],
                 [str(REPO / "experiments" / "gsm8k.py"), "--auto_import", "no_such_mod_xyz", "--dump_config"]):
        r = _py(*args, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "--auto_import no_such_mod_xyz: no module named no_such_mod_xyz" \
            in r.stderr, r.stderr


@pytest.mark.parametrize("override,words", [
    ("sampler.steps=0", "sampler.steps must be >= 1, got 0 (from --set sampler.steps=0)"),
    ("train.warmup_steps=-5", "train.warmup_steps must be >= 0, got -5 (from --set train.warmup_steps=-5)"),
    ("train.max_len=1", "train.max_len must be >= 2 (a prompt token and a response token), got 1"),
    ("sampler.gen_length=0", "sampler.gen_length must be >= 1"),
])
def test_values_that_cannot_work_are_rejected(override: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config([], [override])
    assert words in str(e.value)


def test_epochs_under_a_max_steps_preset_is_reported(capsys) -> None:
    preset = [str(CONFIGS / f) for f in ("base.yaml", "tiny.yaml", "gsm8k.yaml")]
    cfg = load_config(preset, ["train.epochs=3"])
    err = capsys.readouterr().err
    assert cfg.train.max_steps == 200 and err.count("\n") == 1
    assert f"train.epochs=3 (from --set train.epochs=3) has no effect: train.max_steps=200 (from {preset[1]}) " \
           "wins; set train.max_steps=-1" in err
    load_config(preset, ["train.epochs=3", "train.max_steps=-1"])
    load_config(preset)
    assert capsys.readouterr().err == ""


def test_one_key_says_where_task_data_is(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="eval.data_dir .* is now data.task_data_dir"):
        load_config([], [f"eval.data_dir={tmp_path}"])
    rows = [{"prompt": "Which is larger, 3 or 5?", "response": "The answer is 5."}]
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # mdm infer reads it ...
    cfg = load_config([], [f"data.task_data_dir={tmp_path}"])
    task = load_task("hitab", "test", cfg.data, need_split=True)
    assert [r["prompt"] for r in _task_rows(task, "test", None)] == [rows[0]["prompt"]]
    with pytest.raises(InferenceError, match="task 'hitab' has no data here: download .* data.task_data_dir"):
        _task_rows(load_task("hitab", "test", load_config([]).data, need_split=True), "test", None)
    assert load_task("gsm8k", "test", load_config([], ["data.source=hub"]).data, True).source == "hub"
    # ... mdm train names it in the command that makes the seed's default data file ...
    monkeypatch.chdir(tmp_path)
    seed = load_config([], ["train.task=hitab", f"data.task_data_dir={tmp_path}"])
    with pytest.raises(ValueError, match=f"default ./data/train/hitab.jsonl .* `mdm preprocess --task hitab "
                                         f"--data_dir {tmp_path} --tokenizer TOKENIZER"):
        train_data_path(seed)
    # ... and mdm preprocess takes it (and train.task) from the config, writing that default file.
    from mdm.tasks.preprocess import main as preprocess

    assert preprocess(["--set", "train.task=llada_hitab", "--set", f"data.task_data_dir={tmp_path}",
                       "--tokenizer", "train-bpe", "--vocab_size", "280", "--no_progress"]) == 0
    assert train_data_path(seed) == "./data/train/hitab.jsonl" and Path("data/train/hitab.jsonl").is_file()


@pytest.mark.parametrize("env,want", [({}, "0"), ({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}, "1"),
                                      ({"RAY_ADDRESS": "127.0.0.1:6379"}, None)])
def test_import_mdm_keeps_an_embedded_ray_on_loopback(env: dict, want: str | None) -> None:
    """Before anything can import Ray, unless the user chose (1) or the process joins a cluster."""
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    code = ("import mdm, os, ray._private.ray_constants as c\n"
            "print(os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'), c.ENABLE_RAY_CLUSTER)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**base, "PYTHONPATH": str(REPO / "src"), **env})
    value, enabled = r.stdout.split()
    assert value == str(want) and enabled == str(want != "0"), r.stderr

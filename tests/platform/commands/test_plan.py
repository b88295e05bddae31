"""`mdm plan` (mdm.platform.commands.plan): the breakdown and the verdict on the command line.

    pytest tests/platform/commands/test_plan.py -q      # about 15 s (one subprocess)
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from mdm.platform.commands.plan import CARDS, gpu_gib, main

PARTS = ("weights", "gradients", "optimizer state", "activations", "total")


def test_mdm_plan_prints_the_breakdown_and_a_verdict():
    proc = subprocess.run([sys.executable, "-m", "mdm", "plan", "--config", "experiments/configs/base.yaml",
                           "--gpu-mem", "80", "--gpus", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert all(p in out for p in PARTS) and "of 80.00: fits" in out
    assert "planned with LLaDA's 126,464 tokens" in out  # base.yaml names no tokenizer: said, not hidden


def test_a_config_that_does_not_fit_exits_1_with_changes(capsys):
    rc = main(["--config", "experiments/configs/base.yaml", "--config", "experiments/configs/llada_8b.yaml",
               "--gpu-mem", "h100", "--gpus", "1"])
    out = capsys.readouterr().out
    assert rc == 1 and "does not fit" in out and "changes that would fit" in out and "--set model.lora.r=64" in out


def test_gpus_default_to_the_training_workers(capsys):
    assert main(["--config", "experiments/configs/base.yaml", "--config", "experiments/configs/llada_8b.yaml",
                 "--gpu-mem", "a100-80"]) == 0
    assert "ZeRO-3 over 8 GPU(s)" in capsys.readouterr().out  # llada_8b.yaml: ray.num_workers 8


def test_a_tiny_model_takes_its_vocabulary_from_the_tokenizer(arithmetic_data, capsys):
    assert main(["--config", "experiments/configs/base.yaml", "--set", f"data.tokenizer={arithmetic_data['tokenizer']}",
                 "--gpu-mem", "l4", "--gpus", "1"]) == 0
    assert "126,464" not in capsys.readouterr().out


def test_cards_and_bad_values():
    assert gpu_gib("H100") == 80 and gpu_gib("a80") == 80 and gpu_gib("24GB") == 24 and CARDS["h200"] == 141
    for bad in ("h1000", "-3"):
        with pytest.raises(Exception, match="card|> 0"):
            gpu_gib(bad)


def test_bad_arguments_are_one_line_errors(capsys):
    assert main(["--gpu-mem", "80", "--gpus", "0"]) == 2
    assert "mdm plan: error: --gpus must be >= 1" in capsys.readouterr().err
    assert main(["--gpu-mem", "80", "--set", "model.lora.target_modules=[qproj]", "--set", "model.lora.r=4"]) == 2
    assert "model.lora.target_modules: 'qproj'" in capsys.readouterr().err

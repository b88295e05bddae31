"""The `mdm` command line as a new user would try it, run as subprocesses."""

import subprocess
import sys

import yaml


def run(*args, ok=True):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_train_dump_config_prints_yaml_that_parses(tmp_path):
    over = tmp_path / "over.yaml"
    over.write_text("train: {epochs: 3}\n")
    proc = run("-m", "mdm.train", "--config", str(over), "--set", "train.lr=1e-5",
               "--set", "train.train_mode=MIRROR", "--dump_config")
    data = yaml.safe_load(proc.stdout)
    assert data["train"]["lr"] == 1e-5 and data["train"]["train_mode"] == "MIRROR" and data["train"]["epochs"] == 3


def test_mdm_config_equals_train_dump():
    a = run("-m", "mdm", "config", "--set", "train.lr=2e-5").stdout
    b = run("-m", "mdm", "train", "--set", "train.lr=2e-5", "--dump_config").stdout
    assert a == b


def test_help_and_list():
    out = run("-m", "mdm", "--help").stdout
    for cmd in ("train", "tune", "infer", "score", "preprocess", "list", "config"):
        assert f"  {cmd} " in out
    assert set(run("-m", "mdm", "list", "p_models").stdout.split()) >= {"EPR", "AP"}
    assert "llada_plus" in run("-m", "mdm", "list", "engines").stdout.split()


def test_bad_key_exits_nonzero_with_message():
    proc = run("-m", "mdm.train", "--set", "train.learning_rate=1e-5", "--dump_config", ok=False)
    assert proc.returncode == 2
    assert "unknown key train.learning_rate (from --set train.learning_rate=1e-5); did you mean train.lr?" in proc.stderr


def test_unknown_command():
    proc = run("-m", "mdm", "fly", ok=False)
    assert proc.returncode == 2 and "unknown command 'fly'" in proc.stderr

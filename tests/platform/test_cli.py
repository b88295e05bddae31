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


def test_every_entry_point_dumps_the_same_config_and_runs_nothing(tmp_path, capsys):
    """`--dump_config` on tune, infer and generate prints what `mdm config` prints and starts no work."""
    from mdm.platform import cli
    from mdm.platform.commands import generate as generate_cli
    from mdm.platform.commands import infer as batch_infer
    from mdm.platform.commands import tune

    flags = ["--set", "train.lr=3e-5", "--set", "sampler.steps=8", "--dump_config"]
    assert cli.main(["config", *flags[:-1]]) == 0
    want = capsys.readouterr().out
    missing = str(tmp_path / "absent")  # a run would fail on these paths; a dump never opens them
    for main, extra in ((tune.main, ["--sweep", missing + ".yaml"]), (batch_infer.main, ["--model", missing]),
                        (generate_cli.main, ["--model", missing, "--prompt", "hi"]), (cli.main, None)):
        argv = ["train", *flags] if extra is None else [*extra, *flags]
        assert main(argv) == 0
        assert capsys.readouterr().out == want


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


def test_mistyped_command_suggests_the_close_one():
    proc = run("-m", "mdm", "trian", ok=False)
    assert proc.returncode == 2
    assert "mdm: unknown command 'trian'; did you mean 'train'?" in proc.stderr
    assert proc.stdout == ""


def test_readme_config_example_runs_as_written():
    """The README's `mdm config --config experiments/configs/base.yaml`, from the repository root."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    assert "mdm config --config experiments/configs/base.yaml" in readme
    proc = subprocess.run([sys.executable, "-m", "mdm", "config", "--config", "experiments/configs/base.yaml"],
                          capture_output=True, text=True, timeout=120, cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "train" in yaml.safe_load(proc.stdout)

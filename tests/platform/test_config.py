"""Config loading: overlay order, deep merge, --set parsing, errors with sources and suggestions, round trip."""

import textwrap

import pytest
import yaml

from mdm.platform.config import load_config
from mdm.platform.config_ops import dump_config, flatten, with_overrides
from mdm.platform.fields import ConfigError


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_overlays_merge_deeply_in_order(tmp_path):
    base = write(tmp_path, "base.yaml", """
        train: {lr: 1.0e-4, epochs: 3, train_mode: Normal}
        ray: {num_workers: 2}
    """)
    over = write(tmp_path, "over.yaml", """
        train: {lr: 5.0e-5}
    """)
    last = write(tmp_path, "last.yaml", "train: {lr: 2.0e-5}\n")
    cfg = load_config([base, over, last])
    assert cfg.train.lr == 2e-5            # the last file wins
    assert cfg.train.epochs == 3           # siblings from the base survive the overlay
    assert cfg.ray.num_workers == 2        # other sections untouched
    assert cfg.train.batch_size_per_gpu == 8  # defaults fill the rest


def test_lists_are_replaced_not_merged(tmp_path):
    a = write(tmp_path, "a.yaml", "auto_import: [json, csv]\n")
    b = write(tmp_path, "b.yaml", "auto_import: [json]\n")
    assert load_config([a, b]).auto_import == ["json"]


@pytest.mark.parametrize("text,expected", [
    ("train.lr=1e-5", 1e-5), ("train.lr=3", 3.0), ("train.PPOTS=true", True), ("train.PPOTS=false", False),
    ("train.task=null", None), ("auto_import=[json,csv]", ["json", "csv"]), ("train.epochs=7", 7),
    ("train.train_mode=MIRROR", "MIRROR"),
])
def test_set_values_parse_as_yaml_scalars(text, expected):
    key = text.split("=")[0]
    assert flatten(load_config([], [text]))[key] == expected


def test_set_overrides_files(tmp_path):
    base = write(tmp_path, "base.yaml", "train: {lr: 1.0e-4}\n")
    assert load_config([base], ["train.lr=1e-5"]).train.lr == 1e-5


def test_unknown_key_names_key_source_and_suggestion(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config([], ["train.learning_rate=1e-5"])
    assert str(e.value).startswith(
        "unknown key train.learning_rate (from --set train.learning_rate=1e-5); did you mean train.lr?")
    bad = write(tmp_path, "bad.yaml", "train: {gradient_accumulation_steps: 4}\n")
    with pytest.raises(ConfigError, match=r"unknown key train.gradient_accumulation_steps \(from .*bad.yaml\); "
                                          r"did you mean train.grad_accum\?"):
        load_config([bad])
    with pytest.raises(ConfigError, match=r"unknown key trian \(from --set trian.lr=1\); did you mean train\?"):
        load_config([], ["trian.lr=1"])


def test_bad_values_name_key_and_valid_choices(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config([], ["train.train_mode=MIROR"])
    assert str(e.value) == ("bad value 'MIROR' for train.train_mode (from --set train.train_mode=MIROR); "
                            "did you mean MIRROR? valid: Normal, MIRROR")
    f = write(tmp_path, "s.yaml", "train: {save_strategy: weekly}\n")
    with pytest.raises(ConfigError, match=r"bad value 'weekly' for train.save_strategy \(from .*s.yaml\).*"
                                          r"valid: last, epoch, steps, no"):
        load_config([f])
    with pytest.raises(ConfigError, match=r"bad value for train.lr \(from --set train.lr=abc\)"):
        load_config([], ["train.lr=abc"])
    with pytest.raises(ConfigError, match=r"bad value for train.p_model .*unknown p_models 'EPX'; did you mean 'EPR'\?"):
        load_config([], ["train.p_model=EPX"])
    with pytest.raises(ConfigError, match=r"train.lr must be > 0, got -1.0 \(from --set train.lr=-1\)"):
        load_config([], ["train.lr=-1"])
    with pytest.raises(ConfigError, match=r"bad value 'sometimes' for train.eval_strategy.*valid: epoch, steps, no"):
        load_config([], ["train.eval_strategy=sometimes"])
    with pytest.raises(ConfigError, match=r"ray.stop_grace_s must be >= 0 seconds \(0: stop at once\), got -5.0 "
                                          r"\(from --set ray.stop_grace_s=-5\)"):
        load_config([], ["ray.stop_grace_s=-5"])


def test_malformed_inputs_are_named(tmp_path):
    with pytest.raises(ConfigError, match="config file .*missing.yaml does not exist"):
        load_config([str(tmp_path / "missing.yaml")])
    broken = write(tmp_path, "broken.yaml", "train: {lr: [1\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config([broken])
    with pytest.raises(ConfigError, match="--set train.lr: expected KEY=VALUE"):
        load_config([], ["train.lr"])


def test_dump_load_round_trip(tmp_path):
    cfg = load_config([], ["train.lr=1e-5", "train.train_mode=MIRROR", "train.PPOTS=true", "ray.num_workers=2"])
    text = dump_config(cfg)
    dumped = write(tmp_path, "dump.yaml", text)
    again = load_config([dumped])
    assert again == cfg
    assert dump_config(again) == text


def test_seed_style_base_and_task_overlay_load(tmp_path):
    # The seed's layout: every knob under train.*, the task overlay naming task and data.
    base = write(tmp_path, "base.yaml", """
        engine: llada_plus
        train:
          train_mode: MIRROR
          PPOTS: true
          p_model: EPR
          num_samples_x0: 64
          num_samples_t: 20
          num_samples_xt: 4
          n_starts: 10
          max_is_weight: 20.0
          mix_uniform: 0.05
          max_tokens_per_forward: 32768
          batch_size_per_gpu: 4
          grad_accum: 8
          lr: 1.0e-5
          lr_scheduler_type: cosine
          warmup_steps: 50
          epochs: 2
          train_ratio: 0.98
          max_len: 2048
          eval_strategy: steps
          eval_steps: 100
          save_strategy: epoch
          save_steps: 500
          logging_steps: 10
          output_dir: outputs/llada_plus
          seed: 1234
          model: GSAI-ML/LLaDA-8B-Instruct
    """)
    overlay = write(tmp_path, "gsm8k.yaml", """
        train:
          task: gsm8k
          train_data_path: data/train/gsm8k.jsonl
    """)
    cfg = load_config([base, overlay])
    t = cfg.train
    assert (t.task, t.train_data_path, t.train_mode, t.PPOTS, t.p_model) == (
        "gsm8k", "data/train/gsm8k.jsonl", "MIRROR", True, "EPR")
    assert (t.grad_accum, t.lr, t.max_len, t.seed, t.model) == (8, 1e-5, 2048, 1234, "GSAI-ML/LLaDA-8B-Instruct")


def test_yaml_no_is_the_choice_no(tmp_path):
    # YAML 1.1 reads a bare `no` as false; a choice field that offers "no" takes it as that word.
    f = write(tmp_path, "seed.yaml", "train: {eval_strategy: no, save_strategy: no}\n")
    cfg = load_config([f], ["train.save_strategy=no"])
    assert (cfg.train.eval_strategy, cfg.train.save_strategy) == ("no", "no")
    assert load_config([write(tmp_path, "d.yaml", dump_config(cfg))]) == cfg
    with pytest.raises(ConfigError, match="bad value 'True' for train.eval_strategy"):
        load_config([], ["train.eval_strategy=yes"])


def test_with_overrides_validates_like_set():
    cfg = load_config([])
    out = with_overrides(cfg, {"train.lr": 3e-4, "train.train_mode": "MIRROR"})
    assert (out.train.lr, out.train.train_mode, cfg.train.lr) == (3e-4, "MIRROR", 1e-4)
    with pytest.raises(ConfigError, match="unknown key train.learning_rate.*did you mean train.lr"):
        with_overrides(cfg, {"train.learning_rate": 1.0})
    with pytest.raises(ConfigError, match="bad value 'X' for train.train_mode"):
        with_overrides(cfg, {"train.train_mode": "X"})


def test_auto_import_registers_user_plugins(tmp_path, monkeypatch):
    (tmp_path / "my_pmodels.py").write_text(
        "from mdm.platform.registry import get_registry\n"
        "get_registry('p_models').register('MINE', object())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_config([], ["train.p_model=MINE"], auto_import=["my_pmodels"])
    assert cfg.train.p_model == "MINE" and "my_pmodels" in cfg.auto_import
    with pytest.raises(ModuleNotFoundError, match="--auto_import no_such_module_xyz"):
        load_config([], [], auto_import=["no_such_module_xyz"])


def test_dump_is_plain_yaml():
    data = yaml.safe_load(dump_config(load_config([])))
    assert data["engine"] == "llada_plus" and data["train"]["train_mode"] == "Normal"


def test_data_schema_is_a_registered_name_and_schema_module_is_deprecated(tmp_path, capsys):
    from mdm.platform.train.data_config import row_schema
    from mdm.tasks import data as task_data

    cfg = load_config()
    assert cfg.data.schema == "prompt_completion"
    schema = row_schema(cfg.data)  # the tasks' own functions, reached through the registry
    assert schema.validate_row is task_data.validate_row and schema.collate is task_data.collate
    with pytest.raises(ConfigError, match=r"data.schema.*unknown schemas 'prompt_complete'.*prompt_completion"):
        load_config([], ["data.schema=prompt_complete"])

    old = tmp_path / "old.yaml"
    old.write_text("data:\n  schema_module: mdm.tasks.data\n  bad_rows: skip\n")
    cfg = load_config([str(old)])
    assert cfg.data.bad_rows == "skip" and cfg.data.schema == "prompt_completion"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"data.schema_module (from {old}) is deprecated" in err
    with pytest.raises(ConfigError, match=r"data.schema_module \(from --set data.schema_module=my.rows\) is no "
                                          r"longer read: register .*RowSchema.*data.schema"):
        load_config([], ["data.schema_module=my.rows"])

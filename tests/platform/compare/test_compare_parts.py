"""The pieces of a comparison, each against a hand computation (no Ray, no MLflow server):

- the grid: compare.grid x lrs x seeds, p_model deduplicated when PPOTS is off, the batch halved for MIRROR at
  equal forwards (and an odd batch refused, naming the keys), seeds in the grid refused;
- names: `runs.trial_label` ("MIRROR+PPOTS(EPR) lr=1e-3 seed=1"), the configuration label without the seed,
  `tracked_params` (inert keys: P-POTS' without PPOTS, LoRA's other keys with rank 0; no run_name);
- aggregation: mean and sample std per configuration against statistics by hand; unfinished trials left out;
  the CSV / JSON / markdown carry the same numbers; the figures are PNG files;
- paired statistics in the summary: the Δ column, its footer, the JSON "paired" / "paired_all" and the CSV
  columns carry paired_stats' numbers (themselves checked against scipy in test_paired_stats.py), the
  interval against scipy.stats.ttest_rel; metrics no trial reported print "-";
- the logging window: means, maxima, the gradient-norm variance (n - 1) by hand; the objective's pooled values win;
- Tune's table columns: the swept keys by name.
"""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest

from mdm.platform.config import load_config
from mdm.platform.config_ops import flatten
from mdm.platform.fields import ConfigError
from mdm.platform.runs import INERT, format_value, tracked_params, trial_label
from mdm.platform.train.step_window import StepWindow
from mdm.platform.compare import aggregate as agg
from mdm.platform.compare.compare_space import cell_overrides, comparison_space, group_label, swept_keys
from mdm.platform.tuner.reporter import parameter_columns

GRID = "compare.grid={train.train_mode: [Normal, MIRROR], train.PPOTS: [false, true], train.p_model: [EPR, AP]}"


def _cfg(*overrides: str):
    return load_config([], [GRID, "train.batch_size_per_gpu=8", *overrides])


def test_grid_crosses_configurations_lrs_and_seeds_and_dedupes_inert_keys():
    cfg = _cfg("compare.lrs=[1.0e-3, 3.0e-4]", "compare.seeds=[1, 2]")
    space = comparison_space(cfg)
    # (Normal, MIRROR) x (PPOTS off: 1, on: EPR, AP) = 6 configurations, x 2 lrs x 2 seeds
    assert len(space.trials) == 6 * 2 * 2 and space.n_grid_raw == 8 * 2 * 2
    assert swept_keys(space)[-1] == "train.seed"
    flat = flatten(cfg)
    labels = {group_label({**flat, **t}, space) for t in space.trials}
    assert labels == {f"{c} lr={lr}" for c in ("Standard", "MIRROR", "PPOTS(EPR)", "PPOTS(AP)",
                                               "MIRROR+PPOTS(EPR)", "MIRROR+PPOTS(AP)") for lr in ("1e-3", "3e-4")}


def test_equal_forwards_halves_mirror_and_equal_batch_does_not():
    cfg = _cfg("compare.seeds=[1]")
    space = comparison_space(cfg)
    batches = {(t["train.train_mode"], cell_overrides(cfg, t)["train.batch_size_per_gpu"]) for t in space.trials}
    assert batches == {("Normal", 8), ("MIRROR", 4)}
    same = _cfg("compare.seeds=[1]", "compare.equalize=batch")
    assert {cell_overrides(same, t).get("train.batch_size_per_gpu") for t in comparison_space(same).trials} == {None}
    with pytest.raises(ConfigError, match=r"train.batch_size_per_gpu \(7\).*compare.equalize: batch"):
        comparison_space(_cfg("train.batch_size_per_gpu=7"))
    with pytest.raises(ConfigError, match="compare.seeds"):
        comparison_space(load_config([], ["compare.grid={train.seed: [1, 2]}"]))
    with pytest.raises(ConfigError, match="compare.grid is empty"):
        comparison_space(load_config([], []))
    with pytest.raises(ConfigError, match="train.train_mode"):  # the sweep validation names the bad value
        comparison_space(load_config([], ["compare.grid={train.train_mode: [Normal, MIROR]}"]))


def test_labels_and_tracked_params():
    assert [format_value(v) for v in (1e-3, 3e-4, 2.5e-4, 0.25, 64, True, 1.5e4)] == \
        ["1e-3", "3e-4", "2.5e-4", "0.25", "64", "true", "1.5e4"]
    keys = ["train.train_mode", "train.PPOTS", "train.p_model", "train.lr", "train.seed"]
    cfg = load_config([], ["train.train_mode=MIRROR", "train.PPOTS=true", "train.lr=1e-3", "train.seed=1"])
    assert trial_label(flatten(cfg), keys) == "MIRROR+PPOTS(EPRS) lr=1e-3 seed=1"
    plain = load_config([], ["train.lr=1e-3", "train.seed=2", "run_name=x"])
    assert trial_label(flatten(plain), keys) == "Standard lr=1e-3 seed=2"
    assert trial_label(flatten(plain), ["train.lr", "model.d_model"]) == "lr=1e-3 d_model=128"
    params = tracked_params(plain)
    assert "run_name" not in params and params["train.p_model"] == INERT and params["train.mix_uniform"] == INERT
    assert tracked_params(cfg)["train.p_model"] == "EPRS" and params["train.lr"] == 1e-3


def test_lora_keys_are_inert_with_rank_0():
    lora = ("model.lora.alpha", "model.lora.dropout", "model.lora.target_modules")
    off = tracked_params(load_config([], ["model.lora.alpha=32"]))
    assert off["model.lora.r"] == 0 and all(off[k] == INERT for k in lora)
    on = load_config([], ["model.lora.r=8", "model.lora.alpha=32"])
    params = tracked_params(on)
    assert params["model.lora.alpha"] == 32 and params["model.lora.target_modules"] == on.model.lora.target_modules
    assert trial_label(flatten(load_config([], [])), ["model.lora.r", "model.lora.alpha"]) == "r=0"
    assert trial_label(flatten(on), ["model.lora.r", "model.lora.alpha"]) == "r=8 alpha=32"


def _rows():
    # two configurations; b has an unfinished trial that must not count
    out = []
    for group, accs, losses in (("a", [0.5, 0.7, 0.9], [1.0, 2.0, 4.0]), ("b", [0.2, 0.4], [3.0, 3.5])):
        for seed, (acc, loss) in enumerate(zip(accs, losses), 1):
            out.append({"group": group, "status": "FINISHED", "seed": seed,
                        "metrics": {"eval/accuracy": acc, "eval/loss": loss, "train/loss": loss + 1},
                        "curve": [(10, {"train/loss": loss + 2}), (20, {"train/loss": loss + 1})]})
    out.append({"group": "b", "status": "KILLED", "seed": 3, "metrics": {"eval/accuracy": 1.0}, "curve": []})
    return out


def test_aggregate_mean_std_and_files(tmp_path):
    groups = agg.aggregate(_rows())
    assert [g.label for g in groups] == ["a", "b"] and [g.n for g in groups] == [3, 2]
    a, b = groups
    assert a.stats["eval/accuracy"][:2] == pytest.approx((0.7, statistics.stdev([0.5, 0.7, 0.9])))
    assert a.stats["eval/loss"][1] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert b.stats["eval/accuracy"][:2] == pytest.approx((0.3, math.sqrt(0.02)))
    table = agg.format_table(groups)
    assert "70.0 ± 20.0" in table and "30.0 ± 14.1" in table
    md = agg.markdown_table(groups)
    assert md.splitlines()[0].startswith("| configuration | n | eval/accuracy (%)") and "| a | 3 | 70.0 ± 20.0 |" in md
    with open(agg.write_csv(groups, str(tmp_path / "s.csv"))) as f:
        rows = list(csv.DictReader(f))
    assert float(rows[1]["eval/accuracy mean"]) == pytest.approx(0.3) and rows[0]["seeds"] == "1 2 3"
    js = json.loads(open(agg.write_json(groups, str(tmp_path / "s.json"), {"equalize": "forwards"})).read())
    assert js["equalize"] == "forwards" and js["groups"][0]["eval/loss std"] == pytest.approx(a.stats["eval/loss"][1])
    for path in (agg.bar_chart(groups, "eval/accuracy", str(tmp_path / "a.png")),
                 agg.loss_curves(_rows(), "train/loss", str(tmp_path / "c.png"))):
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    single = agg.aggregate(_rows()[:1])
    assert single[0].n == 1 and math.isnan(single[0].stats["eval/accuracy"][1])
    assert "50.0" in agg.format_table(single) and "±" not in agg.format_table(single)


def test_aggregate_paired_against_the_baseline(tmp_path):
    from scipy import stats

    rows = _rows()
    rows[4]["metrics"]["eval/accuracy"] = 0.45  # b seed 2: paired differences -0.3, -0.25
    groups = agg.aggregate(rows, baseline="a")
    a, b = groups
    assert a.is_baseline and a.paired == {} and a.primary is None and list(b.paired) == list(agg.PAIRED_METRICS)
    p = b.primary  # eval/accuracy, seeds 1 and 2 (b's seed 3 did not finish)
    ci = stats.ttest_rel([0.2, 0.45], [0.5, 0.7]).confidence_interval(0.95)
    assert p.metric == "eval/accuracy" and p.n == 2 and p.delta_mean == pytest.approx(-0.275)
    assert p.ci95 == pytest.approx((ci.low, ci.high)) and b.paired["eval/loss"].delta_mean == pytest.approx(1.75)
    assert b.paired["eval/loss_quad"].n == 0  # no trial reported it
    table = agg.format_table(groups)
    head, first, second, footer = table.splitlines()
    assert "Δ eval/accuracy (pts) vs a [95% CI], p" in head and "baseline" in first
    exact = stats.permutation_test(([0.2, 0.45], [0.5, 0.7]), lambda x, y, axis: (x - y).mean(axis=axis),
                                   permutation_type="samples", n_resamples=float("inf")).pvalue
    assert f"-27.5 [{ci.low * 100:+.1f}, {ci.high * 100:+.1f}], p={exact:.3f}" in second
    assert footer.startswith("Δ = configuration - a on eval/accuracy, paired by seed") and "b n=2 MDD" in footer
    cols, body = agg.table_rows(groups)
    assert [body[1][cols.index(m)] for m in ("eval/loss_quad", "eval/loglik_per_token")] == ["-", "-"]  # missing
    md = agg.markdown_table(groups)
    assert "| a | 3 | 70.0 ± 20.0 |" in md and md.splitlines()[2].endswith("| baseline |") and "b n=2" in md
    js = json.loads(open(agg.write_json(groups, str(tmp_path / "s.json"), {"equalize": "forwards"})).read())
    ja, jb = js["groups"]
    assert js["baseline"] == "a" and js["equalize"] == "forwards" and ja["paired"] is None and ja["paired_all"] == {}
    assert set(jb["paired"]) == {"baseline", "metric", "delta_mean", "ci95", "p_value", "n", "sd", "mdd"}
    assert jb["paired"]["ci95"] == pytest.approx([ci.low, ci.high]) and jb["paired"]["baseline"] == "a"
    assert list(jb["paired_all"]) == list(agg.PAIRED_METRICS)
    assert jb["paired_all"]["eval/loss_quad"]["ci95"] == [None, None]
    with open(agg.write_csv(groups, str(tmp_path / "s.csv"))) as f:
        ca, cb = list(csv.DictReader(f))
    key = "Δ eval/accuracy vs a"
    assert ca[key] == "" and float(cb[key]) == pytest.approx(-0.275)
    assert float(cb[f"{key} ci95 low"]) == pytest.approx(ci.low)
    assert cb[f"{key} n"] == "2" and float(cb[f"{key} p_value"]) == pytest.approx(p.p_value)
    with pytest.raises(ValueError, match="baseline 'c'"):
        agg.aggregate(rows, baseline="c")


def test_step_window_by_hand():
    class Pooled:
        def window_metrics(self):
            return {"mirror_corr_pooled": -0.5, "nan_one": float("nan")}

    w = StepWindow()
    w.add_micro({"loss": 9.0, "t_mean": 0.2, "is_weight_max": 3.0, "mirror_corr_pooled": float("nan")})
    w.add_micro({"loss": 9.0, "t_mean": 0.4, "is_weight_max": 5.0, "mirror_corr_pooled": 0.1})
    for g in (1.0, 2.0, 4.0):
        w.add_step(g)
    w.add_step(float("nan"))
    out = w.flush(Pooled())
    assert out == pytest.approx({"diag/t_mean": 0.3, "diag/is_weight_max": 5.0, "diag/mirror_corr_pooled": -0.5,
                                 "diag/grad_norm_mean": 7 / 3,
                                 "diag/grad_norm_var": ((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2})
    assert w.flush() == {}


def test_tune_table_columns_name_the_swept_keys():
    space = comparison_space(_cfg("compare.seeds=[1, 2]"))
    assert parameter_columns(space, swept_keys(space)) == {
        "grid/train.train_mode": "train_mode", "grid/train.PPOTS": "PPOTS", "grid/train.p_model": "p_model",
        "grid/train.seed": "seed"}


def test_the_papers_gpu_preset_composes():
    """experiments/compare_objectives.py --preset gsm8k-llada-8b: the paper's evaluation settings, 4 x 3 trials of
    batch 1 per GPU at equal batch (MIRROR is not halved), each a Ray Train job."""
    from pathlib import Path

    configs = Path(__file__).resolve().parents[3] / "experiments" / "configs"
    cfg = load_config([str(configs / f) for f in ("base.yaml", "llada_8b.yaml", "gsm8k.yaml",
                                                  "compare_gsm8k_llada8b.yaml")])
    s = cfg.sampler
    assert (s.name, s.gen_length, s.steps, s.block_length, s.temperature, s.threshold) == ("llada", 128, 128, 32, 0.0, None)
    assert cfg.train.model == "GSAI-ML/LLaDA-8B-Instruct" and cfg.train.batch_size_per_gpu == 1
    assert cfg.compare.runner == "ray_train" and cfg.compare.eval_limit == 1319 and cfg.deepspeed.enabled
    space = comparison_space(cfg)
    assert len(space.trials) == 12
    assert {cell_overrides(cfg, t).get("train.batch_size_per_gpu") for t in space.trials} == {None}

"""lm-eval (0.4.x) runs local tasks through the `mdm` model, offline, and agrees with our own scoring.

Run: pytest tests/platform/infer/test_lm_eval.py        (needs the `lm_eval` extra: pip install -e ".[lm_eval]")

Three task YAMLs over local JSONL files made from the `arith_mc4` problems (tiny_mc_model.py), with the prompt
rendered as the task renders it: a `multiple_choice` task (acc, acc_norm), a `generate_until` task (exact_match
on the last number) and a `loglikelihood_rolling` task (word perplexity). The model is the tiny LLaDA trained in
this session. Independent side: our harness on the same items -- the task's choices scored by the engine's
likelihood hook and picked by `Task.score_choices`; the platform's `generate`, its texts scored by the YAML's
rule (the last `-?[0-9]+`, string-equal to the task's gold answer; the task's own scorer compares numbers, so
it differs on texts such as "-0" or "05"); the engine's rolling hook. Also the command line
(`mdm lm-eval --model mdm ...`) on the multiple-choice task.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="the lm_eval extra is not installed")

from mdm.platform.config import load_config  # noqa: E402
from mdm.platform.infer.generation.generate import generate  # noqa: E402
from mdm.platform.registry import get_registry  # noqa: E402
from mdm.platform.tokenizer import load_tokenizer  # noqa: E402
from tiny_mc_model import register_task  # noqa: E402

pytestmark = pytest.mark.slow
MC_NUM = 16
SAMPLER = ["sampler.gen_length=20", "sampler.block_length=20", "sampler.steps=20"]
N_GEN = 16  # generation is the slow request type: a subset
N_PPL = 6
ROLLING = ["likelihood.window=16", "likelihood.context=4"]  # texts of ~30 tokens: 2-3 windows each


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory, trained_mc) -> dict:
    """JSONL files and lm-eval task YAMLs for the held-out arith_mc4 problems, plus our own view of them."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    task = register_task()()
    tok = load_tokenizer(trained_mc["dir"])
    exs = list(task.examples("test"))
    mc_rows = [{"context": task.prompt_text(tok, e.prompt), "choices": list(task.choices(e).texts),
                "gold": task.choices(e).gold} for e in exs]
    gen_rows = [{"context": task.prompt_text(tok, e.prompt), "answer": task.gold(e.gold_raw)} for e in exs[:N_GEN]]
    ppl_rows = [{"text": f"{e.prompt}\n{e.response}"} for e in exs[:N_PPL]]
    for name, rows in (("mc", mc_rows), ("gen", gen_rows), ("ppl", ppl_rows)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "mdm_arith_mc.yaml").write_text(f"""task: mdm_arith_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / 'mc.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: gold
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    (root / "mdm_arith_gen.yaml").write_text(f"""task: mdm_arith_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / 'gen.jsonl'}
test_split: test
output_type: generate_until
doc_to_text: context
doc_to_target: answer
target_delimiter: ""
generation_kwargs:
  until: ["\\n\\n"]
  do_sample: false
filter_list:
  - name: last_number
    filter:
      - function: regex
        regex_pattern: "(-?[0-9]+)"
        group_select: -1
      - function: take_first
metric_list:
  - metric: exact_match
""")
    (root / "mdm_arith_ppl.yaml").write_text(f"""task: mdm_arith_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {root / 'ppl.jsonl'}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: text
metric_list:
  - metric: word_perplexity
""")
    return {"root": str(root), "task": task, "tok": tok, "examples": exs, "ppl_texts": [r["text"] for r in ppl_rows]}


def last_number(text: str) -> str:
    """The mdm_arith_gen YAML's filter: the last match of `-?[0-9]+` (regex, group_select -1), else lm-eval's
    fallback "[invalid]"."""
    found = re.findall(r"-?[0-9]+", text)
    return found[-1] if found else "[invalid]"


@pytest.fixture(scope="module")
def ours(trained_mc: dict, local_tasks: dict) -> dict:
    """Our harness on the same items: likelihood argmax (acc, acc_norm) and generation scored by the YAML's rule."""
    cfg = load_config([], [f"likelihood.mc_num={MC_NUM}", *SAMPLER, *ROLLING, "sampler.batch_size=16"])
    spec = get_registry("engines").get("llada_plus")
    task, tok, exs = local_tasks["task"], local_tasks["tok"], local_tasks["examples"]
    model = spec.build_model(cfg.model, trained_mc["dir"], tok).eval()
    prompts = task.encode_prompts(tok, [e.prompt for e in exs])
    items = [(p, tok(t, add_special_tokens=False)["input_ids"]) for e, p in zip(exs, prompts)
             for t in task.choices(e).texts]
    scores = spec.loglikelihood(model, items, cfg.likelihood, torch.Generator().manual_seed(0))
    per = [task.score_choices(task.choices(e), [s.value for s in scores[4 * i:4 * i + 4]]) for i, e in enumerate(exs)]
    gen = generate(model, spec, cfg.sampler, prompts[:N_GEN], tokenizer=tok, generator=torch.Generator().manual_seed(0))
    texts = [tok(t, add_special_tokens=False)["input_ids"] for t in local_tasks["ppl_texts"]]
    first = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    rolling = spec.loglikelihood_rolling(model, texts, cfg.likelihood, torch.Generator().manual_seed(0), prefix=[first])
    return {"rolling": [s.value for s in rolling], "rolling_chunks": [s.n_samples for s in rolling],"acc": sum(r["acc"] for r in per) / len(per), "acc_norm": sum(r["acc_norm"] for r in per) / len(per),
            "per": per, "values": [s.value for s in scores], "texts": gen.texts,
            "gen_exact": sum(last_number(t) == task.gold(e.gold_raw) for t, e in zip(gen.texts, exs)) / N_GEN}


def test_lm_eval_matches_our_scoring(trained_mc, local_tasks, ours, monkeypatch) -> None:
    from lm_eval.tasks import TaskManager

    import mdm.platform.commands.lm_eval  # noqa: F401  (registers the `mdm` model)

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ",".join([f"pretrained={trained_mc['dir']}", f"likelihood.mc_num={MC_NUM}", *SAMPLER, *ROLLING])
    manager = TaskManager(include_path=local_tasks["root"], include_defaults=False)  # not lm-eval's own tasks
    res = lm_eval.simple_evaluate(model="mdm", model_args=args, tasks=["mdm_arith_mc", "mdm_arith_gen", "mdm_arith_ppl"],
                                  task_manager=manager, device="cpu", batch_size=16, log_samples=True)
    mc = res["results"]["mdm_arith_mc"]
    assert mc["acc,none"] == pytest.approx(ours["acc"]) and mc["acc_norm,none"] == pytest.approx(ours["acc_norm"])
    assert ours["acc"] >= 0.4  # chance 0.25
    samples = sorted(res["samples"]["mdm_arith_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == 60
    got = [float(r[0][0]) for s in samples for r in s["resps"]]  # per choice: [(loglik, is_greedy)]
    assert got == pytest.approx(ours["values"], rel=1e-4, abs=1e-4)
    gen = sorted(res["samples"]["mdm_arith_gen"], key=lambda s: s["doc_id"])
    assert [s["resps"][0][0] for s in gen] == ours["texts"]  # the same texts as the platform's generate
    assert res["results"]["mdm_arith_gen"]["exact_match,last_number"] == pytest.approx(ours["gen_exact"])
    ppl = sorted(res["samples"]["mdm_arith_ppl"], key=lambda s: s["doc_id"])
    assert [float(s["resps"][0][0]) for s in ppl] == pytest.approx(ours["rolling"], rel=1e-4)
    assert min(ours["rolling_chunks"]) >= 2  # the texts were cut into windows
    words = sum(len(t.split()) for t in local_tasks["ppl_texts"])
    assert res["results"]["mdm_arith_ppl"]["word_perplexity,none"] == pytest.approx(
        math.exp(-sum(ours["rolling"]) / words), rel=1e-4)


def test_lm_eval_command_line(trained_mc, local_tasks, ours, tmp_path, monkeypatch) -> None:
    from mdm.platform.cli import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # `mdm lm-eval ...` in this process (a subprocess would pay the imports again): lm-eval's own CLI parses it;
    # it indexes all of lm-eval's bundled task YAMLs (~10 s), which simple_evaluate above skips
    rc = main(["lm-eval", "--model", "mdm",
               "--model_args", f"pretrained={trained_mc['dir']},likelihood.mc_num={MC_NUM}", "--tasks", "mdm_arith_mc", "--include_path", local_tasks["root"], "--device", "cpu", "--limit", "8",
               "--output_path", str(tmp_path / "out")])
    assert rc == 0
    found = list((tmp_path / "out").rglob("results_*.json"))
    assert len(found) == 1
    acc = json.loads(found[0].read_text())["results"]["mdm_arith_mc"]["acc,none"]
    assert acc == pytest.approx(sum(r["acc"] for r in ours["per"][:8]) / 8)


def test_model_args_errors(trained_mc) -> None:
    from mdm.platform.commands.lm_eval import MDMLM
    from mdm.platform.fields import ConfigError

    with pytest.raises(ConfigError, match="did you mean likelihood.mc_num"):
        MDMLM.create_from_arg_string(f"pretrained={trained_mc['dir']},likelihood.mc_nm=4", {"device": "cpu"})
    with pytest.raises(ValueError, match="unknown argument.*mc_num"):
        MDMLM.create_from_arg_string(f"pretrained={trained_mc['dir']},mc_num=4", {"device": "cpu"})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="pass --device cpu"):
            MDMLM.create_from_arg_string(f"pretrained={trained_mc['dir']}", {"device": "cuda:0"})


def test_adapter_on_the_recorded_base(trained_mc, tmp_path) -> None:
    from transformers import AutoModel

    from lora_export import make_lora_export
    from mdm.platform.commands.lm_eval import MDMLM

    out = make_lora_export(trained_mc["dir"], tmp_path / "final")
    lm = MDMLM.create_from_arg_string(f"adapter={out}", {"device": "cpu"})  # no pretrained: the adapter's base
    merged = AutoModel.from_pretrained(str(out / "merged")).state_dict()
    got = lm.model.state_dict()
    assert set(got) == set(merged)
    for k, v in merged.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6)

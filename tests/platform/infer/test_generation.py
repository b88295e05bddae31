"""The one generation path (`mdm.platform.infer.generation.generate`) and the `mdm generate` CLI, on the
reference model saved with a local tokenizer.

Run: pytest tests/platform/infer/test_generation.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mdm.engines.llada_plus.config import SamplerConfig
from mdm.engines.llada_plus.model import LLaDAModelLM
from mdm.engines.llada_plus.sampling.sampler import sample_llada
from mdm.platform.cli import main as mdm_main
from mdm.platform.infer.generation import generate as generation
from mdm.platform.commands.generate import main

FIXTURE = Path(__file__).resolve().parents[3] / ".." / "shared" / "fixtures" / "llada_reference"
CFG = dict(gen_length=16, block_length=8, steps=8)


def generate(model, tokenizer_or_ids, cfg, prompts=None, **kw):
    """ids in -> ids out; a tokenizer and texts in -> texts out (the test's shorthand)."""
    if prompts is None:
        return generation.generate(model, "llada_plus", cfg, tokenizer_or_ids, **kw).ids
    prompts = [prompts] if isinstance(prompts, str) else prompts
    return generation.generate(model, "llada_plus", cfg, prompts, tokenizer=tokenizer_or_ids, **kw).texts


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LLaDAModelLM, PreTrainedTokenizerFast]:
    """The oracle model plus a word-level tokenizer over its 256 ids (t0..t253, <eos> 254, <mask> 255)."""
    vocab = {f"t{i}": i for i in range(254)} | {"<eos>": 254, "<mask>": 255}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>",
                                        mask_token="<mask>")
    out = tmp_path_factory.mktemp("model")
    model = LLaDAModelLM.from_pretrained(str(FIXTURE)).eval()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out, model, tokenizer


def test_generate_ids_and_text(saved: tuple) -> None:
    _, model, tokenizer = saved
    prompts = [[112, 92, 159, 119], [5, 6], [7, 8, 9, 10, 11, 12]]
    one_by_one = generate(model, prompts, SamplerConfig(batch_size=1, **CFG))
    assert one_by_one == generate(model, prompts, SamplerConfig(batch_size=2, **CFG))
    direct = sample_llada(model, [prompts[1]], SamplerConfig(**CFG), mask_id=255, eos_id=254).tokens[0]
    assert len(direct) == 16 and one_by_one[1] == generation.cut_at_end(direct, [254])
    texts = generate(model, tokenizer, SamplerConfig(**CFG), ["t112 t92 t159 t119", "t5 t6"])
    assert texts == [" ".join(f"t{i}" for i in ids) for ids in one_by_one[:2]]


def test_cli_prints_the_generated_texts(saved: tuple, capsys: pytest.CaptureFixture) -> None:
    path, model, tokenizer = saved
    args = ["--model", str(path), "--prompt", "t5 t6", "--prompt", "t112 t92", "--json"]
    sets = [f"--set=sampler.{k}={v}" for k, v in CFG.items()] + ["--set=sampler.name=fast",
                                                                  "--set=sampler.threshold=0.5"]
    assert mdm_main(["generate", *args, *sets]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = generate(model, tokenizer, SamplerConfig(name="fast", threshold=0.5, **CFG), ["t5 t6", "t112 t92"])
    assert [r["text"] for r in lines] == want and [r["prompt"] for r in lines] == ["t5 t6", "t112 t92"]
    assert main(["--model", str(path / "missing"), "--prompt", "x"]) == 2


def test_generate_applies_the_chat_template(saved: tuple) -> None:
    _, model, tokenizer = saved
    templated = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<eos>",
                                        mask_token="<mask>")
    templated.chat_template = ("{% for m in messages %}t1 {{ m['content'] }} t2{% endfor %}"
                               "{% if add_generation_prompt %} t3{% endif %}")
    cfg = SamplerConfig(**CFG)
    want = generate(model, [[1, 5, 6, 2, 3], [5, 6]], cfg)
    got = [generate(model, templated, cfg, "t5 t6")[0],
           generate(model, templated, cfg, "t5 t6", chat_template=False)[0]]
    assert got == [" ".join(f"t{i}" for i in ids) for ids in want]


def test_generate_lays_out_plain_prompts_as_training_does(saved: tuple) -> None:
    """Without a chat template training sees `prompt + "\\n"` (mdm.platform.prompts); generate must too."""
    from mdm.platform.prompts import encode_prompt

    _, model, _ = saved
    vocab = {f"t{i}": i for i in range(253)} | {"\n": 253, "<eos>": 254, "<mask>": 255}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(" ", "removed"),
                                                 pre_tokenizers.Split("\n", "isolated")])
    plain = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", mask_token="<mask>")
    assert encode_prompt(plain, "t5 t6") == [5, 6, 253]
    cfg = SamplerConfig(**CFG)
    want = generate(model, [[5, 6, 253], [5, 6]], cfg)
    got = [generate(model, plain, cfg, "t5 t6")[0], generate(model, plain, cfg, "t5 t6", chat_template=False)[0]]
    assert want[0] != want[1]  # the newline changes what this model generates, so the check can fail
    assert got == [" ".join(f"t{i}" for i in ids) for ids in want]

"""The engine's likelihood hooks as the platform reaches them (EngineSpec), checked on the reference fixture model
against the enumerating oracle (likelihood/exact.exact_bound) and a direct forward.

Run: pytest tests/engines/llada_plus/likelihood/test_likelihood_hooks.py

Choosing among constructed choices by the estimated bound picks what the exact bound picks whenever the exact
gap between the best two choices is larger than 4 standard errors of the estimates' difference.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from mdm.engines.llada_plus.config import LikelihoodConfig
from mdm.engines.llada_plus.likelihood.exact import exact_bound
from mdm.engines.llada_plus.likelihood.rolling import loglikelihood_rolling
from mdm.engines.llada_plus.model import LLaDAModelLM
from mdm.platform.registry import get_registry, load_builtins
from mdm.tasks.choices import Choices, pick
from mdm.tasks.base import Task

MASK = 255


@pytest.fixture(scope="module")
def model(shared_dir: Path) -> LLaDAModelLM:
    return LLaDAModelLM.from_pretrained(str(shared_dir / "fixtures" / "llada_reference")).eval()


@pytest.fixture(scope="module")
def spec():
    load_builtins()
    return get_registry("engines").get("llada_plus")


def greedy_answer(model: LLaDAModelLM, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        return model(torch.tensor([prompt + [MASK] * n])).logits[0, len(prompt):].argmax(-1).tolist()


def constructed_questions(model: LLaDAModelLM, n_questions: int = 4, seed: int = 0):
    """(prompt, [4 answers of 3 tokens]): the model's greedy answer, two one-token edits of it, a random one."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_questions):
        prompt = torch.randint(0, 254, (5,), generator=g).tolist()
        best = greedy_answer(model, prompt, 3)
        edits = [best[:1] + [(best[1] + 7) % 254] + best[2:], best[:2] + [(best[2] + 31) % 254]]
        rand = torch.randint(0, 254, (3,), generator=g).tolist()
        answers = [best, *edits, rand]
        perm = torch.randperm(4, generator=g).tolist()
        out.append((prompt, [answers[i] for i in perm]))
    return out


def test_spec_has_the_hooks_and_section(spec) -> None:
    assert spec.likelihood_config is LikelihoodConfig
    spec.require_likelihood("llada_plus")
    no_hooks = dataclasses.replace(spec, loglikelihood=None)
    with pytest.raises(ValueError, match="no likelihood hooks"):
        no_hooks.require_likelihood("other")
    # the section configures evaluation, not training: it leaves the derived run name alone (the same command
    # still resumes the same run)
    from mdm.platform.config import load_config
    from mdm.platform.runs import derive_run_name

    base = load_config([], ["train.task=gsm8k"])
    assert base.likelihood == LikelihoodConfig()
    assert derive_run_name(load_config([], ["train.task=gsm8k", "likelihood.mc_num=7"])) == derive_run_name(base)


def test_argmax_of_the_bound_against_exact_enumeration(model, spec) -> None:
    cfg = LikelihoodConfig(mc_num=64, masks="random")
    for prompt, answers in constructed_questions(model):
        exact = [exact_bound(model, prompt, a, mask_id=MASK) for a in answers]
        items = [(prompt, a) for a in answers]
        # masks="enumerate" through the hook is the exact bound itself (every mask), stderr 0
        enum = spec.loglikelihood(model, items, dataclasses.replace(cfg, masks="enumerate"), None)
        assert [s.value for s in enum] == pytest.approx(exact, rel=1e-5, abs=1e-5)
        assert all(s.stderr == 0.0 for s in enum)
        texts = tuple(f"choice{i}" for i in range(4))  # equal lengths: acc_norm picks what acc picks
        best_exact = max(range(4), key=lambda i: exact[i])
        assert pick([s.value for s in enum], texts)[0] == best_exact
        # the Monte Carlo estimate picks the exact argmax when the exact gap is clear of its noise
        est = spec.loglikelihood(model, items, cfg, torch.Generator().manual_seed(1))
        order = sorted(range(4), key=lambda i: -exact[i])
        gap = exact[order[0]] - exact[order[1]]
        noise = math.hypot(est[order[0]].stderr, est[order[1]].stderr)
        assert all(abs(s.value - e) < 4 * s.stderr + 1e-9 for s, e in zip(est, exact))
        if gap > 4 * noise:
            res = Task().score_choices(Choices(texts, best_exact), [s.value for s in est])
            assert res["acc"] == 1.0 and res["acc_norm"] == 1.0


def test_answer_window_pads_with_eos(model, spec) -> None:
    from mdm.engines.llada_plus.likelihood.hooks import pad_answers

    prompt, short, long = [5, 9, 17], [40, 41], [40, 41, 42, 43, 44]
    cfg = LikelihoodConfig(mc_num=64, masks="enumerate", answer_window=4)
    got = spec.loglikelihood(model, [(prompt, short), (prompt, long)], cfg, None)
    eos = model.config.eos_token_id
    assert got[0].value == pytest.approx(exact_bound(model, prompt, short + [eos, eos], mask_id=MASK), rel=1e-5)
    assert got[1].value == pytest.approx(exact_bound(model, prompt, long, mask_id=MASK), rel=1e-5)  # not cut
    with pytest.raises(ValueError, match="eos_token_id is unset"):
        pad_answers([(prompt, short)], 4, None)


def test_greedy_flag_is_one_step_argmax(model, spec) -> None:
    prompt = [3, 14, 15, 92, 65]
    best = greedy_answer(model, prompt, 4)
    other = best[:3] + [(best[3] + 1) % 254]
    for cfg_scale in (0.0, 1.5):
        cfg = LikelihoodConfig(mc_num=8, cfg_scale=cfg_scale)
        scores = spec.loglikelihood(model, [(prompt, best), (prompt, other)], cfg, None, greedy=True)
        with torch.no_grad():
            c = model(torch.tensor([prompt + [MASK] * 4])).logits[0, 5:]
            u = model(torch.tensor([[MASK] * 5 + [MASK] * 4])).logits[0, 5:]
        guided = (u + (cfg_scale + 1) * (c - u)).argmax(-1).tolist() if cfg_scale else best
        assert scores[0].greedy == (guided == best)
        assert scores[1].greedy is False
    assert spec.loglikelihood(model, [(prompt, best)], LikelihoodConfig(mc_num=8), None)[0].greedy is None


def test_rolling_hook(model, spec) -> None:
    text = torch.randint(0, 254, (40,), generator=torch.Generator().manual_seed(3)).tolist()
    cfg = LikelihoodConfig(mc_num=16, window=16, context=4)
    got = spec.loglikelihood_rolling(model, [text], cfg, torch.Generator().manual_seed(0), prefix=[254])
    want = loglikelihood_rolling(model, [text], mask_id=MASK, window=16, context=4, mc_num=16, prefix=[254],
                                 generator=torch.Generator().manual_seed(0))
    assert got[0].value == pytest.approx(want[0].value) and got[0].stderr == pytest.approx(want[0].stderr)
    assert got[0].n_samples == want[0].n_chunks == 4  # 15 + 12 + 12 + 1 tokens (prefix 1, context 4, window 16)

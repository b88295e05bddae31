"""The likelihood-bound estimator against the exact bound, enumerated over every mask on the reference model.

Run: pytest tests/engines/llada_plus/likelihood/test_likelihood.py

Oracle: ../shared/fixtures/llada_reference (the tiny upstream-LLaDA model), loaded as in test_model.py. The
exact bound enumerates all 2^L - 1 masks of an answer (L <= 8) with plain, unpadded forwards
(likelihood/exact.py), itself checked by hand for L = 2. Answers are either random tokens or the model's own
greedy predictions (plausible answers, whose per-k terms g(k) vary more with k).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mdm.engines.llada_plus.likelihood.estimate import choose_design, estimate_loglik, random_plan
from mdm.engines.llada_plus.likelihood.batch import masked_ce_sums, pack_rows
from mdm.engines.llada_plus.likelihood.exact import exact_bound, exact_strata
from mdm.engines.llada_plus.likelihood.rolling import loglikelihood_rolling
from mdm.engines.llada_plus.model import LLaDAModelLM

MASK = 255
SHAPES = [(0, 4), (3, 3), (7, 5), (4, 6), (12, 8)]  # (prompt length, answer length)


@pytest.fixture(scope="module")
def fixture_dir(shared_dir: Path) -> Path:
    return shared_dir / "fixtures" / "llada_reference"


@pytest.fixture(scope="module")
def model(fixture_dir: Path) -> LLaDAModelLM:
    return LLaDAModelLM.from_pretrained(str(fixture_dir)).eval()


@pytest.fixture(scope="module")
def model64(fixture_dir: Path) -> LLaDAModelLM:
    # float64 weights, so that packed and unpacked forwards agree to ~1e-15 (the norms and RoPE still round
    # through float32 on identical inputs, which does not depend on the batch)
    return LLaDAModelLM.from_pretrained(str(fixture_dir)).eval().double()


def make_items(model: LLaDAModelLM, shapes=SHAPES, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Alternately a random answer and the model's greedy answer (all answer positions masked) to a random prompt."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for j, (p, n) in enumerate(shapes):
        prompt = torch.randint(0, 254, (p,), generator=g).tolist()
        answer = torch.randint(0, 254, (n,), generator=g).tolist()
        if j % 2:
            with torch.no_grad():
                answer = model(torch.tensor([prompt + [MASK] * n])).logits[0, p:].argmax(-1).tolist()
        items.append((prompt, answer))
    return items


def test_exact_bound_by_hand_for_two_tokens(model64: LLaDAModelLM) -> None:
    prompt, (a, b) = [5, 9, 17], [40, 41]
    P = len(prompt)

    def ce_at(x: list[int], pos: int, tok: int) -> float:
        with torch.no_grad():
            return -float(torch.log_softmax(model64(torch.tensor([x])).logits[0, pos], -1)[tok])

    g1 = 2 * 0.5 * (ce_at(prompt + [MASK, b], P, a) + ce_at(prompt + [a, MASK], P + 1, b))
    g2 = 1 * (ce_at(prompt + [MASK, MASK], P, a) + ce_at(prompt + [MASK, MASK], P + 1, b))
    assert exact_bound(model64, prompt, [a, b], mask_id=MASK) == pytest.approx(-(g1 + g2) / 2, rel=1e-12)
    # with CFG: the unconditional input has the prompt masked too
    s = 1.5

    def cfg_ce(x: list[int], pos: int, tok: int) -> float:
        with torch.no_grad():
            c = model64(torch.tensor([x])).logits[0, pos]
            u = model64(torch.tensor([[MASK] * P + x[P:]])).logits[0, pos]
            return -float(torch.log_softmax(u + (s + 1) * (c - u), -1)[tok])

    h1 = cfg_ce(prompt + [MASK, b], P, a) + cfg_ce(prompt + [a, MASK], P + 1, b)
    h2 = cfg_ce(prompt + [MASK, MASK], P, a) + cfg_ce(prompt + [MASK, MASK], P + 1, b)
    assert exact_bound(model64, prompt, [a, b], mask_id=MASK, cfg_scale=s) == pytest.approx(-(h1 + h2) / 2, rel=1e-12)


@pytest.mark.parametrize("cfg_scale", [0.0, 0.5])
def test_enumerated_estimator_equals_exact_bound(model64: LLaDAModelLM, cfg_scale: float) -> None:
    items = make_items(model64)
    # all items packed together (different lengths: padded rows), small budget: several forwards
    ests = estimate_loglik(model64, items, mask_id=MASK, masks="enumerate", cfg_scale=cfg_scale,
                           max_tokens_per_forward=600)
    for (p, a), e in zip(items, ests):
        assert (e.design, e.n_samples, e.stderr) == ("enumerate", 2 ** len(a) - 1, 0.0)
        assert e.value == pytest.approx(exact_bound(model64, p, a, mask_id=MASK, cfg_scale=cfg_scale), rel=1e-9)


@pytest.mark.parametrize("cfg_scale", [0.0, 0.5])
def test_estimator_within_4_se_of_exact_bound(model: LLaDAModelLM, cfg_scale: float) -> None:
    items = make_items(model, seed=1) if cfg_scale == 0 else make_items(model, [(5, 4), (6, 7)], seed=2)
    mc = 3000  # not a multiple of L: q complete rounds plus r strata drawn at random
    ests = estimate_loglik(model, items, mask_id=MASK, mc_num=mc, masks="random", cfg_scale=cfg_scale,
                           generator=torch.Generator().manual_seed(7))
    for (p, a), e in zip(items, ests):
        exact = exact_bound(model, p, a, mask_id=MASK, cfg_scale=cfg_scale)
        assert e.design == "rounds" and e.n_samples == mc and e.answer_len == len(a)
        assert 0 < e.stderr < 0.02 * abs(exact)
        assert abs(e.value - exact) < 4 * e.stderr, (len(p), len(a), e.value, exact, e.stderr)


def test_stderr_calibrated(model: LLaDAModelLM) -> None:
    """Independent estimates of one item (repeated in one call: each copy draws its own masks); z = (est - exact)
    / se. At mc_num 120 (L = 5: 24 rounds) P(|z| < 2) ~ 0.95; over 300 estimates its binomial sd is 0.013, so
    we accept [0.91, 0.985]. The mean of z may sit slightly above 0 (the per-sample values are skewed, so a
    low estimate comes with a low se; 0.02-0.16 over 8 seeds) and we accept |mean| < 0.3 (5 sd of a mean of
    300), sd(z) in [0.9, 1.2] (1.0-1.09 over 8 seeds) and mean(se^2) / var(est) in [0.75, 1.3] (3 sd of a
    variance from 300 draws). The small designs (fewer than two samples per stratum: collapsed pairs; fewer
    samples than strata: subset) use conservative variance estimates: mean(se^2) / var(est) in [0.8, 3]
    (1.02-1.37 over 8 seeds of 400)."""
    prompt, answer = make_items(model, [(4, 3), (4, 5)], seed=3)[1]
    exact = exact_bound(model, prompt, answer, mask_id=MASK)
    for mc, design, reps in ((120, "rounds", 300), (5, "rounds", 400), (3, "subset", 400)):
        ests = estimate_loglik(model, [(prompt, answer)] * reps, mask_id=MASK, mc_num=mc, masks="random",
                               generator=torch.Generator().manual_seed(11))
        assert {e.design for e in ests} == {design}
        v = torch.tensor([e.value for e in ests], dtype=torch.float64)
        se = torch.tensor([e.stderr for e in ests], dtype=torch.float64)
        ratio = float(se.pow(2).mean() / v.var())
        if mc == 120:
            z = (v - exact) / se
            assert 0.91 <= float((z.abs() < 2).double().mean()) <= 0.985
            assert abs(float(z.mean())) < 0.3 and 0.9 < float(z.std()) < 1.2 and 0.75 < ratio < 1.3
        else:
            assert 0.8 < ratio < 3.0, (mc, ratio)


def upstream_weights(L: int, batch: int = 16) -> torch.Tensor:
    """Upstream LLaDA's mask counts (our reading of `_forward_process` in its eval_llada.py), as the relative
    weight each k in 1..L gets, exactly, averaged over its random start. Per batch: a start s uniform in 1..L;
    row i gets the count s + i * L / batch rounded (torch.round: half to even), wrapped back into 1..L
    (x -> (x - 1) mod L + 1); its value is weighted by L / count. Uniform weights would all be 1."""
    counts = torch.zeros(L, dtype=torch.float64)
    for s in range(1, L + 1):
        x = torch.round(s + torch.arange(batch, dtype=torch.float64) * L / batch).long()
        counts += torch.bincount((x - 1) % L, minlength=L)
    return counts / counts.mean()


def test_upstream_linspace_stratification_is_biased(model64: LLaDAModelLM) -> None:
    assert torch.equal(upstream_weights(16), torch.ones(16)) and torch.equal(upstream_weights(1), torch.ones(1))
    for L in range(2, 16):  # every L short of 16 is off, L = 4 and 8 too (their ties all round to even counts)
        assert float((upstream_weights(L) - 1).abs().max()) >= 1 / 16
    biases = {}
    for prompt, answer in make_items(model64, [(4, L) for L in range(3, 9)], seed=5):
        g = exact_strata(model64, prompt, answer, mask_id=MASK)
        bound, upstream = -float(g.mean()), -float((upstream_weights(len(answer)) * g).mean())
        biases[len(answer)] = abs(upstream - bound) / abs(bound)
    # 0.14% to 8.5% here, the most on the greedy (plausible) answers; ours is unbiased (tests above)
    assert min(biases.values()) > 1e-3, biases


def test_packed_rows_equal_rows_alone(model: LLaDAModelLM) -> None:
    items = make_items(model)
    g = torch.Generator().manual_seed(4)
    masks = [random_plan(len(a), 6, g)[1] for _, a in items]
    for cfg_scale in (0.0, 2.0):
        packed = masked_ce_sums(model, items, masks, mask_id=MASK, cfg_scale=cfg_scale)
        alone = masked_ce_sums(model, items, masks, mask_id=MASK, cfg_scale=cfg_scale, batch_rows=1)
        for a, b in zip(packed, alone):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    # estimate_loglik: an item draws the same masks alone as in a batch, so it gets the same estimate
    batch = estimate_loglik(model, items, mask_id=MASK, mc_num=50, masks="random",
                            generator=torch.Generator().manual_seed(9))
    alone = estimate_loglik(model, items[2:3], mask_id=MASK, mc_num=50, masks="random",
                            generator=torch.Generator().manual_seed(9))
    assert batch[2].value == pytest.approx(alone[0].value, rel=1e-6)
    assert batch[2].stderr == pytest.approx(alone[0].stderr, rel=1e-4)


def test_max_tokens_per_forward_respected(model: LLaDAModelLM) -> None:
    items = make_items(model)
    shapes = []
    hook = model.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    try:
        for cfg_scale, budget, cap in ((0.0, 200, None), (1.0, 200, None), (0.0, 10_000, 7), (0.0, 5, None)):
            shapes.clear()
            estimate_loglik(model, items, mask_id=MASK, mc_num=20, masks="random", cfg_scale=cfg_scale,
                            max_tokens_per_forward=budget, batch_rows=cap)
            copies = 2 if cfg_scale > 0 else 1
            lengths = [len(p) + len(a) for p, a in items for _ in range(20)]
            plan = pack_rows(lengths, max_tokens_per_forward=budget, copies=copies, batch_rows=cap)
            assert len(shapes) == len(plan) and sum(s[0] for s in shapes) == copies * len(lengths)
            for rows, width in shapes:
                assert rows * width <= budget or rows == copies  # an over-long row runs alone
                assert cap is None or rows <= cap
            if budget == 5:
                assert all(rows == 1 for rows, _ in shapes)
    finally:
        hook.remove()


def test_designs_and_edge_cases(model: LLaDAModelLM) -> None:
    assert [choose_design(L, 128, "auto") for L in (0, 1, 7, 8)] == ["empty", "enumerate", "enumerate", "rounds"]
    assert choose_design(8, 5, "random") == "subset" and choose_design(3, 3, "random") == "rounds"
    g = torch.Generator().manual_seed(0)
    k, m = random_plan(6, 20, g)  # 3 rounds + 2 strata at random
    assert torch.equal(m.sum(1), k) and sorted(torch.bincount(k - 1, minlength=6).tolist()) == [3, 3, 3, 3, 4, 4]
    k, m = random_plan(9, 4, g)
    assert len(set(k.tolist())) == 4 and torch.equal(m.sum(1), k)
    prompt, answer = make_items(model, [(3, 1)])[0]
    one, empty = estimate_loglik(model, [(prompt, answer), (prompt, [])], mask_id=MASK, mc_num=1)
    assert one.value == pytest.approx(exact_bound(model, prompt, answer, mask_id=MASK), rel=1e-6)
    assert (one.n_samples, one.stderr, empty.value, empty.n_samples) == (1, 0.0, 0.0, 0)
    with pytest.raises(ValueError, match="mc_num"):
        estimate_loglik(model, [(prompt, answer)], mask_id=MASK, mc_num=0)


def test_rolling_equals_sum_of_chunk_bounds(model64: LLaDAModelLM) -> None:
    text = torch.randint(0, 254, (21,), generator=torch.Generator().manual_seed(6)).tolist()
    # window 8, context 3, prefix [254]: chunks worked out by hand
    chunks = [([254], text[0:7]), (text[4:7], text[7:12]), (text[9:12], text[12:17]), (text[14:17], text[17:21])]
    res = loglikelihood_rolling(model64, [text, text[:5]], mask_id=MASK, window=8, context=3, prefix=[254],
                                masks="enumerate")
    assert (res[0].n_tokens, res[0].n_chunks, res[0].stderr) == (21, 4, 0.0)
    by_hand = sum(exact_bound(model64, p, a, mask_id=MASK) for p, a in chunks)
    assert res[0].value == pytest.approx(by_hand, rel=1e-9)
    assert res[0].perplexity == pytest.approx(math.exp(-by_hand / 21), rel=1e-9)
    assert res[1].value == pytest.approx(exact_bound(model64, [254], text[:5], mask_id=MASK), rel=1e-9)
    # random masks: the same estimates as the chunks given directly, the variances summed
    roll = loglikelihood_rolling(model64, [text], mask_id=MASK, window=8, context=3, prefix=[254], mc_num=16,
                                 masks="random", generator=torch.Generator().manual_seed(8))[0]
    ests = estimate_loglik(model64, chunks, mask_id=MASK, mc_num=16, masks="random",
                           generator=torch.Generator().manual_seed(8))
    assert roll.value == pytest.approx(sum(e.value for e in ests), rel=1e-12)
    assert roll.stderr == pytest.approx(math.sqrt(sum(e.stderr ** 2 for e in ests)), rel=1e-12)

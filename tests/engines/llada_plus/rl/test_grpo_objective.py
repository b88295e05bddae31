"""The LLaDA+ GRPO objective (rl/objective.py) on the reference model: mu inner iterations share one rollout
batch, the old policy's estimates are those of the weights before the first update (same masks), and the
reference is the initial model.

    pytest tests/engines/llada_plus/rl/test_grpo_objective.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mdm.engines.llada_plus.model import LLaDAModelLM
from mdm.engines.llada_plus.rl.grpo import grpo_loss
from mdm.engines.llada_plus.rl.objective import build_rl_objective
from mdm.platform.rl.rl_config import RLConfig


@pytest.fixture()
def model(shared_dir: Path) -> LLaDAModelLM:
    return LLaDAModelLM.from_pretrained(str(shared_dir / "fixtures" / "llada_reference")).double()


def _batch(iteration: int) -> dict:
    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, 200, (4, 9), generator=g)
    return {"input_ids": seqs, "completion_mask": torch.tensor([[1, 1, 1, 1, 1, 0]] * 4, dtype=torch.float64),
            "advantages": torch.tensor([0.5, -0.5, 1.0, -1.0]), "prompt_len": 3, "iteration": iteration,
            "iterations": 2, "mask_seed": 11, "key": 7, "stats": {"rl/reward": 0.5}}


def test_two_inner_iterations_use_the_old_policy_of_the_first_and_the_initial_reference(model, shared_dir):
    cfg = RLConfig(num_iterations=2, beta=0.1, epsilon=0.2, logp_estimator="mirror")
    objective = build_rl_objective(cfg)
    objective.prepare(model, [], torch.device("cpu"))  # the frozen reference: a copy of the initial weights
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss0, m0 = objective.loss(model, _batch(0), torch.Generator())
    assert m0["rl/clip_ratio"] == 0.0 and m0["rl/kl"] == pytest.approx(0.0, abs=1e-12)  # ratio 1, policy = ref
    assert m0["rl/reward"] == 0.5 and list(objective.old) == [7]
    expected = -(_batch(0)["advantages"][:, None] * torch.ones(4, 6)).mul(_batch(0)["completion_mask"]).sum() / 20
    assert float(loss0.detach()) == pytest.approx(float(expected), rel=1e-9)  # ratio 1: -mean(A) over completion tokens
    loss0.backward()
    with torch.no_grad():  # one optimizer step's worth of change
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(0.5 * p.grad.sign() * 1e-2)
    old = objective.old[7][0]
    loss1, m1 = objective.loss(model, _batch(1), torch.Generator())
    assert objective.old == {}  # the batch's last iteration drops its cache
    # iteration 1 recomputed by hand with the masks of seed 11 + 1: the policy now; the weights before the
    # update, which are both the old policy (mu's first iteration) and the reference (the initial model)
    logps = objective.logps(model, _batch(1), 12)
    initial_model = LLaDAModelLM.from_pretrained(str(shared_dir / "fixtures" / "llada_reference")).double().eval()
    initial_model.load_state_dict(initial, strict=False)
    with torch.no_grad():
        before = objective.logps(initial_model, _batch(1), 12)
    assert torch.allclose(old, before, atol=1e-10)
    want, stats = grpo_loss(logps, before, before, _batch(1)["advantages"], _batch(1)["completion_mask"],
                            epsilon=0.2, beta=0.1)
    assert float(loss1.detach()) == pytest.approx(float(want.detach()), rel=1e-9)
    assert m1["rl/kl"] == pytest.approx(stats["kl"]) and m1["rl/kl"] > 0.0
    assert float(loss1.detach()) != pytest.approx(float(loss0.detach()))


def test_unknown_estimator_is_named():
    with pytest.raises(ValueError, match="rl.logp_estimator: unknown estimator 'exact'"):
        build_rl_objective(RLConfig(logp_estimator="exact"))


def test_a_left_padded_row_is_scored_as_it_was_sampled_alone(model):
    """Rows of a rollout batch with prompts of different lengths (rl.source.rollout_rows: left padding, the
    attention mask and position ids the samplers use) get the log-probabilities each row has alone."""
    from mdm.engines.llada_plus.rl.policy_logp import completion_logps
    from mdm.platform.rl.source import rollout_rows

    model.eval()
    prompts, completions = [[5, 6, 7, 8, 9], [10, 11]], [[20, 21, 22], [23]]
    rows = rollout_rows(prompts, completions, pad_id=0, end_id=3, gen_length=4)
    assert rows["prompt_len"] == 5 and rows["attention_mask"][1].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert rows["completion_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]  # the completion and its end token
    with torch.no_grad():
        both = completion_logps(model, rows["input_ids"], prompt_len=5, mask_id=255, p_mask_prompt=0.0,
                                attention_mask=rows["attention_mask"], position_ids=rows["position_ids"])
        for i, (p, c) in enumerate(zip(prompts, completions)):
            alone = rollout_rows([p], [c], pad_id=0, end_id=3, gen_length=4)
            assert "attention_mask" not in alone  # nothing to pad
            want = completion_logps(model, alone["input_ids"], prompt_len=len(p), mask_id=255, p_mask_prompt=0.0)
            assert torch.allclose(both[i], want[0], atol=1e-9), i
        unpadded = completion_logps(model, rows["input_ids"], prompt_len=5, mask_id=255, p_mask_prompt=0.0)
    assert not torch.allclose(unpadded[1], both[1], atol=1e-6)  # padding seen: another distribution

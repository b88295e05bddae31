"""The masked-diffusion loss: a hand-computed case, MIRROR = mean of the two masks, no-mask batches.

The model here is a tiny embedding + mean-context + linear module (any forward(input_ids,
attention_mask=...) returning `.logits [B, L, V]` is what loss.py relies on).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from mdm.engines.llada_plus.diffusion import IGNORE_INDEX, mask_prob, mirror_masks, normal_mask
from mdm.engines.llada_plus.loss import diffusion_loss, masked_ce_loss, model_logits


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 12, dim: int = 8, mask_id: int = 11) -> None:
        super().__init__()
        self.config = SimpleNamespace(mask_token_id=mask_id)
        self.emb, self.ctx, self.head = nn.Embedding(vocab, dim), nn.Linear(dim, dim), nn.Linear(dim, vocab)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        m = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        m = m.float()[..., None]
        ctx = (h * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)
        return SimpleNamespace(logits=self.head(torch.tanh(h + self.ctx(ctx))))


def _hand_ce(row: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in row)) - row[target]


def test_loss_matches_hand_computation():
    logits = torch.tensor([
        [[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [1.0, 3.0, 0.0], [0.0, 0.0, 4.0]],
        [[-1.0, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 2.0, 1.0], [1.0, 1.0, 1.0]],
    ])
    labels = torch.tensor([[IGNORE_INDEX, 1, 1, 2], [0, 0, IGNORE_INDEX, IGNORE_INDEX]])
    masked = torch.tensor([[False, True, False, True], [True, True, False, False]])
    p = torch.tensor([0.25, 0.8])
    w = torch.tensor([2.0, 0.5])
    # Row 0: eligible 3 tokens, masked positions 1 and 3. Row 1: eligible 2, masked positions 0 and 1.
    l0 = (_hand_ce([0.5, 0.5, 0.5], 1) + _hand_ce([0.0, 0.0, 4.0], 2)) / 0.25 / 3 * 2.0
    l1 = (_hand_ce([-1.0, 1.0, 0.0], 0) + _hand_ce([3.0, 0.0, 0.0], 0)) / 0.8 / 2 * 0.5
    loss, per_seq = masked_ce_loss(logits, labels, masked, p, w)
    assert per_seq.tolist() == pytest.approx([l0, l1], rel=1e-5)
    assert abs(loss.item() - (l0 + l1) / 2) < 1e-5
    loss_nw, _ = masked_ce_loss(logits, labels, masked, p)
    assert abs(loss_nw.item() - (l0 / 2.0 + l1 / 0.5) / 2) < 1e-5


def test_padding_does_not_change_a_sequence_loss():
    torch.manual_seed(0)
    model = TinyLM()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5, 6]])
    masked = torch.tensor([[False, False, True, False, True, True]])
    p = torch.tensor([0.5])
    ref, _ = masked_ce_loss(model_logits(model, ids.masked_fill(masked, 11), None), labels, masked, p)
    pad = 3
    ids_p = torch.cat([ids, torch.zeros((1, pad), dtype=torch.long)], 1)
    labels_p = torch.cat([labels, torch.full((1, pad), IGNORE_INDEX)], 1)
    masked_p = torch.cat([masked, torch.zeros((1, pad), dtype=torch.bool)], 1)
    attn = (torch.arange(6 + pad) < 6).long()[None]
    got, _ = masked_ce_loss(model_logits(model, ids_p.masked_fill(masked_p, 11), attn), labels_p, masked_p, p)
    assert torch.allclose(ref, got, atol=1e-6)


def test_mirror_loss_is_mean_of_the_two_masks_in_one_forward():
    torch.manual_seed(0)
    model = TinyLM()
    ids = torch.randint(0, 11, (3, 10))
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    t = torch.tensor([0.2, 0.5, 0.9])
    w = torch.tensor([1.0, 2.0, 0.5])
    loss, stats = diffusion_loss(model, batch, t, w, mask_id=11, mode="MIRROR",
                                 generator=torch.Generator().manual_seed(5))
    m1, m2 = mirror_masks(labels, mask_prob(t), torch.Generator().manual_seed(5))  # same draws
    parts = [masked_ce_loss(model_logits(model, ids.masked_fill(m, 11), None), labels, m, mask_prob(t), w)
             for m in (m1, m2)]
    assert torch.allclose(loss, (parts[0][0] + parts[1][0]) / 2, atol=1e-6)
    assert torch.allclose(stats["per_seq"], (parts[0][1] + parts[1][1]) / 2, atol=1e-6)
    assert int(stats["n_masked"]) == int(m1.sum() + m2.sum())
    # Normal mode draws the same uniforms for its single mask.
    loss_n, _ = diffusion_loss(model, batch, t, w, mask_id=11, mode="Normal",
                               generator=torch.Generator().manual_seed(5))
    m = normal_mask(labels, mask_prob(t), torch.Generator().manual_seed(5))
    assert torch.equal(m, m1)
    assert torch.allclose(loss_n, parts[0][0], atol=1e-6)


def test_no_masked_token_gives_zero_loss_with_gradients_on_all_params():
    torch.manual_seed(0)
    model = TinyLM()
    ids = torch.randint(0, 11, (2, 6))
    for labels in (torch.full_like(ids, IGNORE_INDEX), ids.clone()):  # nothing eligible / nothing drawn
        for mode in ("Normal", "MIRROR"):
            model.zero_grad(set_to_none=True)
            batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
            t = torch.zeros(2)  # p = eps = 1e-12: no token masked
            loss, stats = diffusion_loss(model, batch, t, None, mask_id=11, eps=1e-12, mode=mode,
                                         generator=torch.Generator().manual_seed(0))
            assert int(stats["n_masked"]) == 0
            assert torch.isfinite(loss) and loss.item() == 0.0
            loss.backward()
            for name, param in model.named_parameters():
                assert param.grad is not None, f"{name} got no gradient ({mode})"
                assert torch.all(param.grad == 0), name


def test_unknown_mode_is_an_error():
    model = TinyLM()
    ids = torch.zeros((1, 3), dtype=torch.long)
    with pytest.raises(ValueError, match="MIRROR"):
        diffusion_loss(model, {"input_ids": ids, "labels": ids}, torch.ones(1), None, mask_id=11, mode="mirror")


def test_no_masked_token_on_the_llada_model_gives_gradients_on_all_params():
    from mdm.engines.llada_plus.config import ModelConfig
    from mdm.engines.llada_plus.model_build import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(d_model=32, n_layers=2, n_heads=4, mlp_hidden_size=64, vocab_size=40,
                                    mask_token_id=39, eos_token_id=38, pad_token_id=37), "tiny")
    ids = torch.randint(0, 37, (2, 7))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    for mode in ("Normal", "MIRROR"):
        model.zero_grad(set_to_none=True)
        loss, stats = diffusion_loss(model, batch, torch.zeros(2), None, mask_id=39, eps=1e-12, mode=mode,
                                     generator=torch.Generator().manual_seed(0))
        assert int(stats["n_masked"]) == 0 and torch.isfinite(loss) and loss.item() == 0.0
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, f"no gradient for {missing} ({mode})"
        assert all(torch.all(p.grad == 0) for p in model.parameters())

"""The pairing fingerprints (mdm.platform.train.digests): equal for what is equal, different for a one-bit change.

The digests are what a comparison's children are checked by (same initial weights, same first batch within a
seed), so both directions matter: two models built from the same seed must agree, and any change must show.
"""

from __future__ import annotations

import hashlib

import torch

from mdm.platform.train.digests import batch_digest, weights_digest


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(11, 4), torch.nn.Linear(4, 3))


def test_weights_digest_same_seed_same_digest_any_change_differs():
    a, b = _model(1), _model(1)
    assert weights_digest(a) == weights_digest(b)
    assert weights_digest(a) != weights_digest(_model(2))
    with torch.no_grad():  # the smallest change: one ulp of one weight
        b[1].weight.view(-1)[0] = torch.nextafter(b[1].weight.view(-1)[0], torch.tensor(1.0))
    assert weights_digest(a) != weights_digest(b)


def test_weights_digest_is_sha256_of_the_state_dict():
    m = _model(3)
    h = hashlib.sha256()
    for name in sorted(m.state_dict()):
        t = m.state_dict()[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode() + t.numpy().tobytes())
    assert weights_digest(m) == h.hexdigest()[:16]


def test_batch_digest_ignores_padding_and_sees_order():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    attn = (ids != 0).long()
    cut = {"input_ids": ids[:, :3], "attention_mask": attn[:, :3]}
    padded = {"input_ids": torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1),
              "attention_mask": torch.cat([attn, torch.zeros(2, 3, dtype=torch.long)], 1)}
    assert batch_digest(cut) == batch_digest(padded) == batch_digest({"input_ids": ids, "attention_mask": attn})
    swapped = {"input_ids": ids.flip(0), "attention_mask": attn.flip(0)}
    assert batch_digest(swapped) != batch_digest(cut)
    assert batch_digest({"input_ids": ids}) != batch_digest(cut)  # without a mask the zeros are tokens

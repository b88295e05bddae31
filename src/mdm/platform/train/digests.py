"""Fingerprints that show two runs were paired: the same initial weights and the same first batch.

    weights_digest(model)            # "3f2a..." (16 hex): SHA-256 over parameter names, dtypes, shapes, values
    batch_digest(batch)              # the same over the first micro-batch's real (unpadded) token ids

A comparison (`mdm.platform.compare.compare`) trains every configuration of a seed from the same weights on
the same data order; each child run carries these as the tags `mdm.init_digest` and `mdm.data_digest`
(DIGEST_TAGS), so the pairing is checked from the store, not assumed. Both are computed on the CPU from
tensors the run already holds, once per run.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import torch

INIT_TAG = "mdm.init_digest"
DATA_TAG = "mdm.data_digest"


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of the model's state dict: names, dtypes, shapes and bytes, sorted by name."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def batch_digest(batch: Mapping[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of a micro-batch's token ids, row by row, padding (attention 0) left out,
    so a batch cut to its longest row and the same batch padded further give the same digest."""
    ids = torch.as_tensor(batch["input_ids"]).cpu()
    attn = batch.get("attention_mask")
    attn = torch.ones_like(ids) if attn is None else torch.as_tensor(attn).cpu()
    h = hashlib.sha256()
    for row, keep in zip(ids, attn):
        h.update(",".join(str(int(x)) for x in row[keep != 0]).encode() + b";")
    return h.hexdigest()[:16]

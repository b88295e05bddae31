"""The masked-diffusion forward process: which tokens are replaced by the mask token at time t.

    p = mask_prob(t, eps)                                   # [B], p = (1 - eps) t + eps
    masked = normal_mask(labels, p, generator)              # [B, L] bool, one mask per sequence
    m1, m2 = mirror_masks(labels, p, generator)             # antithetic pair from one uniform per token
    noisy = apply_mask(input_ids, masked, mask_id)          # [B, L]

Only *eligible* tokens (labels != -100, i.e. the response; prompt and padding carry -100) can be
masked; everything else is kept as is and never scored. Random draws come from the passed
`torch.Generator` (on its own device, then moved), so a run is reproducible and resumable.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def mask_prob(t: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Masking probability for times `t` [B] in [0, 1]: `(1 - eps) * t + eps` (never exactly 0)."""
    return (1.0 - eps) * t + eps


def eligible(labels: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: the tokens that may be masked and scored (labels != -100)."""
    return labels != IGNORE_INDEX


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    # Draw on the generator's device (a CPU generator cannot fill a CUDA tensor), then move.
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def sample_uniform_t(batch_size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """t ~ U(0, 1), shape [B], float32 on `device`."""
    return _uniform((batch_size,), generator, device)


def normal_mask(labels: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One independent mask per sequence: each eligible token of row b masked with probability p[b].

    labels [B, L] (-100 = not eligible), p [B] -> [B, L] bool.
    """
    u = _uniform(tuple(labels.shape), generator, labels.device)
    return (u < p[:, None]) & eligible(labels)


def mirror_masks(labels: torch.Tensor, p: torch.Tensor,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Antithetic masks from one shared uniform u per token: `u < p` and `u > 1 - p`.

    Each mask alone masks a token with probability p (so each loss is unbiased); at p = 0.5 the two are
    exact complements on the eligible tokens, and the indicators' per-token covariance is
    max(0, 2p - 1) - p^2 <= 0 for every p. labels [B, L], p [B] -> two [B, L] bool tensors.
    """
    u = _uniform(tuple(labels.shape), generator, labels.device)
    ok = eligible(labels)
    pc = p[:, None]
    return (u < pc) & ok, (u > 1.0 - pc) & ok


def apply_mask(input_ids: torch.Tensor, masked: torch.Tensor, mask_id: int) -> torch.Tensor:
    """input_ids [B, L] with the `masked` [B, L] positions replaced by `mask_id` (a new tensor)."""
    return torch.where(masked, torch.full_like(input_ids, mask_id), input_ids)

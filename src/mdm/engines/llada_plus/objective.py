"""The LLaDA+ training objective: t sampling (uniform or P-POTS), Normal/MIRROR masks, the weighted loss.

    objective = build_objective(cfg.train)
    objective.prepare(model, batches, device)             # P-POTS: measure w(t), fit p(t) (all ranks call it)
    for step, batch in ...:
        loss, metrics = objective.loss(model, batch, generator)     # scalar, graph-connected
        objective.maybe_reestimate(step, model, batches, device)    # every train.ppots_reestimate_steps
    objective.window_metrics()      # importance weights / MIRROR correlation pooled since the last call
    objective.eval_loss(model, batch, generator)          # t ~ U(0,1), Normal mask, no weight
    objective.save_plot("ppots.png"); state = objective.state_dict()

`batch` is the collate dict as tensors on the device: input_ids, labels (-100 on prompt and padding),
attention_mask. The mask id is `model.config.mask_token_id` (DeepSpeed/DDP `.module` unwrapped). All
random draws come from the passed generator, so training is reproducible and resumable; the fitted
p(t) is part of `state_dict()`. The loss normalisation is documented in loss.py; the diagnostics that
`loss` and `window_metrics` return (importance-weight mean/max/ESS/capped fraction with P-POTS, the
correlation of MIRROR's two halves) in diagnostics.py.
prepare() and maybe_reestimate() are collective under torch.distributed: call them on every rank.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import numpy as np
import torch

from mdm.engines.llada_plus.config import TrainConfig
from mdm.engines.llada_plus.density import PiecewiseLinearDensity
from mdm.engines.llada_plus.diagnostics import PooledWindow, pearson, weight_stats
from mdm.engines.llada_plus.loss import diffusion_loss
from mdm.engines.llada_plus.ppots_estimate import WStats, measure_w
from mdm.engines.llada_plus.time_sampling import TimeSampler, fit_density, uniform_grid


def mask_token_id(model: Any) -> int:
    """`model.config.mask_token_id`, looking through DeepSpeed/DDP wrappers (`.module`)."""
    inner = model
    # A DeepSpeed engine has a `config` of its own (the DeepSpeed one): unwrap until one has the id.
    while (mid := getattr(getattr(inner, "config", None), "mask_token_id", None)) is None \
            and hasattr(inner, "module"):
        inner = inner.module
    if mid is None or int(mid) < 0:
        raise ValueError(f"{type(inner).__name__}.config.mask_token_id is not set; the diffusion objective "
                         "needs it (set model.mask_token_id or use a tokenizer with a mask token)")
    return int(mid)


class LLaDAPlusObjective:
    """See the module docstring. Built from the `train` section only."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.sampler = TimeSampler(None, cfg.max_is_weight)
        self.stats: WStats | None = None
        self.fitted: PiecewiseLinearDensity | None = None
        self.rounds = 0
        self.window = PooledWindow()

    # -- P-POTS estimation -------------------------------------------------------------------------
    def prepare(self, model: Any, batches: Iterable[dict[str, torch.Tensor]], device: Any) -> dict[str, float]:
        """P-POTS (train.PPOTS): measure w(t) and fit p(t); no-op (empty metrics) otherwise."""
        if not self.cfg.PPOTS:
            return {}
        return self._estimate(model, batches, device)

    def maybe_reestimate(self, step: int, model: Any, batches: Iterable[dict[str, torch.Tensor]],
                         device: Any) -> dict[str, float] | None:
        """Re-run the estimation every `train.ppots_reestimate_steps` optimizer steps (0 = never)."""
        every = self.cfg.ppots_reestimate_steps
        if not self.cfg.PPOTS or every <= 0 or step <= 0 or step % every:
            return None
        return self._estimate(model, batches, device)

    def _estimate(self, model: Any, batches: Iterable[dict[str, torch.Tensor]], device: Any) -> dict[str, float]:
        cfg, start = self.cfg, time.perf_counter()
        grid = uniform_grid(cfg.num_samples_t)
        stats = measure_w(model, batches, mask_id=mask_token_id(model), grid=grid,
                          num_samples_x0=cfg.num_samples_x0, num_samples_xt=cfg.num_samples_xt,
                          max_tokens_per_forward=cfg.max_tokens_per_forward,
                          seed=cfg.seed + 7919 * self.rounds, eps=cfg.mask_eps, device=device)
        # A zero w (e.g. no token masked at a tiny t) would make KL / p(t) degenerate: floor it.
        w = np.maximum(stats.w, 1e-6 * max(float(stats.w.max()), 1e-12))
        density = fit_density(cfg.p_model, grid, w, mix_uniform=cfg.mix_uniform, n_starts=cfg.n_starts,
                              seed=cfg.seed + self.rounds)
        fitted = density.fitted
        density = _broadcast_density(density)
        self.stats, self.fitted, self.sampler = stats, fitted, TimeSampler(density, cfg.max_is_weight)
        self.rounds += 1
        pdf_grid = density.pdf(grid)
        metrics = {"ppots/time_s": time.perf_counter() - start, "ppots/round": float(self.rounds),
                   "ppots/n_samples_per_t": float(stats.count.min()), "ppots/w_mean": float(stats.w.mean()),
                   "ppots/p_min": float(pdf_grid.min()), "ppots/p_max": float(pdf_grid.max())}
        if hasattr(fitted, "kl"):
            metrics["ppots/kl"] = float(fitted.kl)
        return metrics

    # -- losses ------------------------------------------------------------------------------------
    def loss(self, model: Any, batch: dict[str, torch.Tensor],
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss: t from the sampler (P-POTS weight when on), Normal or MIRROR masks.

        Metrics of this micro-batch: loss, t_mean, masked_frac, is_weight_mean; with P-POTS also
        is_weight_max, is_ess_frac, is_capped_frac; with MIRROR mirror_corr (diagnostics.py)."""
        ids = batch["input_ids"]
        t, weight = self.sampler.sample(ids.shape[0], generator, ids.device)
        loss, st = diffusion_loss(model, batch, t, weight if self.cfg.PPOTS else None,
                                  mask_id=mask_token_id(model), eps=self.cfg.mask_eps,
                                  mode=self.cfg.train_mode, generator=generator)
        n_masks = 2 if self.cfg.train_mode == "MIRROR" else 1
        metrics = {"loss": float(loss.detach()), "t_mean": float(t.mean()),
                   "is_weight_mean": float(weight.mean()),
                   "masked_frac": float(st["n_masked"]) / max(n_masks * float(st["n_eligible"]), 1.0)}
        if self.cfg.PPOTS:
            metrics.update(weight_stats(weight, self.cfg.max_is_weight))
        if "halves" in st:
            metrics["mirror_corr"] = pearson(st["halves"][0], st["halves"][1])
        self.window.add(weights=weight if self.cfg.PPOTS else None, cap=self.cfg.max_is_weight,
                        halves=st.get("halves"))
        return loss, metrics

    def window_metrics(self) -> dict[str, float]:
        """The P-POTS weight statistics and MIRROR correlation over every sequence trained on since the last
        call (a window of micro-batches, so a batch of one sequence still gets a correlation)."""
        return self.window.pop()

    def eval_loss(self, model: Any, batch: dict[str, torch.Tensor],
                  generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Evaluation loss: t ~ U(0, 1), one Normal mask, no importance weight, same normalisation."""
        ids = batch["input_ids"]
        t = TimeSampler(None).sample(ids.shape[0], generator, ids.device)[0]
        loss, _ = diffusion_loss(model, batch, t, None, mask_id=mask_token_id(model), eps=self.cfg.mask_eps,
                                 mode="Normal", generator=generator)
        return loss, {"loss": float(loss.detach())}

    # -- persistence and plots ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"rounds": self.rounds, "density": None, "fitted": None, "stats": None}
        if self.sampler.density is not None:
            d["density"] = self.sampler.density.state_dict()
        if isinstance(self.fitted, PiecewiseLinearDensity):
            d["fitted"] = self.fitted.state_dict()
        if self.stats is not None:
            d["stats"] = {k: np.asarray(getattr(self.stats, k)).tolist() for k in WStats.__dataclass_fields__}
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.rounds = int(d.get("rounds", 0))
        dens = d.get("density")
        self.sampler = TimeSampler(PiecewiseLinearDensity.from_state_dict(dens) if dens else None,
                                   self.cfg.max_is_weight)
        self.fitted = PiecewiseLinearDensity.from_state_dict(d["fitted"]) if d.get("fitted") else None
        if self.sampler.density is not None:
            self.sampler.density.fitted = self.fitted
        st = d.get("stats")
        self.stats = WStats(**{k: np.asarray(v, dtype=np.float64) for k, v in st.items()}) if st else None

    def save_plot(self, path: str) -> str | None:
        """PNG of measured w(t) and fitted p(t) at `path`; None when P-POTS is off or not estimated."""
        if self.stats is None or self.sampler.density is None:
            return None
        from mdm.engines.llada_plus.ppots_plot import plot_ppots

        title = f"P-POTS {self.cfg.p_model}, estimate #{self.rounds}, mix_uniform={self.cfg.mix_uniform}"
        return plot_ppots(self.stats.grid, self.stats.w, self.sampler.density, path, title=title)


def _broadcast_density(density: PiecewiseLinearDensity) -> PiecewiseLinearDensity:
    """Rank 0's density values on every rank (the fits agree already; this makes it bitwise)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1):
        return density
    dev = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" \
        else torch.device("cpu")
    y = torch.as_tensor(density.y, dtype=torch.float64, device=dev)
    torch.distributed.broadcast(y, src=0)
    out = PiecewiseLinearDensity(density.x, y.cpu().numpy())
    out.fitted = getattr(density, "fitted", None)
    return out


def build_objective(train_cfg: TrainConfig) -> LLaDAPlusObjective:
    """The objective for `train_cfg` (the `train` section)."""
    if train_cfg.train_mode not in ("Normal", "MIRROR"):
        raise ValueError(f"train.train_mode must be 'Normal' or 'MIRROR', got {train_cfg.train_mode!r}")
    return LLaDAPlusObjective(train_cfg)

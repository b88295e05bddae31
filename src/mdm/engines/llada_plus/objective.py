"""The LLaDA+ training objective: t sampling (uniform or P-POTS), Normal/MIRROR masks, the weighted loss.

    objective = build_objective(cfg.train)
    objective.prepare(model, batches, device)             # P-POTS: measure w(t), fit p(t) (all ranks call it)
    for step, batch in ...:
        loss, metrics = objective.loss(model, batch, generator)     # scalar, graph-connected
        objective.maybe_reestimate(step, model, batches, device)    # every train.ppots_reestimate_steps
    objective.window_metrics()      # importance weights / MIRROR correlation pooled since the last call
    objective.eval_loss(model, batch, generator)          # t ~ U(0,1), Normal mask, no weight
    objective.eval_quadrature(model, batches, n_points=16, seed=0)   # (loss, SE) by quadrature over t
    objective.save_plot("ppots.png"); state = objective.state_dict()

`batch` is the collate dict as tensors on the device: input_ids, labels (-100 on prompt and padding),
attention_mask. The mask id is `model.config.mask_token_id` (DeepSpeed/DDP `.module` unwrapped). All
random draws come from the passed generator, so training is reproducible and resumable; the fitted p(t)
and the measured moments (for R) are part of `state_dict()`. `prepare` / `maybe_reestimate` return
ppots/R_star_loss, ppots/R_fit_loss (and _grad with train.ppots_target=grad): the variance of the
estimate relative to uniform t, for the optimum and for the density in use. R is the measure of P-POTS'
effect, not the ESS of the importance weights (ESS can read 0.98 while R = 0.74). The p_model is fitted
to w on FIT_POINTS times t = u^2 (dense near 0). The loss normalisation is documented in loss.py; the
diagnostics that `loss` and `window_metrics` return (importance-weight mean/max/ESS/capped fraction with
P-POTS, the pooled correlation of MIRROR's two halves) in diagnostics.py; `prepare` adds the realised
variance ratios (ppots/realised_grad_R, ppots/realised_loss_R: fitted density vs uniform t on the same
micro-batch) and, with MIRROR, the within-sequence pair correlation (diag/mirror_corr_within, the one that
decides MIRROR's gain) from estimator_diagnostics.py.
prepare() and maybe_reestimate() are collective under torch.distributed: call them on every rank.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import numpy as np
import torch

from mdm.engines.llada_plus.config import TrainConfig
from mdm.engines.llada_plus.ppots.density import PiecewiseLinearDensity
from mdm.engines.llada_plus.diagnostics import PooledWindow, pearson, weight_stats
from mdm.engines.llada_plus.estimator_diagnostics import mirror_within_corr, realised_grad_variance
from mdm.engines.llada_plus.eval_quadrature import quadrature_eval_loss
from mdm.engines.llada_plus.loss import diffusion_loss
from mdm.engines.llada_plus.ppots.measure import is_zero3, measure_moments
from mdm.engines.llada_plus.rows import first_batches
from mdm.engines.llada_plus.ppots.moments import PPOTSMoments, WStats, grid_weights, make_grid, variance_ratio
from mdm.engines.llada_plus.ppots.time_sampling import TimeSampler, fit_density

# The p_model is fitted to w(t) from the moments on this many points t = u^2 (dense near 0, where w ~ t^-1/2).
FIT_POINTS = 64
# MIRROR's within-sequence correlation: sequences, pairs per (sequence, t), and the t it is measured at.
MIRROR_DIAG = {"num_sequences": 16, "pairs": 8, "t_values": (0.25, 0.5, 0.75)}
# Realised variance ratios use at most this many parameters (the last ones): float64 moments of an 8B model's
# full gradient would not fit in memory; the output layers see every token's loss.
REALISED_MAX_PARAMS = 20_000_000


def mask_token_id(model: torch.nn.Module) -> int:
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
        self.moments: dict[str, PPOTSMoments] = {}
        self.fitted: PiecewiseLinearDensity | None = None
        self.rounds = 0
        self.window = PooledWindow()

    # -- P-POTS estimation -------------------------------------------------------------------------
    def prepare(self, model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                device: torch.device | str) -> dict[str, float]:
        """P-POTS (train.PPOTS): measure w(t), fit p(t), report the predicted (R) and realised variance ratios;
        MIRROR: its within-sequence pair correlation. Empty metrics when neither is on."""
        return self._measure(model, batches, device)

    def _measure(self, model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                 device: torch.device | str) -> dict[str, float]:
        mirror = self.cfg.train_mode == "MIRROR"
        if not (self.cfg.PPOTS or mirror):
            return {}
        rows = max(self.cfg.num_samples_x0 if self.cfg.PPOTS else 0, MIRROR_DIAG["num_sequences"] if mirror else 0)
        batches = first_batches(batches, rows)  # a list: the measurements below read the same rows
        out = self._estimate(model, batches, device) if self.cfg.PPOTS else {}
        if mirror:
            m = mirror_within_corr(model, batches, mask_id=mask_token_id(model), eps=self.cfg.mask_eps,
                                   max_tokens_per_forward=self.cfg.max_tokens_per_forward,
                                   seed=self.cfg.seed + 7919 * self.rounds, device=device, **MIRROR_DIAG)
            # the t-averaged pooled value would collide with the training window's diag/mirror_corr_pooled
            out.update({f"diag/{k}": v for k, v in m.items() if k != "mirror_corr_pooled"})
        return out

    def maybe_reestimate(self, step: int, model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                         device: torch.device | str) -> dict[str, float] | None:
        """Re-run the estimation every `train.ppots_reestimate_steps` optimizer steps (0 = never)."""
        every = self.cfg.ppots_reestimate_steps
        if not self.cfg.PPOTS or every <= 0 or step <= 0 or step % every:
            return None
        return self._measure(model, batches, device)

    def _estimate(self, model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                  device: torch.device | str) -> dict[str, float]:
        cfg, start = self.cfg, time.perf_counter()
        grid = make_grid(cfg.ppots_grid, cfg.num_samples_t)
        moments = measure_moments(model, batches, mask_id=mask_token_id(model), grid=grid,
                                  grid_weights=grid_weights(cfg.ppots_grid, cfg.num_samples_t),
                                  num_samples_x0=cfg.num_samples_x0, num_samples_xt=cfg.num_samples_xt,
                                  max_tokens_per_forward=cfg.max_tokens_per_forward,
                                  single_token_cap=cfg.ppots_single_token_cap, target=cfg.ppots_target,
                                  seed=cfg.seed + 7919 * self.rounds, eps=cfg.mask_eps, device=device)
        target = moments.get(cfg.ppots_target, moments["loss"])  # grad falls back to loss under ZeRO-3
        stats = WStats(**target.wstats_arrays())
        fit_grid = make_grid("sqrt", FIT_POINTS)
        w_fit = target.w(fit_grid)
        # A zero w (e.g. nothing learnable) would make KL / p(t) degenerate: floor it.
        w_fit = np.maximum(w_fit, 1e-6 * max(float(w_fit.max()), 1e-12))
        density = fit_density(cfg.p_model, fit_grid, w_fit, mix_uniform=cfg.mix_uniform, n_starts=cfg.n_starts,
                              seed=cfg.seed + self.rounds)
        fitted = density.fitted
        density = _broadcast_density(density)
        self.stats, self.fitted, self.sampler = stats, fitted, TimeSampler(density, cfg.max_is_weight)
        self.moments = moments
        self.rounds += 1
        pdf_grid = density.pdf(grid)
        metrics = {"ppots/time_s": time.perf_counter() - start, "ppots/round": float(self.rounds),
                   "ppots/n_samples_per_t": float(stats.count.min()), "ppots/w_mean": float(stats.w.mean()),
                   "ppots/p_min": float(pdf_grid.min()), "ppots/p_max": float(pdf_grid.max())}
        if hasattr(fitted, "kl"):
            metrics["ppots/kl"] = float(fitted.kl)
        metrics.update(self.variance_ratios())
        metrics.update(self._realised(model, batches))
        return metrics

    def _realised(self, model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """ppots/realised_grad_R and ppots/realised_loss_R: the variance of the gradient (loss) estimate with the
        fitted density over that with uniform t, from `train.ppots_realised_draws` draws each on the same
        micro-batch (the first one), beside the predicted R. Normal masks whatever train_mode is: the ratio
        is about the t sampler, as R is. Skipped under ZeRO-3 (parameters are shards)."""
        draws = self.cfg.ppots_realised_draws
        inner = getattr(model, "module", model) if isinstance(model, torch.nn.parallel.DistributedDataParallel) \
            else model
        if draws < 2 or not batches or is_zero3(inner):
            return {}
        params, total = [], 0
        for q in reversed([q for q in inner.parameters() if q.requires_grad]):
            if params and total + q.numel() > REALISED_MAX_PARAMS:
                break
            params.append(q)
            total += q.numel()
        r = realised_grad_variance(inner, batches[0], self.sampler, mask_id=mask_token_id(model), draws=draws,
                                   seed=self.cfg.seed + 7919 * self.rounds, eps=self.cfg.mask_eps, params=params)
        return {"ppots/realised_grad_R": r["realised_grad_R"], "ppots/realised_loss_R": r["realised_loss_R"]}

    def variance_ratios(self) -> dict[str, float]:
        """ppots/R_star_{loss,grad} (the optimal q* ∝ w) and ppots/R_fit_* (the density in use: fitted, mixed
        with uniform, weights capped): Var of the loss / gradient estimate over Var with t ~ U(0, 1). R, not
        the ESS of the weights, measures P-POTS' effect (the gain sits in a thin sliver near t = 0)."""
        out: dict[str, float] = {}
        if self.sampler.density is None:
            return out
        for name, m in self.moments.items():
            out[f"ppots/R_star_{name}"] = m.r_star()
            out[f"ppots/R_fit_{name}"] = variance_ratio(m, self.sampler.density.pdf, self.cfg.max_is_weight)
        return out

    # -- losses ------------------------------------------------------------------------------------
    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss: t from the sampler (P-POTS weight when on), Normal or MIRROR masks.

        Metrics of this micro-batch: loss, t_mean, masked_frac, is_weight_mean; with P-POTS also
        is_weight_max, is_ess_frac, is_capped_frac; with MIRROR mirror_corr_pooled (diagnostics.py)."""
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
            metrics["mirror_corr_pooled"] = pearson(st["halves"][0], st["halves"][1])
        self.window.add(weights=weight if self.cfg.PPOTS else None, cap=self.cfg.max_is_weight,
                        halves=st.get("halves"))
        return loss, metrics

    def window_metrics(self) -> dict[str, float]:
        """The P-POTS weight statistics and MIRROR correlation over every sequence trained on since the last
        call (a window of micro-batches, so a batch of one sequence still gets a correlation)."""
        return self.window.pop()

    def eval_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor],
                  generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Evaluation loss: t ~ U(0, 1), one Normal mask, no importance weight, same normalisation."""
        ids = batch["input_ids"]
        t = TimeSampler(None).sample(ids.shape[0], generator, ids.device)[0]
        loss, _ = diffusion_loss(model, batch, t, None, mask_id=mask_token_id(model), eps=self.cfg.mask_eps,
                                 mode="Normal", generator=generator)
        return loss, {"loss": float(loss.detach())}

    def eval_quadrature(self, model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], *, n_points: int = 16,
                        seed: int = 0) -> tuple[float, float]:
        """(held-out loss, its standard error) by Gauss-Legendre quadrature over t on `n_points` nodes instead
        of random t, each (sequence, node) mask seeded by `seed`, the node and the sequence's tokens: no t noise,
        and the same masks for every model evaluated with the same seed (eval_quadrature.py)."""
        device = next(iter(model.parameters())).device
        value, se, _ = quadrature_eval_loss(model, batches, mask_id=mask_token_id(model), n_points=n_points,
                                            seed=seed, eps=self.cfg.mask_eps,
                                            max_tokens_per_forward=self.cfg.max_tokens_per_forward, device=device)
        return value, se

    # -- persistence and plots ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"rounds": self.rounds, "density": None, "fitted": None, "stats": None,
                             "moments": {k: m.state_dict() for k, m in self.moments.items()}}
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
        self.moments = {k: PPOTSMoments.from_state_dict(v) for k, v in (d.get("moments") or {}).items()}

    def save_plot(self, path: str) -> str | None:
        """PNG of measured w(t) and fitted p(t) at `path`; None when P-POTS is off or not estimated."""
        if self.stats is None or self.sampler.density is None:
            return None
        from mdm.engines.llada_plus.ppots.plot import plot_ppots

        title = f"P-POTS {self.cfg.p_model}, estimate #{self.rounds}, mix_uniform={self.cfg.mix_uniform}"
        m = self.moments.get(self.cfg.ppots_target, self.moments.get("loss"))
        if m is None:  # a state saved before the moments were stored
            return plot_ppots(self.stats.grid, self.stats.w, self.sampler.density, path, title=title)
        fit_grid = make_grid("sqrt", FIT_POINTS)
        return plot_ppots(fit_grid, m.w(fit_grid), self.sampler.density, path, title=title)


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

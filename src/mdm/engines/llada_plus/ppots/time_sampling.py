"""Sampling the diffusion time t: uniform, or P-POTS importance sampling from a fitted density p(t).

    from mdm.engines.llada_plus.ppots.time_sampling import TimeSampler, fit_density
    density = fit_density("EPR", grid, w, mix_uniform=0.1, n_starts=8, seed=0)   # p(t) from measured w(t)
    sampler = TimeSampler(density, max_is_weight=10.0)    # TimeSampler(None) = U(0, 1), weight 1
    t, weight = sampler.sample(batch_size, generator, device)   # weight = min(1 / p(t), max_is_weight)

p_models live in the `p_models` registry (importing this module registers EPR, EPRS and AP). The interface
of a p_model, for adding one:

    @get_registry("p_models").register("MINE")
    class Mine:
        def fit(self, grid: np.ndarray, w: np.ndarray, *, n_starts: int = 8, seed: int = 0) -> density

`grid` [T] interior points of (0, 1), increasing; `w` [T] > 0 the measured sqrt(E[l^2|t]) (optimal p ∝ w;
ppots/moments.py). Judge a fit by R (ppots/moments.variance_ratio), not by the ESS of its weights.
The returned density has `pdf(t)`, `cdf(t)` and `icdf(u)` on numpy arrays, ideally as a
`PiecewiseLinearDensity` (density.py); a density that is not one is tabulated onto a fine grid with
`tabulate(density.pdf)`, so that sampling and the 1/p(t) weights use exactly the same function.

- EPR: p(t) ∝ sqrt(a t^r + b (1 - t)^q + (A exp(k t^m))^2), a, b, A > 0, r, q, m >= 1, k >= 0, fitted by
  minimising KL(w || p) between w and p normalised over the grid points (scipy L-BFGS-B from `n_starts`
  starts: one fixed, the rest random). Only ratios a : b : A^2 matter (p is normalised).
- EPRS: EPR with s / (t + e) added under the square root, for the t^-1/2 growth of w near 0 (few masked
  tokens: mask-count noise), fitted by minimising the importance-sampling variance factor
  (∫ w^2/p)(∫ p)/(∫ w)^2 over the grid rather than KL. Give it w on a grid dense near 0.
- AP: p(t) piecewise linear through (grid_i, w_i), extended flat to 0 and 1 (p(t) = p(grid_0) on
  [0, grid_0] and p(grid_last) on [grid_last, 1]): flat never extrapolates to a negative or exploding
  density, and mixing with uniform keeps the ends sampled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from numpy.typing import ArrayLike

from mdm.engines.llada_plus.ppots.density import PiecewiseLinearDensity, tabulate
from mdm.platform.registry import get_registry

if TYPE_CHECKING:
    from scipy.optimize import OptimizeResult

P_MODELS = get_registry("p_models")

# EPR parameter vector: (log a, log b, log A, r, q, m, k); bounds keep exp() finite in float64.
EPR_NAMES = ("a", "b", "A", "r", "q", "m", "k")
_EPR_BOUNDS = [(-15.0, 15.0)] * 3 + [(1.0, 20.0)] * 3 + [(0.0, 15.0)]


def epr_unnormalised(t: np.ndarray, params: dict[str, float]) -> np.ndarray:
    """sqrt(a t^r + b (1-t)^q + (A exp(k t^m))^2) at t [N] (not normalised)."""
    t = np.asarray(t, dtype=np.float64)
    p = params
    inner = (p["a"] * t ** p["r"] + p["b"] * (1.0 - t) ** p["q"]
             + np.exp(2.0 * np.log(p["A"]) + 2.0 * p["k"] * t ** p["m"]))
    return np.sqrt(inner)


def _vec_to_params(v: np.ndarray) -> dict[str, float]:
    return {"a": float(np.exp(v[0])), "b": float(np.exp(v[1])), "A": float(np.exp(v[2])),
            "r": float(v[3]), "q": float(v[4]), "m": float(v[5]), "k": float(v[6])}


def grid_kl(w: np.ndarray, f: np.ndarray) -> float:
    """KL(w || f) with both normalised to sum 1 over the grid points."""
    pw = w / w.sum()
    pf = f / f.sum()
    return float(np.sum(pw * (np.log(np.maximum(pw, 1e-300)) - np.log(np.maximum(pf, 1e-300)))))


def multistart_minimize(objective: Callable[[np.ndarray], float], starts: list[np.ndarray],
                        bounds: list[tuple[float, float]]) -> OptimizeResult:
    """The best of scipy L-BFGS-B runs of `objective` from each start within `bounds` (an OptimizeResult)."""
    from scipy.optimize import minimize  # here, not at import: the engine package imports this module

    best = None
    for x0 in starts:
        res = minimize(objective, x0, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10})
        if best is None or res.fun < best.fun:
            best = res
    return best


class EPRDensity(PiecewiseLinearDensity):
    """A fitted EPR density, tabulated; `params` holds a, b, A, r, q, m, k and `kl` the fit's KL."""

    def __init__(self, params: dict[str, float], kl: float, extra_knots: ArrayLike = ()) -> None:
        tab = tabulate(lambda t: epr_unnormalised(t, params), extra_knots=extra_knots)
        super().__init__(tab.x, tab.y)
        self.params, self.kl = params, kl


@P_MODELS.register("EPR")
class EPR:
    """Parametric p(t) ∝ sqrt(a t^r + b (1-t)^q + (A exp(k t^m))^2), fitted by KL(w || p) on the grid."""

    def fit(self, grid: np.ndarray, w: np.ndarray, *, n_starts: int = 8, seed: int = 0) -> EPRDensity:
        grid, w = _check(grid, w)

        def objective(v: np.ndarray) -> float:
            f = epr_unnormalised(grid, _vec_to_params(v))
            return grid_kl(w, f) if np.all(np.isfinite(f)) and f.sum() > 0 else 1e6

        rng = np.random.default_rng(seed)
        starts = [np.array([0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.0])]
        for _ in range(max(n_starts, 1) - 1):
            starts.append(np.concatenate([rng.uniform(-3, 3, 3), rng.uniform(1, 6, 3), rng.uniform(0, 4, 1)]))
        best = multistart_minimize(objective, starts, _EPR_BOUNDS)
        return EPRDensity(_vec_to_params(best.x), float(best.fun), extra_knots=grid)


# EPRS adds (log s, log e): the term s / (t + e) under the square root.
_EPRS_BOUNDS = _EPR_BOUNDS + [(-15.0, 15.0), (-14.0, 0.0)]


def eprs_unnormalised(t: np.ndarray, params: dict[str, float]) -> np.ndarray:
    """sqrt(a t^r + b (1-t)^q + (A exp(k t^m))^2 + s / (t + e)) at t [N] (not normalised)."""
    t = np.asarray(t, dtype=np.float64)
    return np.sqrt(epr_unnormalised(t, params) ** 2 + params["s"] / (t + params["e"]))


def variance_proxy(grid: np.ndarray, w: np.ndarray, f: np.ndarray) -> float:
    """(∫ w^2 / f dt)(∫ f dt) / (∫ w dt)^2 >= 1 (= 1 iff f ∝ w), by midpoint weights over the grid cells
    (cell edges halfway between points, 0 and 1 at the ends): the IS variance factor of p ∝ f."""
    edges = np.concatenate([[0.0], 0.5 * (grid[1:] + grid[:-1]), [1.0]])
    dt = np.diff(edges)
    return float(np.sum(dt * w * w / f) * np.sum(dt * f) / np.sum(dt * w) ** 2)


class EPRSDensity(PiecewiseLinearDensity):
    """A fitted EPRS density, tabulated with extra knots near 0; `params`, and `kl` = the variance proxy - 1."""

    def __init__(self, params: dict[str, float], proxy: float, extra_knots: ArrayLike = ()) -> None:
        knots = np.union1d(np.asarray(extra_knots, dtype=np.float64), np.geomspace(1e-7, 0.05, 200))
        tab = tabulate(lambda t: eprs_unnormalised(t, params), extra_knots=knots)
        super().__init__(tab.x, tab.y)
        self.params, self.kl = params, proxy - 1.0


@P_MODELS.register("EPRS")
class EPRS:
    """EPR plus s / (t + e) under the square root (mask-count noise: w ~ t^-1/2 near 0), fitted by
    minimising the importance-sampling variance factor `variance_proxy` (not KL): its optimum is p ∝ w.
    Pass w on a grid dense near 0 (objective.py uses t = u^2 on 64 points) or the tail is not seen."""

    def fit(self, grid: np.ndarray, w: np.ndarray, *, n_starts: int = 8, seed: int = 0) -> EPRSDensity:
        grid, w = _check(grid, w)

        def objective(v: np.ndarray) -> float:
            f = eprs_unnormalised(grid, _vec_to_eprs(v))
            return variance_proxy(grid, w, f) if np.all(np.isfinite(f)) and np.all(f > 0) else 1e6

        rng = np.random.default_rng(seed)
        starts = [np.array([0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.0, -3.0, np.log(1e-3)])]
        for _ in range(max(n_starts, 1) - 1):
            starts.append(np.concatenate([rng.uniform(-3, 3, 3), rng.uniform(1, 6, 3), rng.uniform(0, 4, 1),
                                          rng.uniform(-8, 2, 1), rng.uniform(-12, -2, 1)]))
        best = multistart_minimize(objective, starts, _EPRS_BOUNDS)
        return EPRSDensity(_vec_to_eprs(best.x), float(best.fun), extra_knots=grid)


def _vec_to_eprs(v: np.ndarray) -> dict[str, float]:
    return {**_vec_to_params(v[:7]), "s": float(np.exp(v[7])), "e": float(np.exp(v[8]))}


@P_MODELS.register("AP")
class AP:
    """Non-parametric p(t): linear between the measured (grid_i, w_i), flat from 0 and to 1."""

    def fit(self, grid: np.ndarray, w: np.ndarray, *, n_starts: int = 8, seed: int = 0) -> PiecewiseLinearDensity:
        grid, w = _check(grid, w)
        x, y = grid, w
        if x[0] > 0.0:
            x, y = np.concatenate([[0.0], x]), np.concatenate([[w[0]], y])
        if x[-1] < 1.0:
            x, y = np.concatenate([x, [1.0]]), np.concatenate([y, [w[-1]]])
        return PiecewiseLinearDensity(x, y)


def _check(grid: ArrayLike, w: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    grid = np.asarray(grid, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if grid.shape != w.shape or grid.ndim != 1 or len(grid) < 2:
        raise ValueError(f"p_model fit: grid and w must be 1-D of equal length >= 2, got {grid.shape}, {w.shape}")
    if np.any(np.diff(grid) <= 0) or grid[0] < 0 or grid[-1] > 1:
        raise ValueError("p_model fit: grid must increase strictly inside [0, 1]")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"p_model fit: w must be finite and > 0, got {w.tolist()}")
    return grid, w


def fit_density(p_model: str, grid: np.ndarray, w: np.ndarray, *, mix_uniform: float = 0.1,
                n_starts: int = 8, seed: int = 0) -> PiecewiseLinearDensity:
    """Fit `p_model` (a registered name) to w(t) on `grid`, then mix with U(0, 1) by `mix_uniform`."""
    density = P_MODELS.get(p_model)().fit(grid, w, n_starts=n_starts, seed=seed)
    fitted = density
    if not isinstance(density, PiecewiseLinearDensity):
        density = tabulate(density.pdf, extra_knots=grid)
    mixed = density.mix_uniform(mix_uniform)
    mixed.fitted = fitted
    return mixed


def uniform_grid(n: int) -> np.ndarray:
    """n interior points of (0, 1): the midpoints (i + 0.5) / n."""
    return (np.arange(n, dtype=np.float64) + 0.5) / n


class TimeSampler:
    """Draws t per sequence: U(0, 1) with weight 1 when `density` is None, else t ~ density with
    weight min(1 / p(t), max_is_weight). (With mix_uniform = m, p >= m so the cap 1/m never binds.)"""

    def __init__(self, density: PiecewiseLinearDensity | None = None, max_is_weight: float = 10.0) -> None:
        self.density, self.max_is_weight = density, max_is_weight

    def sample(self, n: int, generator: torch.Generator | None,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(t [n] float32, weight [n] float32) on `device`."""
        if self.density is None:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            t = torch.rand(n, generator=generator, device=gen_device).to(device)
            return t, torch.ones(n, device=device)
        t = self.density.sample(n, generator)
        return self._weighted(t.numpy(), device)

    def from_uniform(self, u: np.ndarray, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(t, weight) for given uniforms `u` [n] in [0, 1): t = u, or the density's inverse CDF at u (what
        `sample` does with its own uniforms), so a caller can stratify or share the uniforms."""
        u = np.asarray(u, dtype=np.float64)
        if self.density is None:
            return torch.as_tensor(u, dtype=torch.float32, device=device), torch.ones(len(u), device=device)
        return self._weighted(self.density.icdf(u), device)

    def _weighted(self, t: np.ndarray, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        weight = np.minimum(1.0 / np.maximum(self.density.pdf(t), 1e-300), self.max_is_weight)
        return (torch.as_tensor(t, device=device, dtype=torch.float32),
                torch.from_numpy(weight).to(device=device, dtype=torch.float32))

"""P-POTS moments E[l | t], E[l^2 | t] at any t, and the variance ratio R(q) of a time density q.

    m = PPOTSMoments(target="loss", eps=1e-3, grid=t_grid, s1=..., s2=..., n=..., m1=..., m2=...)
    m.second(t), m.first(t), m.w(t)          # E[l^2|t], E[l|t], sqrt(E[l^2|t]) at any t in [0, 1]
    m.mu_sq()                                # mu^2 (loss) or an unbiased ||mu_g||^2 (grad)
    R = variance_ratio(m, density.pdf, max_is_weight=10.0)   # Var under q / Var under U(0, 1)
    m.r_star()                               # R of the optimal q* ∝ w

For a proposal q, the estimator X = l(t) / q(t), t ~ q, has V(q) = ∫ E[l^2|t] / q(t) dt - mu^2 with
mu = ∫ E[l|t] dt; the optimum is q* ∝ w = sqrt(E[l^2|t]) and R* = ((∫w)^2 - mu^2) / (∫w^2 - mu^2). With
target "grad" l^2 is ||g||^2 (g the gradient of the per-sequence loss) and mu^2 is ||mu_g||^2.
R is THE measure of P-POTS' effect; the effective sample size of the importance weights is not: the gain
lives in a thin sliver near t = 0 (where w grows like t^-1/2 from mask-count noise), so ESS can read
0.98 while R = 0.74.

How the moments are represented (measured by ppots/measure.py). Sequence i has n_i eligible tokens and
k ~ Binomial(n_i, p) of them are masked, p = (1 - eps) t + eps. Split at k = 1:
  E[l^a|t] = (1/N) sum_i [ P_i(k=1|t) m_a,i / (n_i p)^a ] + S_a(t)
- the k = 1 part is exact in t: P(k=1) = n p (1-p)^(n-1) and m_a,i = mean_j CE_j^a over the token j
  masked alone (a = 2 for grad: mean_j ||grad CE_j||^2);
- S_a(t) = (1/N) sum_i P_i(k>=2|t) E_i[l^a | t, k>=2] is measured at the grid points and interpolated
  linearly in u = sqrt(t) (it is bounded as t -> 0), flat outside the grid.
Integrals over t are taken in u = sqrt(t) (dt = 2u du) by composite Gauss-Legendre, with panels refined
near u = 0 where the k = 1 part varies on the scale sqrt(eps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from numpy.typing import ArrayLike

# Panels in u: uniform plus geometric near 0 (the k = 1 part has structure at u ~ sqrt(eps)).
_BREAKS = np.union1d(np.linspace(0.0, 1.0, 129), np.geomspace(1e-5, 0.1, 48))
_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)


def quadrature_nodes() -> tuple[np.ndarray, np.ndarray]:
    """(t [M], weights [M]) with sum_k weights_k f(t_k) ≈ ∫_0^1 f(t) dt, for f with a t^-1/2-like end at 0."""
    a, b = _BREAKS[:-1, None], _BREAKS[1:, None]
    u = (0.5 * (b - a) * _GL_X[None, :] + 0.5 * (a + b)).ravel()
    wu = (0.5 * (b - a) * _GL_W[None, :]).ravel()
    return u * u, wu * 2.0 * u


def make_grid(kind: str, n: int) -> np.ndarray:
    """n measurement times: "sqrt" t = ((i + 0.5) / n)^2 (dense near 0) or "uniform" t = (i + 0.5) / n."""
    u = (np.arange(n, dtype=np.float64) + 0.5) / n
    if kind == "sqrt":
        return u * u
    if kind == "uniform":
        return u
    raise ValueError(f"train.ppots_grid must be 'sqrt' or 'uniform', got {kind!r}")


def grid_weights(kind: str, n: int) -> np.ndarray:
    """Midpoint-rule weights of make_grid(kind, n) for ∫_0^1 dt (in u for sqrt: dt = 2u du)."""
    u = (np.arange(n, dtype=np.float64) + 0.5) / n
    return 2.0 * u / n if kind == "sqrt" else np.full(n, 1.0 / n)


def p_single(n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """P(k = 1) for k ~ Binomial(n, p); n [N], p [M] -> [M, N]."""
    n, p = np.asarray(n, dtype=np.float64)[None, :], np.asarray(p, dtype=np.float64)[:, None]
    return n * p * np.power(1.0 - p, n - 1.0)  # 0^0 = 1: n = 1 at p = 1 gives 1


def p_two_or_more(n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """P(k >= 2) for k ~ Binomial(n, p); n [N], p [M] -> [M, N]."""
    n2, p2 = np.asarray(n, dtype=np.float64)[None, :], np.asarray(p, dtype=np.float64)[:, None]
    return np.clip(1.0 - np.power(1.0 - p2, n2) - p_single(n, p), 0.0, 1.0)


@dataclass
class WStats:
    """w(t) on the fitting grid, as the plot and the state dict keep it: per grid point the mean E[l|t], the
    variance E[l^2|t] - E[l|t]^2, the rows behind each value, and w = sqrt(E[l^2|t])."""

    grid: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    count: np.ndarray
    w: np.ndarray


@dataclass
class PPOTSMoments:
    """The measured moments (see module docstring). Arrays: grid/s1/s2 [T], n/m1/m2 [N]."""

    target: str
    eps: float
    grid: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    n: np.ndarray
    m1: np.ndarray
    m2: np.ndarray
    # grad target: the unbiased ||mu_g||^2 estimate (dot product of two independent halves' means).
    mu_sq_grad: float | None = None
    n_rows_per_t: float = 0.0
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def _p(self, t: ArrayLike) -> np.ndarray:
        return (1.0 - self.eps) * np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0) + self.eps

    def _interp(self, s: np.ndarray, t: ArrayLike) -> np.ndarray:
        return np.interp(np.sqrt(np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)), np.sqrt(self.grid), s)

    def single_part(self, t: ArrayLike, a: int) -> np.ndarray:
        """The exact one-masked-token part (1/N) sum_i P_i(k=1|t) m_a,i / (n_i p)^a at t [M]."""
        p = np.atleast_1d(self._p(t))
        m = self.m1 if a == 1 else self.m2
        terms = p_single(self.n, p) * m[None, :] / (self.n[None, :] * p[:, None]) ** a
        return terms.sum(axis=1) / max(len(self.n), 1)

    def second(self, t: ArrayLike) -> np.ndarray:
        """E[l^2 | t] (grad: E[||g||^2 | t]) at t [M]."""
        return self.single_part(t, 2) + self._interp(self.s2, t)

    def first(self, t: ArrayLike) -> np.ndarray:
        """E[l | t] at t [M] (loss target only)."""
        return self.single_part(t, 1) + self._interp(self.s1, t)

    def w(self, t: ArrayLike) -> np.ndarray:
        """w(t) = sqrt(E[l^2 | t]), the optimal density up to normalisation."""
        return np.sqrt(np.maximum(self.second(t), 0.0))

    def _nodes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if "nodes" not in self._cache:
            t, wq = quadrature_nodes()
            self._cache["nodes"] = (t, wq, self.second(t))
        return self._cache["nodes"]

    def mu_sq(self) -> float:
        """mu^2 = (∫ E[l|t] dt)^2 for the loss; the unbiased ||mu_g||^2 estimate for the grad target."""
        if self.target == "grad":
            return float(self.mu_sq_grad or 0.0)
        t, wq, _ = self._nodes()
        return float(np.sum(wq * self.first(t))) ** 2

    def r_star(self) -> float:
        """R of the optimal proposal q* ∝ w: ((∫w)^2 - mu^2) / (∫w^2 - mu^2)."""
        t, wq, m2 = self._nodes()
        mu2 = self.mu_sq()
        return float((np.sum(wq * np.sqrt(np.maximum(m2, 0.0))) ** 2 - mu2) / (np.sum(wq * m2) - mu2))

    def wstats_arrays(self) -> dict[str, np.ndarray]:
        """grid, mean, var, count, w at the measurement grid (the WStats fields)."""
        mean = self.first(self.grid) if self.target == "loss" else np.zeros_like(self.grid)
        second = np.maximum(self.second(self.grid), 0.0)
        var = np.maximum(second - mean * mean, 0.0)
        return {"grid": self.grid, "mean": mean, "var": var, "count": np.full_like(self.grid, self.n_rows_per_t),
                "w": np.sqrt(mean * mean + var)}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able (floats and lists only)."""
        d: dict[str, Any] = {"target": self.target, "eps": float(self.eps), "mu_sq_grad": self.mu_sq_grad,
                             "n_rows_per_t": float(self.n_rows_per_t)}
        for k in ("grid", "s1", "s2", "n", "m1", "m2"):
            d[k] = np.asarray(getattr(self, k), dtype=np.float64).tolist()
        return d

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> "PPOTSMoments":
        arrays = {k: np.asarray(d[k], dtype=np.float64) for k in ("grid", "s1", "s2", "n", "m1", "m2")}
        return cls(target=d["target"], eps=float(d["eps"]), mu_sq_grad=d.get("mu_sq_grad"),
                   n_rows_per_t=float(d.get("n_rows_per_t", 0.0)), **arrays)


def variance_ratio(moments: PPOTSMoments, pdf: Callable[[np.ndarray], np.ndarray],
                   max_is_weight: float = float("inf")) -> float:
    """R(q) = Var of the importance-sampled estimator under q / Var under U(0, 1).

    With the weight capped, X = l min(1/q, cap): E[X^2] = ∫ q min(1/q, cap)^2 E[l^2|t] dt and (loss target)
    E[X] = ∫ q min(1/q, cap) E[l|t] dt, so a binding cap's bias is counted in the variance's mean term; for
    the grad target the mean term is the uncapped ||mu_g||^2 (exact when the cap does not bind)."""
    t, wq, m2 = moments._nodes()
    q = np.maximum(np.asarray(pdf(t), dtype=np.float64), 1e-300)
    weight = np.minimum(1.0 / q, max_is_weight)
    mu2 = moments.mu_sq()
    if moments.target == "loss":
        mean_q = float(np.sum(wq * q * weight * moments.first(t))) ** 2
    else:
        mean_q = mu2
    v_q = float(np.sum(wq * q * weight * weight * m2)) - mean_q
    v_u = float(np.sum(wq * m2)) - mu2
    return v_q / v_u

"""A piecewise-linear probability density on [0, 1] with exact CDF and inverse-CDF sampling.

    d = PiecewiseLinearDensity(x=[0, .25, .5, 1], y=[1, 3, 2, 2])   # y need not be normalised
    d.pdf(np.array([0.1]))          # density values (integrates to 1 over [0, 1])
    d.cdf(t), d.icdf(u)             # exact: the CDF is piecewise quadratic, inverted in closed form
    t = d.sample(16, generator)     # torch float64 [16], u ~ U(0,1) from the generator, then icdf
    d.mix_uniform(0.1)              # (1 - 0.1) * d + 0.1 * U(0, 1), again piecewise linear

P-POTS samples t from this class and weights each draw by 1 / pdf(t); because pdf, cdf and icdf are
the same function (not approximations of each other) the importance weights are exact. Smooth
families (EPR) are tabulated onto a fine grid with `tabulate`.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from numpy.typing import ArrayLike


class PiecewiseLinearDensity:
    """Density linear between knots `x` (0 = x_0 < ... < x_n = 1) with values ∝ `y` >= 0."""

    def __init__(self, x: ArrayLike, y: ArrayLike) -> None:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
            raise ValueError(f"density knots: x and y must be 1-D of equal length >= 2, got {x.shape}, {y.shape}")
        if x[0] != 0.0 or x[-1] != 1.0 or np.any(np.diff(x) <= 0):
            raise ValueError("density knots: x must increase strictly from 0 to 1")
        if not np.all(np.isfinite(y)) or np.any(y < 0) or not np.any(y > 0):
            raise ValueError(f"density values must be finite, >= 0 and not all 0; got min {y.min()}, max {y.max()}")
        dx = np.diff(x)
        area = 0.5 * (y[:-1] + y[1:]) * dx
        z = area.sum()
        self.x, self.y = x, y / z
        self._slope = np.diff(self.y) / dx
        self._c = np.concatenate([[0.0], np.cumsum(area / z)])
        self._c[-1] = 1.0
        # For a mixed density: the p_model's own fit before mixing (plots and logs read it).
        self.fitted: Any = None

    def pdf(self, t: ArrayLike) -> np.ndarray:
        """Density at t (array-like); 0 outside [0, 1]."""
        t = np.asarray(t, dtype=np.float64)
        return np.where((t >= 0) & (t <= 1), np.interp(t, self.x, self.y), 0.0)

    def cdf(self, t: ArrayLike) -> np.ndarray:
        """P(T <= t), exact (piecewise quadratic)."""
        t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
        i = np.clip(np.searchsorted(self.x, t, side="right") - 1, 0, len(self.x) - 2)
        d = t - self.x[i]
        return self._c[i] + self.y[i] * d + 0.5 * self._slope[i] * d * d

    def icdf(self, u: ArrayLike) -> np.ndarray:
        """The t with cdf(t) = u for u in [0, 1] (closed-form root of the segment's quadratic)."""
        u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
        i = np.clip(np.searchsorted(self._c, u, side="right") - 1, 0, len(self.x) - 2)
        r = u - self._c[i]
        y0, s = self.y[i], self._slope[i]
        # d = 2r / (y0 + sqrt(y0^2 + 2 s r)) is the stable root of s/2 d^2 + y0 d - r = 0 (also for s = 0).
        den = y0 + np.sqrt(np.maximum(y0 * y0 + 2.0 * s * r, 0.0))
        d = np.where(den > 0, 2.0 * r / np.where(den > 0, den, 1.0), 0.0)
        return np.clip(self.x[i] + d, self.x[i], self.x[i + 1])

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws by inverse CDF, float64 CPU tensor [n]; the uniforms come from `generator`."""
        gen_device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64).cpu().numpy()
        return torch.from_numpy(self.icdf(u))

    def mix_uniform(self, m: float) -> "PiecewiseLinearDensity":
        """(1 - m) * self + m * U(0, 1)."""
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"mix_uniform must be in [0, 1], got {m}")
        return PiecewiseLinearDensity(self.x, (1.0 - m) * self.y + m)

    def state_dict(self) -> dict[str, list[float]]:
        return {"x": self.x.tolist(), "y": self.y.tolist()}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> "PiecewiseLinearDensity":
        return cls(d["x"], d["y"])


def tabulate(pdf: Callable[[np.ndarray], np.ndarray], n_points: int = 2049,
             extra_knots: ArrayLike = ()) -> PiecewiseLinearDensity:
    """A smooth density on [0, 1] as a PiecewiseLinearDensity on a uniform grid plus `extra_knots`."""
    x = np.union1d(np.linspace(0.0, 1.0, n_points), np.asarray(extra_knots, dtype=np.float64))
    x = x[(x >= 0) & (x <= 1)]
    return PiecewiseLinearDensity(x, pdf(x))

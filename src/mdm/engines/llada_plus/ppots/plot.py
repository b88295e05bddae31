"""A PNG of the P-POTS estimate: measured w(t) = sqrt(E[l^2|t]) and the fitted, uniform-mixed p(t).

    path = plot_ppots(grid, w, density, "ppots.png", title="EPR, step 0")

w is rescaled to integrate to 1 (trapezoid over the grid, extended flat to 0 and 1) so that it sits
on the same axis as the density p(t). objective.py passes w on 64 points t = u^2 (ppots/moments: the
exact one-masked-token part makes w(t) available at any t), so the t^-1/2 rise near 0 is visible; the
gain of P-POTS lives there, which is why R (ppots/R_fit_*), not the weights' ESS, measures it.
Uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mdm.engines.llada_plus.ppots.density import PiecewiseLinearDensity


def plot_ppots(grid: np.ndarray, w: np.ndarray, density: PiecewiseLinearDensity, path: str,
               title: str | None = None) -> str:
    """Write the plot to `path` (parent folders created); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid, w = np.asarray(grid, dtype=np.float64), np.asarray(w, dtype=np.float64)
    xs = np.concatenate([[0.0], grid, [1.0]])
    ws = np.concatenate([[w[0]], w, [w[-1]]])
    area = float(np.sum(0.5 * (ws[:-1] + ws[1:]) * np.diff(xs)))
    t = np.linspace(0.0, 1.0, 501)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(grid, w / area, "o", label="measured w(t) (normalised)")
    ax.plot(t, density.pdf(t), "-", label="fitted p(t) (mixed with uniform)")
    fitted = getattr(density, "fitted", None)
    if fitted is not None and fitted is not density:
        ax.plot(t, fitted.pdf(t), "--", label="fitted p(t) before mixing")
    ax.set_xlabel("t")
    ax.set_ylabel("density")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(bottom=0.0)
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return str(path)

"""P-POTS, importance sampling over the masking time t: the t samplers and p_models (`time_sampling.py`, on the
piecewise-linear `density.py`), the measured per-t loss/gradient moments (`measure.py`, `moments.py`: the
variance ratio R and R*) and the fitted density plot (`plot.py`)."""

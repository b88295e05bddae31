"""LLaDA+ likelihood estimation: the Monte Carlo ELBO estimate (`estimate.py`) over packed masked rows
(`batch.py`), the exact enumeration for short answers (`exact.py`), rolling windows for long texts
(`rolling.py`), and the `EngineSpec` hooks the platform calls (`hooks.py`)."""

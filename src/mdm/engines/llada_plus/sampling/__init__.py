"""LLaDA+ samplers (token ids only): `sampler.py` (`llada`: the reference low-confidence remasking sampler),
`fast.py` (`fast`: the cached, parallel-decoding sampler), their shared row state (`batch.py`), the commit of
one denoising step (`step.py`) and the per-block transfer schedule (`schedule.py`).
Importing `sampler` and `fast` registers the names in the `samplers` registry."""

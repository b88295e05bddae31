"""Evaluation entry points kept at the seed's import paths (`python -m mdm.eval.harness`)."""

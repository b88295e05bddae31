"""Likelihood scoring: the batch job that ranks a task's choices by the engine's log-likelihood on Ray Data
(`job.py`: `run_likelihood`), its actor (`actor.py`), and the lm-evaluation-harness model (`lm_eval_model.py`)."""

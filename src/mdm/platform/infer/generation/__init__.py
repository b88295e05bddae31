"""Generation: the one path from (model, engine, sampler config, prompts) to ids and texts (`generate.py`), the
batch-generation job on Ray Data (`job.py`: `run_inference`), its sampler and scorer actors (`actors.py`) and
the MLflow pyfunc that samples from a logged model (`sampler_model.py`)."""

"""Predictions as an MLflow table: one row per prompt, shown in the run's artifacts and the evaluation view.

    log_predictions(client, run_id, records, "infer/arithmetic/predictions.json")

`records` are the seed's prediction records (`{"task", "prompt", "gold_raw", "prediction", "meta": {...},
"id"}`, as batch inference and the comparison trials write them); the table keeps id, prompt, gold,
prediction, and the extracted answer and score when the record's meta has them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from mlflow import MlflowClient


def prediction_columns(records: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Column-wise {id, prompt, gold, prediction, extracted, score} of `records`."""
    cols: dict[str, list[Any]] = {k: [] for k in ("id", "prompt", "gold", "prediction", "extracted", "score")}
    for r in records:
        meta = r.get("meta") or {}
        cols["id"].append(str(r.get("id")))
        cols["prompt"].append(str(r.get("prompt")))
        cols["gold"].append(str(r.get("gold_raw")))
        cols["prediction"].append(str(r.get("prediction")))
        cols["extracted"].append(meta.get("extracted"))
        cols["score"].append(meta.get("score"))
    return cols


def log_predictions(client: MlflowClient, run_id: str, records: Sequence[dict[str, Any]], artifact_file: str) -> None:
    """`mlflow.log_table` of `records` at `artifact_file` (a .json path inside the run's artifacts)."""
    if records:
        client.log_table(run_id, data=prediction_columns(records), artifact_file=artifact_file)

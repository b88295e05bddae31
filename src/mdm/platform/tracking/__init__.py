"""MLflow tracking for mdm's runs (`tracker`, `system_metrics`, `model_log`, ...).

Importing this package keeps MLflow's chatter off the job's terminal, before any of its modules imports
MLflow: MLflow logs INFO by default ("Creating initial MLflow database tables", system metrics started and
stopped), and draws a "Downloading artifacts" bar each time a run's artifacts are copied -- lines that,
from Ray workers, arrive between mdm's own. Its warnings and errors still show. Defaults only: a user's
MLFLOW_LOGGING_LEVEL or MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR wins. The variables are set in this process's
environment, so an embedded Ray started afterwards hands them to its workers too.
"""

import logging as _logging
import os as _os
import sys as _sys

QUIET_MLFLOW_ENV = {"MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}

for _key, _value in QUIET_MLFLOW_ENV.items():
    _os.environ.setdefault(_key, _value)
if "mlflow" in _sys.modules:  # MLflow reads MLFLOW_LOGGING_LEVEL once, at import: set the level it chose
    _logging.getLogger("mlflow").setLevel(_os.environ["MLFLOW_LOGGING_LEVEL"].upper())

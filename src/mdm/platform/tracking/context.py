"""Who ran what, and where to look: MLflow's context tags, a run's description, and links into the UI.

    tags = context_tags()        # mlflow.user, mlflow.source.name/type, mlflow.source.git.commit/branch (driver)
    client.set_tag(run_id, DESCRIPTION_TAG, describe_command("mdm tune x", space_yaml="train.lr: grid[...]"))
    print(run_link(uri, experiment_id, run_id))   # ML view URL, or the `mlflow ui` command and the URL

MLflow's fluent `mlflow.start_run` fills the context tags itself; the platform creates runs with the client
(so that a re-run resumes its run), so it resolves them with MLflow's own context providers, on the driver:
inside a Ray worker the "source" would be Ray's worker script. The driver passes them down to the runs its
trials open. MLflow 3 opens an experiment in its GenAI view unless the URL asks for the ML view
(`workflowType=machine_learning`); every link printed here asks for it.
"""

from __future__ import annotations

import shlex
import sys
from typing import Optional, Sequence
from urllib.parse import quote

DESCRIPTION_TAG = "mlflow.note.content"   # the run's description, rendered as markdown on its page
CONTEXT_KEYS = ("mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit",
                "mlflow.source.git.branch", "mlflow.source.git.repoURL")
ML_VIEW = "workflowType=machine_learning"
DEFAULT_UI = "http://127.0.0.1:5000"


def context_tags() -> dict[str, str]:
    """MLflow's context tags for this process (user, entry script, git commit when in a repository)."""
    from mlflow.tracking.context.registry import resolve_tags

    try:
        tags = resolve_tags()
    except Exception:  # a broken git checkout must not stop a run; the tags are a courtesy
        return {}
    return {k: str(v) for k, v in tags.items() if k in CONTEXT_KEYS}


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """This process's command line, shell-quoted (`python experiments/x.py --set a=b`)."""
    args = list(sys.argv if argv is None else argv)
    return " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *args])


def describe_command(title: str, space_yaml: str, extra: str = "", argv: Optional[Sequence[str]] = None,
                     head: str = "") -> str:
    """A run description in markdown: the title, `head` (e.g. a result table, first so the UI shows it
    before "Show more"), `extra`, the command line, then the search space."""
    parts = [f"**{title}**", head.rstrip(), extra.rstrip(), f"Command:\n\n```\n{command_line(argv)}\n```",
             f"Search space:\n\n```yaml\n{space_yaml.rstrip()}\n```"]
    return "\n\n".join(p for p in parts if p) + "\n"


def ui_base(uri: str) -> Optional[str]:
    """The UI's address for a tracking URI: an http(s) server is its own UI; a local store has none (None)."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the ML view."""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"


def compare_url(base: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """MLflow's compare view of `run_ids` (e.g. a sweep's children), in the ML view."""
    runs = quote("[" + ",".join(f'"{r}"' for r in run_ids) + "]")
    experiments = quote('["' + experiment_id + '"]')
    return f"{base}/#/compare-runs?runs={runs}&experiments={experiments}&{ML_VIEW}"


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """What to print so a person opens the run: the URL, preceded by `mlflow ui ...` for a local store."""
    base = ui_base(uri)
    if base is not None:
        return run_url(base, experiment_id, run_id)
    return (f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000\n"
            f"  then open {run_url(DEFAULT_UI, experiment_id, run_id)}")

"""The main job's terminal is only ours (issue #23, item 9): every line `python experiments/gsm8k.py` prints
is mdm's (the `gsm8k:` / `mdm ...` / `MLflow:` lines and the summary) or a progress bar, nothing from
transformers, MLflow or Ray -- as a new user runs it, with RAY_AUTH_MODE and the MLflow variables unset.

    pytest tests/experiments/test_main_job_terminal.py -q      # the filter itself, against known lines

The run is test_main_job.py's (one run of the job serves both): it asserts `foreign(terminal) == []`.

One foreign line is still known and tolerated here, by its exact text (KNOWN): Ray's core worker logs an
error from the driver whenever Ray Data starts a map actor pool with actor restarts on (Ray Data passes its
context and map function to the actor as object-store references; ray-project/ray#53727). The only opt-out,
`eval.max_restarts=0`, would give up restarting dead sampler actors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
RAY_PREFIX = re.compile(r"^\((?:[\w().]+ )?pid=\d+(?:, ip=[\d.]+)?\)\s*")
OURS = ("gsm8k:", "mdm ", "mdm:", "MLflow:", "== gsm8k summary ==")
# mdm's bars (preprocess "gsm8k/train", training "<run name>", "eval gsm8k/test"), whole: a piece must end
# with the bar's statistics, so text glued to a bar is still caught; other bars (MLflow's downloads) are not ours
BARS = (re.compile(r"(?:gsm8k|eval gsm8k/).*\d+%\|[^|]*\| *[\d.]+[kM]?/[\d.]+[kM]? \[[^\]]*\]"),  # a total
        re.compile(r"gsm8k/[\w.-]+: \d+rows \[[^\]]*\]"))                                   # a count
KNOWN = (re.compile(r"\[[\d\- :,]+ E \d+ \d+\] core_worker\.cc:\d+: Actor with class name: "
                    r"'MapWorker\(MapBatches\(SamplerActor\)\)' .* has constructor arguments in the object "
                    r"store and max_restarts > 0\..*"),)
# What a new user's shell does not set (test_main_job runs the job without them).
DROP = ("RAY_AUTH_MODE", "MLFLOW_LOGGING_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "RAY_ADDRESS",
        "MLFLOW_TRACKING_URI", "RAY_DATA_LOGGING_CONFIG", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


def pieces(text: str) -> list[str]:
    """What a person reads: each line and each carriage-return redraw of a bar, without colours and without
    Ray's "(Actor pid=N)" prefix on lines forwarded from its workers."""
    out = []
    for line in ANSI.sub("", text).split("\n"):
        for part in line.split("\r"):
            part = RAY_PREFIX.sub("", part.strip()).strip()
            if part:
                out.append(part)
    return out


def foreign(text: str) -> list[str]:
    """The pieces that are neither mdm's lines, the summary's JSON, nor a whole progress bar."""
    out, in_summary = [], False
    for p in pieces(text):
        if p == "== gsm8k summary ==":
            in_summary = True
        elif in_summary:
            in_summary = p != "}"
            continue
        bar, _, glued = p.partition("]")  # a bar with text after it: judge the bar and the text apart
        parts = [bar + "]", glued.strip()] if glued.strip() and any(b.fullmatch(bar + "]") for b in BARS) else [p]
        for q in parts:
            if q and not (q.startswith(OURS) or any(b.fullmatch(q) for b in (*BARS, *KNOWN))):
                out.append(q)
    return out


def test_filter_catches_foreign_lines_and_glued_text() -> None:
    text = ("gsm8k: data: x\n\x1b[36m(RayTrainWorker pid=7)\x1b[0m 2026/01/01 INFO mlflow.x: Started\n"
            "\reval gsm8k/test:   0%|          | 0/32 [00:00<?, ?rows/s][transformers] You are using\n"
            "gsm8k/train: 256rows [00:00, 1025.90rows/s]\rgsm8k/train: 512rows [00:00, 757.76rows/s]\n"
            "\rDownloading artifacts:   0%|          | 0/4 [00:00<?, ?it/s]\n"
            "== gsm8k summary ==\n{\n  \"accuracy\": 0.0\n}\nMLflow: mlflow ui\nWARNING something\n")
    assert foreign(text) == ["2026/01/01 INFO mlflow.x: Started", "[transformers] You are using",
                             "Downloading artifacts:   0%|          | 0/4 [00:00<?, ?it/s]", "WARNING something"]

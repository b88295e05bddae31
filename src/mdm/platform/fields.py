"""The ground floor of configuration: the error type and the field helpers every config section uses.

    from mdm.platform.fields import ConfigError, choice, registry_choice

    @dataclass
    class TuneConfig:
        mode: str = choice("min", ("min", "max"))            # one of these values
        task: Optional[str] = registry_choice(None, "tasks")  # a registered name (checked at load)

A leaf module: it imports nothing from mdm, so a section can live beside the component that reads it while
the loader (`mdm.platform.config`) imports the sections, never the other way round.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Iterable


class ConfigError(ValueError):
    """A configuration mistake; the message says which key, where it came from and what would be valid."""


def choice(default: object, choices: Iterable[Any]) -> Any:
    """A dataclass field whose value must be one of `choices`."""
    return field(default=default, metadata={"choices": tuple(choices)})


def registry_choice(default: object, kind: str) -> Any:
    """A dataclass field whose value must be a registered name of `kind` (tasks, p_models, ...)."""
    return field(default=default, metadata={"registry": kind})

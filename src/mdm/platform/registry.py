"""Named registries for the choices that are swept or plugged in: tasks, engines, p_models, samplers.

A component registers itself by name at import time; configs pick it by that name:

    from mdm.platform.registry import get_registry
    P_MODELS = get_registry("p_models")

    @P_MODELS.register("EPR")
    class EPR: ...

    P_MODELS.get("EPR")        # -> the class
    P_MODELS.get("EPX")        # KeyError: unknown p_models 'EPX'; did you mean 'EPR'? valid: AP, EPR
    TASKS.alias("llada_gsm8k", "gsm8k")   # another name for a registered one (the seed's names)

`mdm list <kind>` prints `get_registry(kind).names()`. The builtin engines and tasks are imported by
name (`load_builtins`), so this module imports nothing from them.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Iterator

# The kinds the CLI knows about; get_registry creates any other kind on demand (for user plugins).
KINDS = ("tasks", "engines", "p_models", "samplers", "schemas")
BUILTIN_MODULES = ("mdm.tasks", "mdm.engines.llada_plus")


class UnknownNameError(KeyError):
    """An unknown registry name; str() is the human-readable message."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0])


class AutoImportError(ModuleNotFoundError):
    """`--auto_import` / `auto_import:` named a module that cannot be imported; str() is one line."""


class Registry:
    """A name -> object mapping that refuses duplicates and explains unknown names. Aliases are other
    names for registered entries (`canonical` maps them back); `names()` lists the entries only."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, obj: object = None) -> Any:
        """Register `obj` under `name`; without `obj`, return a decorator."""
        if obj is None:
            return lambda o: self.register(name, o)
        if name in self._entries and self._entries[name] is not obj:
            raise ValueError(f"{self.kind} name {name!r} is already registered (by {self._entries[name]!r})")
        self._entries[name] = obj
        return obj

    def alias(self, alias: str, name: str) -> None:
        """Make `alias` another name for the registered `name`."""
        if alias in self._entries or self._aliases.get(alias, name) != name:
            raise ValueError(f"{self.kind} name {alias!r} is already taken")
        self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        """The registered name `name` stands for (itself unless it is an alias)."""
        return self._aliases.get(name, name)

    def aliases(self) -> dict[str, str]:
        """{alias: registered name}."""
        return dict(sorted(self._aliases.items()))

    def get(self, name: str) -> Any:
        name = self.canonical(name)
        if name not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        valid = self.names()
        hint = difflib.get_close_matches(str(name), valid + list(self._aliases), n=1)
        did = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"unknown {self.kind} {name!r}{did} valid: {', '.join(valid) or '(none registered)'}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return self._aliases.get(name, name) in self._entries if isinstance(name, str) else False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


_REGISTRIES: dict[str, Registry] = {}


def get_registry(kind: str) -> Registry:
    """The process-wide registry of `kind`, created on first use."""
    if kind not in _REGISTRIES:
        _REGISTRIES[kind] = Registry(kind)
    return _REGISTRIES[kind]


def auto_import(modules: list[str] | tuple[str, ...]) -> None:
    """Import modules by name so that they register themselves (`--auto_import`); AutoImportError, one
    line naming the module (or the module it needs), when one cannot be found."""
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if isinstance(e, AutoImportError):
                raise
            if e.name and mod != e.name and not mod.startswith(e.name + "."):
                raise AutoImportError(f"--auto_import {mod}: it imports {e.name}, which is not installed",
                                      name=e.name) from None
            raise AutoImportError(f"--auto_import {mod}: no module named {e.name or mod} (is it on PYTHONPATH, "
                                  f"or installed?)", name=e.name) from None


def load_builtins() -> None:
    """Register the builtin tasks, engines, p_models and samplers."""
    auto_import(BUILTIN_MODULES)


def registered(kind: str) -> Callable[[str], Any]:
    """Shortcut: `registered("tasks")("gsm8k")` == `get_registry("tasks").get("gsm8k")`."""
    return get_registry(kind).get

"""House rules (issue #23) checked on the source tree, without importing it.

    pytest tests/test_house_rules.py

- no `_private` name imported from another mdm module (`from mdm.x import _helper`, or a relative import):
  what two modules share is public, in the module that owns it;
- no module under src/ longer than MAX_LINES lines, no function longer than MAX_FUNCTION_LINES;
- one training loop: `objective.loss(` is called in exactly one place (the Trainer);
- at most MAX_ANY_PARAMS parameters typed `Any` in src/ (signatures name what they take).

Names from outside mdm (Ray, torch) are not ours to rename; dunders (`__version__`) are not private.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("src", "experiments")
MAX_LINES = 300
MAX_FUNCTION_LINES = 80
MAX_ANY_PARAMS = 40


def _py_files(*roots: str) -> list[Path]:
    return sorted(p for root in roots for p in (REPO / root).rglob("*.py"))


def private_imports(path: Path, root: Path = REPO) -> list[str]:
    """`file:line name (from module)` for each private name `path` imports from an mdm or relative module
    (the file named relative to `root`), in line order."""
    tree = ast.parse(path.read_text(), filename=str(path))
    hits: list[tuple[int, str]] = []
    for node in ast.walk(tree):  # walk: imports inside functions count as much as top-level ones
        if not isinstance(node, ast.ImportFrom):
            continue
        module = node.module or ""
        if not (node.level > 0 or module == "mdm" or module.startswith("mdm.")):
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                where = "." * node.level + module
                hits.append((node.lineno, f"{path.relative_to(root)}:{node.lineno} {alias.name} (from {where})"))
    return [h for _, h in sorted(hits)]


def test_no_private_names_imported_across_modules():
    hits = [h for p in _py_files(*ROOTS) for h in private_imports(p)]
    assert not hits, ("private names imported from other mdm modules (make them public where they live, or "
                      "move the shared code to a public module):\n  " + "\n  ".join(hits))


def test_no_module_over_the_line_limit():
    counts = {p: len(p.read_text().splitlines()) for p in _py_files("src")}
    over = [f"{p.relative_to(REPO)}: {n} lines" for p, n in sorted(counts.items(), key=lambda kv: -kv[1])
            if n > MAX_LINES]
    assert not over, f"modules over {MAX_LINES} lines (split them):\n  " + "\n  ".join(over)


def test_the_checker_sees_multi_line_relative_and_nested_imports(tmp_path):
    # The rule's own test: a checker that finds nothing would pass the test above vacuously.
    src = tmp_path / "m.py"
    src.write_text("from mdm.a import (b,\n    _c)\nfrom . import _d\nfrom mdm.e import __version__, f as _g\n"
                   "from ray.x import _h\n\ndef k():\n    from mdm.i import _j\n")
    hits = [h.split(" ", 1)[1] for h in private_imports(src, tmp_path)]
    assert hits == ["_c (from mdm.a)", "_d (from .)", "_j (from mdm.i)"]



def _functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_over_the_line_limit():
    over = [f"{p.relative_to(REPO)}:{f.lineno} {f.name}: {f.end_lineno - f.lineno + 1} lines"
            for p in _py_files("src") for f in _functions(p) if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n  " + "\n  ".join(over)


def loss_call_sites(paths: list[Path], root: Path = REPO) -> list[str]:
    """`file:line` of each call `<something>.objective.loss(...)` or `objective.loss(...)` (code, not text)."""
    sites = []
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text(), filename=str(p))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "loss"
                    and ast.unparse(node.func.value).split(".")[-1] == "objective"):
                sites.append(f"{p.relative_to(root)}:{node.lineno}")
    return sites


def test_one_training_loop_calls_the_objective():
    sites = loss_call_sites(_py_files(*ROOTS))
    assert [s.split(":")[0] for s in sites] == ["src/mdm/platform/train/trainer.py"], (
        f"objective.loss is called at {sites}: step the objective through mdm.platform.train.trainer.Trainer")


def any_params(paths: list[Path], root: Path = REPO) -> list[str]:
    """`file:line function(param)` for each parameter (*args and **kwargs too) annotated exactly `Any`."""
    hits = []
    for p in paths:
        for f in _functions(p):
            a = f.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, *(x for x in (a.vararg, a.kwarg) if x)]:
                if arg.annotation is not None and ast.unparse(arg.annotation).strip("'\"") == "Any":
                    hits.append(f"{p.relative_to(root)}:{f.lineno} {f.name}({arg.arg})")
    return hits


def test_few_parameters_typed_any():
    hits = any_params(_py_files("src"))
    assert len(hits) <= MAX_ANY_PARAMS, (f"{len(hits)} parameters typed Any (at most {MAX_ANY_PARAMS}; name the "
                                         f"type: RunConfig, a section, torch.nn.Module, ...):\n  " + "\n  ".join(hits))


def test_the_checkers_see_loss_calls_and_any_params(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from typing import Any\n\ndef f(a: Any, *b: 'Any', c: int = 0, **d: Any):\n"
                   "    self.objective.loss(m, b, g)\n    objective.loss(m)\n    other.loss(m)\n")
    assert loss_call_sites([src], tmp_path) == ["m.py:4", "m.py:5"]
    assert any_params([src], tmp_path) == ["m.py:3 f(a)", "m.py:3 f(b)", "m.py:3 f(d)"]

"""The `mdm` command line: `mdm train|tune|infer|score|preprocess|generate|list|config ...`.

    mdm train --config base.yaml --config overlay.yaml --set train.lr=1e-5 [--dump_config]
    mdm list p_models
    mdm config --config base.yaml          # print the merged config (same as --dump_config)

Each subcommand's work lives in the module that owns it; this file only dispatches, so `mdm --help`
starts fast and the platform never imports an engine or a task pack by module path.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Optional, Sequence

from mdm.platform.config import ConfigError, add_config_args, config_from_args, config_or_dump, dump_config
from mdm.platform.registry import KINDS, UnknownNameError, get_registry, load_builtins

# subcommand -> (owning module, help). The module's `main(argv) -> int` parses its own arguments.
DELEGATED = {
    "tune": ("mdm.platform.tune", "run a Ray Tune sweep: --config ... --sweep sweep.yaml"),
    "infer": ("mdm.platform.batch_infer", "batch inference + scoring on Ray Data: --task --model --out"),
    "score": ("mdm.tasks.harness", "score a predictions JSONL: --task --pred [--gt] [--out]"),
    "preprocess": ("mdm.tasks.preprocess", "task data -> processed JSONL {input_ids, prompt_length}"),
    "generate": ("mdm.engines.llada_plus.generate_cli", "sample from a model: --model DIR --prompt TEXT"),
}


def _train(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="mdm train", description="Train on Ray (embedded or cluster).")
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_or_dump(args)
    if cfg is None:
        return 0
    return _delegate("mdm.platform.trainer", "train", cfg)


def _config(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="mdm config", description="Print the merged, defaulted config.")
    add_config_args(parser)
    args = parser.parse_args(argv)
    sys.stdout.write(dump_config(config_from_args(args)))
    return 0


def _list(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="mdm list", description="Print registered names.")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--auto_import", action="append", default=[], metavar="MODULE")
    args = parser.parse_args(argv)
    load_builtins()
    from mdm.platform.registry import auto_import

    auto_import(args.auto_import)
    for name in get_registry(args.kind).names():
        print(name)
    return 0


def _delegate(module: str, cmd: str, arg: object) -> int:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            print(f"mdm {cmd}: not available in this version yet ({module} is not built)", file=sys.stderr)
            return 2
        raise
    fn: Callable[[object], Optional[int]] = getattr(mod, "run" if cmd == "train" else "main")
    return int(fn(arg) or 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": "train LLaDA+ on Ray with DeepSpeed (the seed's flags)",
                **{k: v[1] for k, v in DELEGATED.items()},
                "list": "print registered tasks|engines|p_models|samplers",
                "config": "print the merged config as YAML"}
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mdm <command> [options]\n\nmasked diffusion LMs on Ray: train, sweep, evaluate.\n\ncommands:")
        for name, text in commands.items():
            print(f"  {name:<11} {text}")
        print("\n`mdm <command> --help` shows a command's options.")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "train":
            return _train(rest)
        if cmd == "config":
            return _config(rest)
        if cmd == "list":
            return _list(rest)
        if cmd in DELEGATED:
            return _delegate(DELEGATED[cmd][0], cmd, rest)
    except (ConfigError, UnknownNameError) as e:
        print(f"mdm {cmd}: error: {e}", file=sys.stderr)
        return 2
    print(f"mdm: unknown command {cmd!r}; commands: {', '.join(commands)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `mdm` command line: `mdm train|rl|tune|infer|score|preprocess|generate|lm-eval|plan|list|config ...`.

    mdm train --config base.yaml --config overlay.yaml --set train.lr=1e-5 [--dump_config]
    mdm list p_models
    mdm config --config experiments/configs/base.yaml   # print the merged config (same as --dump_config)

Each subcommand's argument parsing lives in `mdm.platform.commands.<name>` (or the task package for `score`
and `preprocess`), its work in the component it runs; this file only dispatches, so `mdm --help` starts
fast and the platform never imports an engine or a task pack by module path.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from typing import Callable, Optional, Sequence

from mdm.platform.config_ops import dump_config
from mdm.platform.config_args import add_config_args, config_from_args
from mdm.platform.fields import ConfigError
from mdm.platform.registry import KINDS, AutoImportError, UnknownNameError, get_registry, load_builtins

# subcommand -> (owning module, help). The module's `main(argv) -> int` parses its own arguments.
DELEGATED = {
    "train": ("mdm.platform.commands.train", "train LLaDA+ on Ray with DeepSpeed (the seed's flags)"),
    "rl": ("mdm.platform.commands.rl", "GRPO on verifiable rewards: rollouts on Ray actors, learning on Ray Train"),
    "tune": ("mdm.platform.commands.tune", "run a Ray Tune sweep: --config ... --sweep sweep.yaml"),
    "infer": ("mdm.platform.commands.infer", "batch inference + scoring on Ray Data: --task --model --out"),
    "score": ("mdm.tasks.harness", "score a predictions JSONL: --task --pred [--gt] [--out]"),
    "preprocess": ("mdm.tasks.preprocess", "task data -> processed JSONL {input_ids, prompt_length}"),
    "generate": ("mdm.platform.commands.generate", "sample from a model: --model DIR --prompt TEXT"),
    "tracking-server": ("mdm.platform.commands.tracking_server", "MLflow server for a cluster head (127.0.0.1)"),
    "tracking": ("mdm.platform.commands.tracking", "tracking sync RUN_DIR: ship a run's tracking spool"),
    "lm-eval": ("mdm.platform.commands.lm_eval", "lm-eval's CLI with --model mdm registered (extra: lm_eval)"),
    "plan": ("mdm.platform.commands.plan", "will it fit? memory per GPU: --config ... --gpu-mem 80|h100 --gpus N"),
}


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
    reg = get_registry(args.kind)
    for name in reg.names():
        print(name)
    for alias, name in reg.aliases().items():
        print(f"{alias} -> {name}")
    return 0


def _delegate(module: str, argv: Sequence[str]) -> int:
    fn: Callable[[Sequence[str]], Optional[int]] = importlib.import_module(module).main
    return int(fn(argv) or 0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {**{k: v[1] for k, v in DELEGATED.items()},
                "list": "print registered tasks|engines|p_models|samplers|schemas",
                "config": "print the merged config as YAML"}
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: mdm <command> [options]\n\nmasked diffusion LMs on Ray: train, sweep, evaluate.\n\ncommands:")
        for name, text in commands.items():
            print(f"  {name:<16} {text}")
        print("\n`mdm <command> --help` shows a command's options.")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "config":
            return _config(rest)
        if cmd == "list":
            return _list(rest)
        if cmd in DELEGATED:
            return _delegate(DELEGATED[cmd][0], rest)
    except (ConfigError, UnknownNameError, AutoImportError) as e:
        print(f"mdm {cmd}: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # lm-eval is an optional extra; its import error says how to install it
        if cmd != "lm-eval":
            raise
        print(f"mdm {cmd}: error: {e}", file=sys.stderr)
        return 2
    print(_unknown_command(cmd, commands), file=sys.stderr)
    return 2


def _unknown_command(cmd: str, commands: Sequence[str]) -> str:
    """The error for a mistyped subcommand: the closest one when there is one (a typo like `trian`), else the
    list, so the user never has to guess what `mdm` accepts."""
    close = difflib.get_close_matches(cmd, list(commands), n=1)
    if close:
        return f"mdm: unknown command {cmd!r}; did you mean {close[0]!r}?"
    return f"mdm: unknown command {cmd!r}; commands: {', '.join(commands)}"


if __name__ == "__main__":
    sys.exit(main())

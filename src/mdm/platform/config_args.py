"""The config flags every entry point shares, and the "merge, print on --dump_config, run nothing" rule.

    parser = argparse.ArgumentParser(prog="mdm train")
    add_config_args(parser)                 # --config YAML (repeatable), --set KEY=VALUE, --auto_import, --dump_config
    cfg = config_or_dump(parser.parse_args(argv), files_before=preset_files)
    if cfg is None:                         # --dump_config printed the merged config
        return 0

`mdm train|tune|infer|generate|config` and the scripts in experiments/ all use these, so the seed's flags
mean the same everywhere. On a cluster `MDM_STORAGE_PATH` (set by the cluster/ configs) is the storage root,
`ray.storage_path`, of every job: above the YAML files, below --set.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional, Sequence

from mdm.platform.config import load_config
from mdm.platform.config_ops import dump_config
from mdm.platform.hub import apply_hub_mirror
import argparse

# The storage root of a cluster (`s3://bucket/mdm`, an NFS mount), set once in the cluster's environment
# (cluster/ configs): every job's `ray.storage_path` unless its --set says otherwise.
STORAGE_ENV = "MDM_STORAGE_PATH"


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """The seed's config flags: --config, --set, --auto_import, --dump_config."""
    parser.add_argument("--config", action="append", default=[], metavar="YAML",
                        help="YAML config file; repeat to overlay (later files win)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="dotted override parsed as YAML, e.g. --set train.lr=1e-5 (repeatable)")
    parser.add_argument("--auto_import", action="append", default=[], metavar="MODULE",
                        help="import MODULE first so it can register tasks, p_models, samplers (runs its code)")
    parser.add_argument("--dump_config", action="store_true",
                        help="print the merged, defaulted config as YAML and exit")


def environment_overrides() -> list[str]:
    """Overrides a cluster sets for every job: `MDM_STORAGE_PATH` -> `ray.storage_path` (the storage root)."""
    root = os.environ.get(STORAGE_ENV, "").strip()
    return [f"ray.storage_path={root}"] if root else []


def config_from_args(args: argparse.Namespace, files_before: Sequence[str] = (), overrides_before: Sequence[str] = ()) -> Any:
    """`files_before` + `--config` files merged in order, then the environment's (`environment_overrides`),
    then `overrides_before`, then `--set` (wins).
    The config's `china` switch takes effect here, before anything can download (`mdm.platform.hub`)."""
    cfg = load_config([*files_before, *args.config], [*environment_overrides(), *overrides_before, *args.overrides],
                      args.auto_import)
    apply_hub_mirror(cfg)
    return cfg


def config_or_dump(args: argparse.Namespace, files_before: Sequence[str] = (), overrides_before: Sequence[str] = ()) -> Optional[Any]:
    """The merged config of `add_config_args` flags, or None after printing it when `--dump_config` was given.

    Every entry point starts with `cfg = config_or_dump(args)` and returns 0 when it is None, so
    `--dump_config` means the same everywhere: merge, validate, print, run nothing."""
    cfg = config_from_args(args, files_before, overrides_before)
    if args.dump_config:
        sys.stdout.write(dump_config(cfg))
        return None
    return cfg

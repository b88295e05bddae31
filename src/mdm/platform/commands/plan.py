"""`mdm plan`: will a training config fit its GPUs? Prints the memory per GPU, the verdict, and the smallest
changes that would fit (mdm.platform.train.memory_plan, plan_advice).

    mdm plan --config experiments/configs/base.yaml --gpu-mem 80 --gpus 1
    mdm plan --config experiments/configs/base.yaml --config experiments/configs/llada_8b.yaml --gpu-mem h100 \\
        --set model.lora.r=16

`--gpu-mem` takes GiB per GPU or a card (`gpu_cards.CARDS`: a100-40, a100-80 (a80), h100, h200, l4, l40s, 4090,
...; their memory as sold, read as GiB; Ray's spelling too: A100-80G); `--gpus` defaults to `ray.num_workers`
(one GPU per training worker). Nothing is built or downloaded: the architecture comes from the config
(`train.model: tiny`) or the checkpoint's config.json; a tiny model's vocabulary from `model.vocab_size`, else
`data.tokenizer`'s length. Exit status: 0 fits, 1 does not fit, 2 a mistake in the arguments or the config.
`mdm train` prints the same plan in one line before a GPU run and refuses one that does not fit unless
`--force` (mdm.platform.train.plan_check).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Optional, Sequence

from mdm.platform.config_args import add_config_args, config_or_dump
from mdm.platform.fields import ConfigError
from mdm.platform.registry import UnknownNameError
from mdm.platform.train.gpu_cards import CARDS, card_gib

if TYPE_CHECKING:
    from mdm.platform.config import RunConfig


def gpu_gib(value: str) -> float:
    """`--gpu-mem`: a number of GiB or a card name; argparse.ArgumentTypeError naming the cards otherwise."""
    card = card_gib(value)
    if card is not None:
        return card
    name = value.strip().lower()
    try:
        gib = float(name.removesuffix("gib").removesuffix("gb"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither GiB nor a card; cards: {', '.join(CARDS)}") from None
    if gib <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: GPU memory must be > 0 GiB")
    return gib


def tokenizer_vocab(path: Optional[str], trust_remote_code: bool) -> tuple[Optional[int], Optional[str]]:
    """The length of `data.tokenizer` (a tiny model's vocabulary), or None and why not."""
    if not path:
        return None, None
    from mdm.platform.tokenizer import load_tokenizer

    try:
        return len(load_tokenizer(path, trust_remote_code)), None
    except (OSError, ValueError) as e:
        return None, f"data.tokenizer {path}: not readable ({str(e).splitlines()[0]})"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mdm plan", description=__doc__.split("\n")[0])
    p.add_argument("--gpu-mem", "--gpu_mem", dest="gpu_mem", type=gpu_gib, required=True, metavar="GIB|CARD",
                   help=f"memory per GPU in GiB, or a card: {', '.join(CARDS)}")
    p.add_argument("--gpus", type=int, help="GPUs to train on (default ray.num_workers)")
    add_config_args(p)
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        cfg = config_or_dump(args)
        if cfg is None:
            return 0
        return run(cfg, args.gpu_mem, args.gpus if args.gpus is not None else cfg.ray.num_workers)
    except (ConfigError, UnknownNameError, ValueError) as e:
        print(f"mdm plan: error: {e}", file=sys.stderr)
        return 2


def run(cfg: RunConfig, gpu_mem: float, gpus: int) -> int:
    """Print the plan of `cfg` and, when it does not fit, the suggestions; 0 fits, 1 not."""
    from mdm.platform.train.memory_plan import plan_memory
    from mdm.platform.train.plan_advice import report, suggestions

    vocab, why = (None, None)
    if cfg.train.model == "tiny":  # only a tiny model reads its vocabulary from the tokenizer
        vocab, why = tokenizer_vocab(cfg.data.tokenizer, cfg.model.trust_remote_code)
    plan = plan_memory(cfg, gpus=gpus, gpu_gib=gpu_mem, vocab_size=vocab)
    print(report(plan))
    if why:
        print(f"note: {why}")
    if plan.fits:
        return 0
    found = suggestions(cfg, plan, vocab)
    print("changes that would fit (each with the planner's total per GPU):" if found else
          "no change of one or two kinds fits; try a larger GPU")
    for s in found:
        print(s.line())
    return 1


if __name__ == "__main__":
    sys.exit(main())

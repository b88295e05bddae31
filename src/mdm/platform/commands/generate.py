"""`mdm generate`: sample from a saved model for a few prompts (a smoke check of a checkpoint).

    mdm generate --model outputs/run/final --prompt "What is 2+3?" --prompt "7*6=" \\
        --set sampler.name=fast --set sampler.threshold=0.9 [--config sampler.yaml] [--seed 0] [--device cuda]
    mdm generate --model BASE_DIR --adapter outputs/run-lora/final --prompt "7*6="   # a LoRA run's adapter on top

The model directory holds `config.json` + safetensors and a tokenizer (`save_pretrained` of both); the model is
built by the config's engine (`engine`, default llada_plus) and sampled through the one generation path
(`mdm.platform.infer.generation.generate`). Prompts
are laid out as training laid them out: the tokenizer's chat template when it has one, else the text and a
newline (`--no_chat_template` sends them raw). `--adapter` (a directory, storage URI or `mlflow:<run>`, as
`mdm infer --adapter` takes it) is loaded on top of the model and merged (`mdm.platform.adapter.eval_model`).
Prints one generated text per prompt (`--json`: one JSON object per line with prompt and text).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional, Sequence

import torch

from mdm.platform.config_args import add_config_args, config_or_dump
from mdm.platform.tokenizer import load_tokenizer


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mdm generate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model directory (config.json, weights, tokenizer)")
    parser.add_argument("--adapter",
                        help="PEFT adapter on top of --model (a LoRA run's export): dir | URI | mlflow:<run>")
    parser.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed for temperature > 0 / random remasking")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--no_chat_template", action="store_true", help="send prompts raw (no template, no newline)")
    parser.add_argument("--json", action="store_true", help="print JSON lines {prompt, text}")
    add_config_args(parser)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    cfg = config_or_dump(args)
    if cfg is None:
        return 0
    if not os.path.isdir(args.model):
        print(f"mdm generate: error: --model {args.model}: not a directory", file=sys.stderr)
        return 2

    from mdm.platform.adapter import eval_model
    from mdm.platform.infer.generation.generate import generate
    from mdm.platform.infer.model_source import ModelSourceError, resolve_model
    from mdm.platform.registry import get_registry

    spec = get_registry("engines").get(cfg.engine)
    try:
        tokenizer = load_tokenizer(args.model, cfg.model.trust_remote_code)
        adapter = resolve_model(args.adapter, tracking_uri=cfg.tracking.tracking_uri, export_root=cfg.train.output_dir,
                                adapter=True).path if args.adapter else None
        model = eval_model(spec, cfg.model, args.model, tokenizer, adapter).to(args.device)
    except (OSError, ValueError) as e:  # a tokenizer pointing at custom code (refused), an adapter that does not fit
        print(f"mdm generate: error: {e}", file=sys.stderr)
        return 2
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    t0 = time.perf_counter()
    texts = generate(model, spec, cfg.sampler, args.prompt, tokenizer=tokenizer, generator=generator,
                     chat_template=not args.no_chat_template).texts or []
    for prompt, text in zip(args.prompt, texts):
        print(json.dumps({"prompt": prompt, "text": text}) if args.json else text)
    print(f"[{cfg.sampler.name}] {len(texts)} prompt(s) in {time.perf_counter() - t0:.2f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

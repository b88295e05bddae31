"""`mdm lm-eval`: lm-eval's own command line, with this platform's models registered as `--model mdm`.

    pip install -e ".[lm_eval]"
    mdm lm-eval --model mdm --model_args pretrained=outputs/arithmetic/model,likelihood.mc_num=128 \
        --tasks arc_challenge --device cuda --batch_size 16
    mdm lm-eval --model mdm --model_args pretrained=DIR,config=experiments/configs/arithmetic.yaml,sampler.steps=16 \
        --include_path my_tasks/ --tasks my_mc_task,my_gen_task --device cpu --output_path results/

Every argument after `lm-eval` is lm-eval's (`lm_eval --help`); this command only imports this module first, so
that the `@register_model("mdm")` below has run: lm-eval 0.4 finds no third-party model by itself (its
`--include_path` adds tasks, not models). From Python, `import mdm.platform.commands.lm_eval` and then
`lm_eval.simple_evaluate(model="mdm", model_args="pretrained=DIR", ...)`.

`--model_args` of `mdm` (comma-separated key=value, as lm-eval parses them):
- `pretrained` (required unless `adapter` records its base): an exported HF directory, a Ray Train
  run/checkpoint directory, a hub id or `mlflow:<run_id>` (`mdm infer --model` takes the same);
- `adapter`: a PEFT adapter (a LoRA run's export) loaded on top of `pretrained` and merged, in the same forms
  (`mdm infer --adapter`); without `pretrained`, the base the adapter records;
- `config`: YAML files of this platform's config, `:`-separated, merged in order (the `engine`, `model`,
  `sampler` and `likelihood` sections are used);
- any dotted config key (`sampler.steps=64`, `likelihood.mc_num=128`, `likelihood.cfg_scale=0.5`), applied last,
  checked like `--set` (a wrong key names the nearest valid one);
- `seed` (0), `add_bos_token` (false): see `mdm.platform.infer.likelihood.lm_eval_model`.
lm-eval's `--device` (its default is cuda:0: pass `--device cpu` on a CPU machine) and `--batch_size` (prompts
per sampler call in `generate_until`; `auto` means 16) are used; `--max_batch_size` is not (the likelihood
hook packs forwards under `likelihood.max_tokens_per_forward`).
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

from mdm.platform.config import load_config
from mdm.platform.infer.likelihood.lm_eval_model import HarnessModel  # first: says how to install lm-eval when it is missing
from mdm.platform.adapter import eval_model
from mdm.platform.infer.pool import resolve_sources
from mdm.platform.registry import get_registry
from mdm.platform.tokenizer import load_tokenizer

from lm_eval.api.registry import register_model  # noqa: E402  (after the install hint above)


def _override(key: str, value: object) -> str:
    """A `--set` string for a value lm-eval already parsed (None -> null, bools as YAML)."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    return f"{key}={value}"


def _device(device: Optional[str]) -> str:
    import torch

    device = device or "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device here (lm-eval's default is cuda:0); pass --device cpu")
    return device


@register_model("mdm")
class MDMLM(HarnessModel):
    """The `mdm` model of lm-eval: built from `--model_args` (see the module docstring)."""

    def __init__(self, pretrained: Optional[str] = None, config: Optional[str] = None, adapter: Optional[str] = None,
                 seed: int = 0, add_bos_token: bool = False,
                 device: Optional[str] = None, batch_size: int | str = 16, max_batch_size: Optional[int] = None,
                 **overrides: object) -> None:
        del max_batch_size  # lm-eval passes it; likelihood.max_tokens_per_forward bounds memory instead
        bad = [k for k in overrides if "." not in k]
        if bad:
            raise ValueError(f"--model_args: unknown argument(s) {', '.join(bad)} (mdm takes pretrained, adapter, "
                             f"config, seed, add_bos_token and dotted config keys such as sampler.steps or "
                             f"likelihood.mc_num)")
        files = [f for f in (str(config).split(":") if config else []) if f]
        sets = [_override(k, v) for k, v in overrides.items()]
        sets += [_override("eval.adapter", adapter)] if adapter else []
        cfg = load_config(files, sets)
        src = resolve_sources(cfg, str(pretrained) if pretrained else None)
        spec = get_registry("engines").get(cfg.engine)
        tokenizer = load_tokenizer(src.path, cfg.model.trust_remote_code)
        model = eval_model(spec, cfg.model, src.path, tokenizer, src.adapter.path if src.adapter else None)
        model = model.to(_device(device))
        size = 16 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else int(batch_size)
        super().__init__(model, tokenizer, spec, cfg.sampler, getattr(cfg, "likelihood", None), seed=int(seed),
                         batch_size=size, add_bos_token=bool(add_bos_token))
        self.cfg = cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run lm-eval's command line with `argv` (the `mdm` model registered)."""
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    except SystemExit as e:  # argparse --help / errors
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())

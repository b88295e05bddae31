"""An lm-eval (lm-evaluation-harness 0.4.x) language model over any engine with likelihood hooks.

    from mdm.platform.infer.likelihood.lm_eval_model import HarnessModel
    lm = HarnessModel(model, tokenizer, spec, cfg.sampler, cfg.likelihood, seed=0, batch_size=16)
    lm_eval.simple_evaluate(model=lm, tasks=["my_task"], task_manager=TaskManager(include_path="tasks/"))

On the command line the same class is registered with lm-eval as `mdm` (`mdm.platform.commands.lm_eval`, which
builds it from `--model_args`): `mdm lm-eval --model mdm --model_args pretrained=DIR --tasks ...`.
Importing this module imports lm-eval (the optional extra `pip install -e ".[lm_eval]"`).

The three request types:
- `loglikelihood` ((context, continuation) -> (log p, is_greedy)): the engine's `loglikelihood` hook with the
  `likelihood` section (for LLaDA+: the Monte Carlo lower bound, `likelihood.mc_num` masks; the standard errors
  are kept in `last_stderr`). Context and continuation are tokenized separately, without special tokens
  (`add_bos_token` puts BOS before the context), so a choice is scored exactly as `mdm infer --mode likelihood`
  scores it when the context is the task's rendered prompt. `is_greedy`: the hook's one-step greedy check.
- `loglikelihood_rolling` ((text,) -> log p): the engine's rolling hook, windows of `likelihood.window`
  tokens with `likelihood.context` tokens of context, the first conditioned on BOS (else EOS, else nothing).
- `generate_until` ((context, gen_kwargs) -> text): the platform's one generation path (`generation.generate`)
  with the `sampler` section, `batch_size` prompts per call; the answer window is `sampler.gen_length` tokens
  (`max_gen_toks` does not change it); `temperature` (and `do_sample: false` = 0) from gen_kwargs override
  the section; the text is cut before the first `until` string.
Random draws: every hook call starts from a generator seeded with `seed`, and the engine seeds each item from
that draw and the item's tokens, so an item's estimate is the same in any batch or order (and equals what the
likelihood actors compute with the same `eval.seed`).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    import torch
    from mdm.platform.engine_api import EngineSpec, LikelihoodSection, SamplerSection

try:
    from lm_eval.api.model import LM
except ImportError as e:  # an optional extra
    raise ImportError(f"lm-eval is not installed ({e}): pip install -e '.[lm_eval]' (or pip install "
                      f"'lm-eval>=0.4')") from e

from mdm.platform.infer.generation.generate import generate

ITEMS_PER_CALL = 256  # likelihood requests per hook call: the hook packs their samples into shared forwards


class HarnessModel(LM):
    """lm-eval's `LM` over a built model, its tokenizer and the engine's spec."""

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, spec: EngineSpec, sampler_cfg: SamplerSection, likelihood_cfg: LikelihoodSection, *,
                 seed: int = 0, batch_size: int = 16, add_bos_token: bool = False) -> None:
        super().__init__()
        if spec.loglikelihood is None or likelihood_cfg is None:
            raise ValueError("this engine has no likelihood hooks (EngineSpec.loglikelihood): lm-eval's "
                             "loglikelihood requests cannot be scored")
        self.model, self.tokenizer, self.spec = model.eval(), tokenizer, spec
        self.sampler_cfg, self.likelihood_cfg = sampler_cfg, likelihood_cfg
        self.seed, self.batch_size, self.add_bos_token = seed, max(1, int(batch_size)), add_bos_token
        self.last_stderr: list[float] = []  # standard errors of the last loglikelihood call, in request order

    # ------------------------------------------------------------------ helpers
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _context(self, text: str) -> list[int]:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return ([bos] if self.add_bos_token and bos is not None else []) + self._encode(text)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "mdm")).replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    # ------------------------------------------------------------------ lm-eval's request types
    def loglikelihood(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        items = [(self._context(r.args[0]), self._encode(r.args[1])) for r in requests]
        out: list[tuple[float, bool]] = []
        self.last_stderr = []
        for lo in range(0, len(items), ITEMS_PER_CALL):
            chunk = items[lo:lo + ITEMS_PER_CALL]
            with torch.inference_mode():
                scores = self.spec.loglikelihood(self.model, chunk, self.likelihood_cfg, self._generator(),
                                                 greedy=True)
            out += [(float(s.value), bool(s.greedy)) for s in scores]
            self.last_stderr += [float(s.stderr) for s in scores]
        for r, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", r.args, res)
        return out

    def loglikelihood_rolling(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[float]:
        if self.spec.loglikelihood_rolling is None:
            raise ValueError("this engine has no loglikelihood_rolling hook")
        tok = self.tokenizer
        first = next((t for t in (getattr(tok, "bos_token_id", None), getattr(tok, "eos_token_id", None))
                      if t is not None), None)
        texts = [self._encode(r.args[0]) for r in requests]
        with torch.inference_mode():
            scores = self.spec.loglikelihood_rolling(self.model, texts, self.likelihood_cfg, self._generator(),
                                                     prefix=[] if first is None else [first])
        out = [float(s.value) for s in scores]
        for r, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, res)
        return out

    def _sampler_for(self, gen_kwargs: dict[str, Any]) -> Any:
        cfg = dataclasses.replace(self.sampler_cfg, batch_size=self.batch_size)
        if gen_kwargs.get("do_sample") is False:
            return dataclasses.replace(cfg, temperature=0.0)
        if "temperature" in gen_kwargs and hasattr(cfg, "temperature"):
            return dataclasses.replace(cfg, temperature=float(gen_kwargs["temperature"]))
        return cfg

    def generate_until(self, requests: Sequence[Any], disable_tqdm: bool = False) -> list[str]:
        out: list[Optional[str]] = [None] * len(requests)
        groups: dict[str, list[int]] = defaultdict(list)  # requests with the same gen_kwargs share calls
        for i, r in enumerate(requests):
            groups[repr(sorted((r.args[1] or {}).items()))].append(i)
        for idx in groups.values():
            kw = dict(requests[idx[0]].args[1] or {})
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            prompts = [self._context(requests[i].args[0]) for i in idx]
            with torch.inference_mode():
                res = generate(self.model, self.spec, self._sampler_for(kw), prompts, tokenizer=self.tokenizer,
                               generator=self._generator())
            for i, text in zip(idx, res.texts or []):
                for stop in until:
                    if stop and stop in text:
                        text = text[:text.index(stop)]
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return [t if t is not None else "" for t in out]

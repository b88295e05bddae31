"""The engine's memory arithmetic (memory.py) against live models, for `mdm plan`.

- parameter counts (all, trainable, trainable tensors, one block) equal those of the built model, full and with
  LoRA (all targets, a subset, with dropout); LLaDA-8B's equal a model built on the meta device (no memory);
  a checkpoint directory is read for its architecture;
- the activation estimate of a training micro-batch is within 30% of the measured peak on the tiny model
  (Normal and MIRROR, float32 and bfloat16, with and without gradient checkpointing, full and LoRA), and so is
  the no-grad forward's (evaluation, P-POTS estimation).

How the peak is measured (`LiveTensors`): a TorchDispatchMode sees every aten op of the step (the objective's
`diffusion_loss` forward at t = 1, every response token masked, which is the estimate's worst case, then
`backward`); each output whose storage is not one of the op's inputs' (views and in-place results are not new
memory) adds its storage's bytes when created and takes them away when the storage is freed (a weakref
finalizer on it). The peak of that running sum, leaving out the storages that end as parameter gradients (the
plan counts those as gradients), is the measured activation peak. Parameters and the optimizer are allocated
before the step and are not in it.

    pytest tests/engines/llada_plus/test_memory.py -q      # about 15 s
"""

from __future__ import annotations

import gc
import itertools
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mdm.engines.llada_plus.loss import diffusion_loss
from mdm.engines.llada_plus.memory import architecture, memory_knobs, model_memory, nograd_activations
from mdm.engines.llada_plus.model import LLaDAModelLM, llada_8b_config
from mdm.engines.llada_plus.model_build import build_model
from mdm.platform.config import load_config

V = 1024  # LLaDA's proportions: the vocabulary much wider than the MLP (126,464 vs 12,288)
TINY = ["model.d_model=64", "model.n_layers=3", "model.n_heads=4", "model.mlp_hidden_size=192",
        f"model.vocab_size={V}", f"model.mask_token_id={V - 1}", "model.eos_token_id=2", "model.pad_token_id=0",
        "train.batch_size_per_gpu=2", "train.max_len=32"]


class LiveTensors(TorchDispatchMode):
    """Bytes of the tensor storages created inside the `with` block, over time (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[int, int]] = []       # (+bytes at creation | -bytes at release, storage id)
        self.alive: dict[int, int] = {}               # data_ptr -> storage id
        self.ids = itertools.count()

    def _freed(self, ptr: int, ident: int, n: int) -> None:
        self.events.append((-n, ident))
        if self.alive.get(ptr) == ident:
            del self.alive[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr, n = storage.data_ptr(), storage.nbytes()
            if n == 0 or ptr in inputs or ptr in self.alive:
                continue
            ident = next(self.ids)
            self.alive[ptr] = ident
            self.events.append((n, ident))
            weakref.finalize(storage, self._freed, ptr, ident, n)
        return out

    def ids_of(self, tensors) -> set[int]:
        return {self.alive[p] for t in tensors if (p := t.untyped_storage().data_ptr()) in self.alive}

    def peak(self, leave_out: set[int] = frozenset()) -> int:
        cur = top = 0
        for n, ident in self.events:
            if ident not in leave_out:
                cur += n
                top = max(top, cur)
        return top


def measured_step(cfg, grad: bool = True) -> int:
    """Peak live bytes of one micro-batch (batch_size_per_gpu x max_len, every token a masked response token)."""
    torch.manual_seed(0)
    model = build_model(cfg.model, "tiny")
    model.train(grad)
    b, length = cfg.train.batch_size_per_gpu, cfg.train.max_len
    ids = torch.randint(3, V - 1, (b, length), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    mode = cfg.train.train_mode if grad else "Normal"
    gc.collect()
    with torch.set_grad_enabled(grad), LiveTensors() as live:
        loss, _ = diffusion_loss(model, batch, torch.ones(b), None, mask_id=V - 1, mode=mode,
                                 generator=torch.Generator().manual_seed(2))
        if grad:
            loss.backward()
        grads = live.ids_of(p.grad for p in model.parameters() if p.grad is not None)
    return live.peak(leave_out=grads)


@pytest.mark.parametrize("overrides", [
    [], ["train.train_mode=MIRROR"], ["model.dtype=bfloat16"], ["model.gradient_checkpointing=true"],
    ["model.dtype=bfloat16", "model.gradient_checkpointing=true", "train.train_mode=MIRROR"],
    ["model.lora.r=8"], ["model.lora.r=8", "model.gradient_checkpointing=true"],
    ["model.lora.r=8", "model.dtype=bfloat16"],
    ["model.lora.r=8", "model.lora.dropout=0.1", "model.lora.target_modules=[q_proj,v_proj,ff_out]"],
], ids=lambda o: ",".join(x.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + x.split("=", 1)[1] for x in o) or "full")
def test_step_activations_within_30_percent_of_the_measured_peak(overrides):
    cfg = load_config([], TINY + overrides)
    planned, measured = model_memory(cfg.model, cfg.train).activations, measured_step(cfg)
    assert 0.7 * measured <= planned <= 1.3 * measured, (planned, measured)


def test_checkpointing_lowers_the_measured_and_the_planned_peak_alike():
    plain, ckpt = (load_config([], TINY + ["train.batch_size_per_gpu=4"] + o)
                   for o in ([], ["model.gradient_checkpointing=true"]))
    mem = model_memory(plain.model, plain.train)
    assert mem.activations == mem.activations_plain and model_memory(ckpt.model, ckpt.train).activations == \
        mem.activations_checkpointed
    saved, planned_saved = measured_step(plain) - measured_step(ckpt), mem.activations_plain - \
        mem.activations_checkpointed
    assert saved > 0 and 0.7 * saved <= planned_saved <= 1.3 * saved, (planned_saved, saved)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_nograd_forward_within_30_percent(dtype):
    cfg = load_config([], TINY + [f"model.dtype={dtype}", "train.batch_size_per_gpu=8"])
    arch, _ = architecture(cfg.model, "tiny", None)
    planned = nograd_activations(arch, 8 * 32, 4 if dtype == "float32" else 2)
    measured = measured_step(cfg, grad=False)
    assert 0.7 * measured <= planned <= 1.3 * measured, (planned, measured)


@pytest.mark.parametrize("overrides", [[], ["model.lora.r=4"], ["model.lora.r=2", "model.lora.target_modules=[k_proj]"],
                                       ["model.lora.r=8", "model.lora.dropout=0.2"]])
def test_parameter_counts_equal_the_built_model(overrides):
    cfg = load_config([], TINY + overrides)
    mem = model_memory(cfg.model, cfg.train)
    model = build_model(cfg.model, "tiny")
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert mem.params == sum(p.numel() for p in model.parameters())
    assert (mem.trainable, mem.trainable_tensors) == (sum(p.numel() for p in trainable), len(trainable))
    block = model.get_base_model().model.transformer.blocks[0] if overrides else model.model.transformer.blocks[0]
    assert mem.largest_unit == sum(p.numel() for p in block.parameters())
    assert mem.weight_bytes == 4 and mem.weight_dtype == "float32"


def test_llada_8b_counts_equal_a_model_on_the_meta_device():
    cfg = load_config([], ["train.model=GSAI-ML/LLaDA-8B-Instruct", "model.dtype=bfloat16"])
    with torch.device("meta"):
        model = LLaDAModelLM(llada_8b_config())
    mem = model_memory(cfg.model, cfg.train, name_or_path="/nonexistent/GSAI-ML/LLaDA-8B-Instruct")
    assert mem.params == sum(p.numel() for p in model.parameters()) and mem.params > 8e9
    assert mem.weight_bytes == 2 and any("LLaDA-8B architecture" in n for n in mem.notes)
    with pytest.raises(ValueError, match="train.model /nonexistent/other: cannot read its config.json"):
        model_memory(cfg.model, cfg.train, name_or_path="/nonexistent/other")


def test_a_checkpoint_directory_is_read_for_its_architecture(tmp_path):
    cfg = load_config([], TINY)
    model = build_model(cfg.model, "tiny")
    model.save_pretrained(tmp_path / "ckpt")
    other = load_config([], ["model.d_model=8", "model.n_layers=1", "model.n_heads=2"])  # ignored for a checkpoint
    mem = model_memory(other.model, other.train, name_or_path=str(tmp_path / "ckpt"), precision="bf16")
    assert mem.params == sum(p.numel() for p in model.parameters()) and mem.weight_bytes == 2


def test_vocabulary_comes_from_the_section_the_tokenizer_or_is_assumed_aloud():
    cfg = load_config([], [x for x in TINY if not x.startswith("model.vocab_size")])
    assumed = model_memory(cfg.model, cfg.train)
    given = model_memory(cfg.model, cfg.train, vocab_size=V)
    assert given.params == model_memory(load_config([], TINY).model, cfg.train).params and not given.notes
    assert assumed.params - given.params == 2 * 64 * (126464 - V) and "126,464" in assumed.notes[0]


def test_knobs_offer_checkpointing_and_lora_ranks_least_drastic_first():
    assert memory_knobs({"model.gradient_checkpointing": False, "model.lora.r": 0}) == [
        [{"model.gradient_checkpointing": True}], [{"model.lora.r": 64}, {"model.lora.r": 16}, {"model.lora.r": 8}]]
    assert memory_knobs({"model.gradient_checkpointing": True, "model.lora.r": 16}) == [
        [{"model.lora.r": 8}, {"model.lora.r": 4}]]

"""`build_model` with `model.gradient_checkpointing` and `model.lora` (model_build.py, lora.py), on a tiny LLaDA.

- gradient checkpointing changes memory, not numbers: the gradients of the same loss (same weights, same masks)
  equal those without it, for a full model and for LoRA adapters (whose frozen base makes the checkpointed
  blocks' inputs need gradients of their own);
- LoRA adapts the blocks' Linear layers by their real names and never the output head; only the adapters
  require grad; a fresh adapter changes no output; a bad target name or value is an error naming the key.

    pytest tests/engines/llada_plus/test_model_build.py -q      # a few seconds
"""

from __future__ import annotations

import pytest
import torch

from mdm.engines.llada_plus.config import LORA_TARGETS
from mdm.engines.llada_plus.loss import diffusion_loss
from mdm.engines.llada_plus.model_build import build_model
from mdm.platform.config import load_config
from mdm.platform.fields import ConfigError

VOCAB, MASK = 64, 63
TINY = ["model.d_model=32", "model.n_layers=3", "model.n_heads=4", "model.mlp_hidden_size=96",
        f"model.vocab_size={VOCAB}", f"model.mask_token_id={MASK}", "model.eos_token_id=2", "model.pad_token_id=0"]


def model_for(overrides: list[str]) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(load_config([], TINY + overrides).model, "tiny")


def grads(model: torch.nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """Gradients of the diffusion loss on a fixed batch with fixed masks (t and masks from one seed)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, MASK, (4, 24), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    t = torch.rand(4, generator=g)
    model.train()
    loss, _ = diffusion_loss(model, batch, t, None, mask_id=MASK, mode=mode, generator=g)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("lora", [[], ["model.lora.r=4"]], ids=["full", "lora"])
@pytest.mark.parametrize("mode", ["Normal", "MIRROR"])
def test_gradient_checkpointing_gives_the_same_gradients(lora, mode):
    plain, ckpt = model_for(lora), model_for(lora + ["model.gradient_checkpointing=true"])
    assert ckpt.is_gradient_checkpointing and not plain.is_gradient_checkpointing
    if lora:  # give the adapters' B a value, so gradients reach A too
        for m in (plain, ckpt):
            torch.manual_seed(5)
            for n, p in m.named_parameters():
                if ".lora_B." in n:
                    p.data.normal_(0, 0.1)
    expected, got = grads(plain, mode), grads(ckpt, mode)
    assert set(got) == set(expected) and len(got) > 0
    for name in expected:
        assert float(expected[name].abs().max()) > 0, name  # every trained tensor gets a gradient
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-8, msg=name)


def test_lora_adapts_the_block_projections_by_name_and_not_the_head():
    from peft.tuners.lora import LoraLayer

    model = model_for(["model.lora.r=4", "model.lora.alpha=8"])
    adapted = sorted(n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LoraLayer))
    assert adapted == sorted(LORA_TARGETS * 3)  # each of the 7 projections in each of the 3 blocks
    head = model.get_base_model().get_output_embeddings()
    assert not isinstance(head, LoraLayer) and not head.weight.requires_grad
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    d, f, r = 32, 96, 4
    per_block = r * (4 * (d + d) + 2 * (d + f) + (f + d))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 3 * per_block
    ids = torch.randint(3, MASK, (2, 10))
    with torch.no_grad():  # a fresh adapter (B = 0) changes nothing
        torch.testing.assert_close(model(ids).logits, model_for([])(ids).logits, rtol=0, atol=0)


def test_lora_targets_a_subset():
    model = model_for(["model.lora.r=2", "model.lora.target_modules=[q_proj,v_proj]"])
    names = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"q_proj", "v_proj"}


@pytest.mark.parametrize("override, message", [
    ("model.lora.r=-2", "model.lora.r must be >= 0"),
    ("model.lora.alpha=0", "model.lora.alpha must be > 0"),
    ("model.lora.dropout=1.0", "model.lora.dropout must be in [0, 1)"),
    ("model.lora.rank=8", "unknown key model.lora.rank"),
])
def test_bad_lora_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        load_config([], TINY + ["model.lora.r=4", override])


def test_a_target_that_names_nothing_is_an_error_with_the_valid_names():
    with pytest.raises(ValueError, match=r"model.lora.target_modules: 'qproj' names no Linear layer .*"
                                         r"valid names: attn_out, ff_out, ff_proj, k_proj, q_proj, up_proj, v_proj"):
        model_for(["model.lora.r=4", "model.lora.target_modules=[qproj]"])


def test_model_section_from_a_plain_mapping_keeps_a_typed_lora_section():
    """A logged config's YAML (the MLflow pyfunc model, the sampler actors) rebuilds `model` from a dict."""
    from mdm.engines.llada_plus.config import LoRAConfig, ModelConfig

    cfg = ModelConfig(**{"d_model": 32, "lora": {"r": 4, "alpha": 8.0}})
    assert isinstance(cfg.lora, LoRAConfig) and (cfg.lora.r, cfg.lora.alpha) == (4, 8.0)
    with pytest.raises(ValueError, match="model.lora.r"):
        ModelConfig(**{"lora": {"r": -1}})

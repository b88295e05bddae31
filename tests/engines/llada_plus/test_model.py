"""The LLaDA model against the upstream reference outputs, plus padding, KV-cache and save/load behaviour.

Run: pytest tests/engines/llada_plus/test_model.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

from mdm.engines.llada_plus.config import ModelConfig
from mdm.engines.llada_plus.model import LLaDAConfig, LLaDAModelLM, llada_8b_config
from mdm.engines.llada_plus.model_build import build_model

# Logits of the oracle reach ~30 in magnitude; masked/cached attention sums in another order than the plain
# forward, so float32 rounding differs by a few ulps of that scale (~1e-5). 1e-4 is far below any real bug.
TOL = dict(atol=1e-4, rtol=1e-5)
FIXTURE = Path(__file__).resolve().parents[3] / ".." / "shared" / "fixtures" / "llada_reference"


# The fixture's logits (up to 27 in magnitude) carry float32 rounding of their own: the same weights evaluated
# in float64 differ from them by 5.7e-5, and float32 kernels differ by CPU (AVX2 here vs the machine that made
# the fixture), 1.9e-5 on an AVX2 EPYC. 1e-4 is twice the fixture's own error; RMSNorm eps 1e-6 instead of
# 1e-5 is already off by 1.1e-2, a wrong RoPE theta by 29.
LOGIT_ATOL = 1e-4


@pytest.fixture(scope="module")
def oracle() -> LLaDAModelLM:
    return LLaDAModelLM.from_pretrained(str(FIXTURE)).eval()


def test_oracle_logits_match_upstream(oracle: LLaDAModelLM) -> None:
    ref = load_file(str(FIXTURE / "forward.safetensors"))
    with torch.no_grad():
        logits = oracle(ref["input_ids"]).logits
    assert logits.dtype == torch.float32 and logits.shape == ref["logits"].shape
    torch.testing.assert_close(logits, ref["logits"], atol=LOGIT_ATOL, rtol=0)


def test_auto_classes_ignore_upstream_remote_code(tmp_path: Path) -> None:
    # Upstream checkpoints point auto_map at their own modeling file; our registration must win, no prompt.
    shutil.copy(FIXTURE / "model.safetensors", tmp_path / "model.safetensors")
    cfg = json.loads((FIXTURE / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_llada.LLaDAConfig",
                       "AutoModel": "modeling_llada.LLaDAModelLM"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert isinstance(AutoConfig.from_pretrained(str(tmp_path)), LLaDAConfig)
    ref = load_file(str(FIXTURE / "forward.safetensors"))
    for auto in (AutoModel, AutoModelForMaskedLM):
        model = auto.from_pretrained(str(tmp_path))
        assert isinstance(model, LLaDAModelLM)
        with torch.no_grad():
            torch.testing.assert_close(model(ref["input_ids"]).logits, ref["logits"], atol=LOGIT_ATOL, rtol=0)


def test_save_load_round_trip_keeps_upstream_names(oracle: LLaDAModelLM, tmp_path: Path) -> None:
    oracle.save_pretrained(str(tmp_path))
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert set(saved) == set(load_file(str(FIXTURE / "model.safetensors")))
    again = LLaDAModelLM.from_pretrained(str(tmp_path))
    assert again.config.mask_token_id == 255 and again.config.mlp_hidden_size == 160
    assert again.config.init_fn == "mitchell"  # unknown upstream keys survive
    ids = torch.randint(0, 255, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, oracle(ids).logits)


def test_padded_batch_equals_unpadded(oracle: LLaDAModelLM) -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(0, 255, (1, 13), generator=g), torch.randint(0, 255, (1, 7), generator=g)
    pad = 254
    with torch.no_grad():
        alone_a, alone_b = oracle(a).logits[0], oracle(b).logits[0]
        # left padding: positions restart at the first real token, as in the samplers
        ids = torch.cat((a, torch.cat((torch.full((1, 6), pad), b), 1)))
        mask = (torch.arange(13) >= torch.tensor([[0], [6]])).long()
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        out = oracle(ids, attention_mask=mask, position_ids=pos).logits
        torch.testing.assert_close(out[0], alone_a, **TOL)
        part = oracle(ids, attention_mask=mask, position_ids=pos, logits_slice=slice(8, 12)).logits
        torch.testing.assert_close(part, out[:, 8:12], atol=1e-6, rtol=1e-6)  # the head only where asked
        torch.testing.assert_close(out[1, 6:], alone_b, **TOL)
        # right padding with default positions
        ids = torch.cat((a, torch.cat((b, torch.full((1, 6), pad)), 1)))
        out = oracle(ids, attention_mask=mask.flip(1)).logits
        torch.testing.assert_close(out[1, :7], alone_b, **TOL)


def test_kv_cache_forward_equals_full_forward(oracle: LLaDAModelLM) -> None:
    ids = torch.randint(0, 255, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = oracle(ids, use_cache=True)
        kv = full.past_key_values
        assert len(kv) == 2 and kv[0][0].shape == (2, 4, 20, 16)
        lo, hi = 8, 14  # a block in the middle: cache on both sides of it (the dual cache's case)
        other = torch.cat((torch.arange(lo), torch.arange(hi, 20)))
        past = tuple((k[:, :, other], v[:, :, other]) for k, v in kv)
        pos = torch.arange(lo, hi).expand(2, -1)
        out = oracle(ids[:, lo:hi], position_ids=pos, past_key_values=past, use_cache=True)
        torch.testing.assert_close(out.logits, full.logits[:, lo:hi], **TOL)
        torch.testing.assert_close(out.past_key_values[1][0], kv[1][0][:, :, lo:hi], atol=1e-5, rtol=1e-5)
        # a masked-out past key must not count: masking the suffix equals a prefix-only cache
        pm = torch.zeros(2, 14, dtype=torch.long)
        pm[:, :lo] = 1
        masked = oracle(ids[:, lo:hi], position_ids=pos, past_key_values=past, past_attention_mask=pm).logits
        prefix = tuple((k[:, :, :lo], v[:, :, :lo]) for k, v in kv)
        only_prefix = oracle(ids[:, lo:hi], position_ids=pos, past_key_values=prefix).logits
        torch.testing.assert_close(masked, only_prefix, **TOL)


def test_build_tiny_and_gradient_checkpointing() -> None:
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=4, mlp_hidden_size=64, vocab_size=50, mask_token_id=49,
                      eos_token_id=48, pad_token_id=48)
    torch.manual_seed(0)
    model = build_model(cfg, "tiny")
    assert model.config.mask_token_id == 49 and model.config.vocab_size == 50
    ids = torch.randint(0, 49, (2, 9))
    model.train()
    model(ids).logits.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing_enable()  # recomputes the blocks in backward: same gradients
    assert all(block.gradient_checkpointing for block in model.model.transformer.blocks)
    model(ids).logits.square().mean().backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g)
    with pytest.raises(ValueError, match="model.vocab_size"):
        build_model(ModelConfig(), "tiny")


def test_bf16_forward_and_8b_preset() -> None:
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=4, mlp_hidden_size=64, vocab_size=40, mask_token_id=39,
                      eos_token_id=38, pad_token_id=38, dtype="bfloat16")
    model = build_model(cfg, "tiny")
    out = model(torch.randint(0, 39, (1, 5))).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    big = llada_8b_config()
    assert (big.d_model, big.n_layers, big.n_heads, big.mlp_hidden_size) == (4096, 32, 32, 12288)
    assert (big.vocab_size, big.mask_token_id, big.eos_token_id) == (126464, 126336, 126081)


def _word_tokenizer():  # a local tokenizer over 256 ids: t0..t253, <eos> 254, <mask> 255
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(254)} | {"<eos>": 254, "<mask>": 255}, "t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", mask_token="<mask>")


def test_build_model_from_tokenizer_and_checkpoint(oracle: LLaDAModelLM, tmp_path: Path) -> None:
    tokenizer = _word_tokenizer()
    tiny = build_model(ModelConfig(d_model=32, n_layers=1, n_heads=2, mlp_hidden_size=48), "tiny", tokenizer)
    c = tiny.config
    ids = (c.vocab_size, c.embedding_size, c.mask_token_id, c.eos_token_id, c.pad_token_id)
    assert ids == (256, 256, 255, 254, 254)
    oracle.save_pretrained(str(tmp_path))
    loaded = build_model(ModelConfig(dtype="bfloat16"), str(tmp_path))
    assert isinstance(loaded, LLaDAModelLM) and loaded.dtype == torch.bfloat16
    torch.testing.assert_close(loaded.model.transformer.ff_out.weight.float(),
                               oracle.model.transformer.ff_out.weight.bfloat16().float())


REMOTE_CONFIG = '''
from transformers import PretrainedConfig
class ToyConfig(PretrainedConfig):
    model_type = "toy_dlm"
    vocab: int = 16
'''
REMOTE_MODEL = '''
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput
from .configuration_toy import ToyConfig
class ToyModel(PreTrainedModel):
    config_class = ToyConfig
    def __init__(self, config):
        super().__init__(config)
        self.emb = torch.nn.Embedding(config.vocab, config.vocab)
        self.post_init()
    def forward(self, input_ids, **kw):
        return MaskedLMOutput(logits=self.emb(input_ids))
'''


def test_trust_remote_code_is_opt_in(tmp_path: Path) -> None:
    # another diffusion LM shipping its own code (written here, loaded through AutoModel's real path)
    (tmp_path / "configuration_toy.py").write_text(REMOTE_CONFIG)
    (tmp_path / "modeling_toy.py").write_text(REMOTE_MODEL)
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "toy_dlm", "vocab": 16, "mask_token_id": 15, "eos_token_id": 14, "pad_token_id": 14,
        "auto_map": {"AutoConfig": "configuration_toy.ToyConfig", "AutoModel": "modeling_toy.ToyModel"}}))
    torch.manual_seed(0)
    from safetensors.torch import save_file
    save_file({"emb.weight": torch.randn(16, 16)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="trust_remote_code"):
        build_model(ModelConfig(), str(tmp_path))
    model = build_model(ModelConfig(trust_remote_code=True), str(tmp_path))
    assert type(model).__name__ == "ToyModel" and model.config.mask_token_id == 15
    assert model(torch.tensor([[1, 2]])).logits.shape == (1, 2, 16)

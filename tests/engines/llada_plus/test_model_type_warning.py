"""An exported tiny LLaDA (model + tokenizer in one directory) loads without transformers' warning "You are
using a model of type `llada` to instantiate a model of type ``" (issue #23, item 9).

The warning came from AutoTokenizer: it reads the directory's config.json first, and in a process that had not
imported the LLaDA model code (the eval driver, each sampler actor) `llada` was unknown to AutoConfig, so it
fell back to the bare base config class. `mdm.platform.tokenizer.load_tokenizer` now has the engines register
their Auto classes first; a fresh process (a subprocess) is what shows it.

Run: pytest tests/engines/llada_plus/test_model_type_warning.py
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModel

from mdm.engines.llada_plus.model import LLaDAConfig, LLaDAModelLM
from mdm.platform.tokenizer import load_tokenizer

WARNING = "You are using a model of type"


def _word_tokenizer():  # a local tokenizer over 256 ids: t0..t253, <eos> 254, <mask> 255
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(254)} | {"<eos>": 254, "<mask>": 255}, "t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", mask_token="<mask>")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """What training exports: the model and its tokenizer in one directory."""
    out = tmp_path_factory.mktemp("export")
    cfg = LLaDAConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, mlp_hidden_size=64, vocab_size=256,
                      embedding_size=256, max_sequence_length=64, mask_token_id=255, eos_token_id=254)
    LLaDAModelLM(cfg).save_pretrained(out)
    _word_tokenizer().save_pretrained(out)
    return out


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_from_pretrained_in_process_warns_nothing(export_dir: Path) -> None:
    # transformers' loggers do not propagate to the root logger: collect on its own logger
    log = logging.getLogger("transformers")
    handler = _Collect()
    log.addHandler(handler)
    try:
        assert AutoConfig.from_pretrained(export_dir).model_type == "llada"
        assert isinstance(LLaDAModelLM.from_pretrained(export_dir), LLaDAModelLM)
        assert isinstance(AutoModel.from_pretrained(export_dir), LLaDAModelLM)
        assert load_tokenizer(str(export_dir)).mask_token == "<mask>"
    finally:
        log.removeHandler(handler)
    assert not [m for m in handler.messages if WARNING in m], handler.messages


def _fresh(code: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_tokenizer_of_an_export_in_a_fresh_process_warns_nothing(export_dir: Path) -> None:
    proc = _fresh("import sys\n"
                  "from mdm.platform.tokenizer import load_tokenizer\n"
                  f"tok = load_tokenizer({str(export_dir)!r})\n"
                  "assert 'mdm.engines.llada_plus.model' in sys.modules\n"
                  "print(tok.mask_token)")
    assert proc.stdout.strip() == "<mask>"
    assert WARNING not in proc.stderr, proc.stderr


def test_plain_autotokenizer_in_a_fresh_process_shows_the_cause(export_dir: Path) -> None:
    """The control: without the registration, transformers does warn (what the test above guards against)."""
    proc = _fresh("from transformers import AutoTokenizer\n"
                  f"AutoTokenizer.from_pretrained({str(export_dir)!r})")
    assert f"{WARNING} `llada` to instantiate a model of type ``" in proc.stderr

"""train_bpe saves a tokenizer AutoTokenizer loads; prompt/response layout with and without a chat template."""

import pytest
from transformers import AutoTokenizer

from mdm.platform.prompts import encode_prompt, render_prompt
from mdm.platform.tokenizer import load_tokenizer
from mdm.tasks.base import Example, Task
from mdm.tasks.tokenize import EOS_TOKEN, MASK_TOKEN, PAD_TOKEN, SIMPLE_CHAT_TEMPLATE, train_bpe

TEXTS = ["What is 23 + 45?", "23 + 45 = 68\n#### 68", "Tom has 12 apples and eats 4. How many left?"] * 30


@pytest.fixture(scope="module", params=[None, SIMPLE_CHAT_TEMPLATE], ids=["plain", "chat"])
def tok(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    assert train_bpe(TEXTS, str(out), vocab_size=300, chat_template=request.param) == str(out)
    return AutoTokenizer.from_pretrained(str(out))


def test_special_tokens(tok):
    assert tok.eos_token == EOS_TOKEN and tok.pad_token == PAD_TOKEN and tok.mask_token == MASK_TOKEN
    ids = {tok.eos_token_id, tok.pad_token_id, tok.mask_token_id}
    assert len(ids) == 3 and max(ids) < len(tok)
    # Specials survive as single tokens inside text.
    assert tok(f"a{MASK_TOKEN}b", add_special_tokens=False)["input_ids"].count(tok.mask_token_id) == 1


def test_layout_and_round_trip(tok):
    prompt, response = "What is 23 + 45?", "23 + 45 = 68\n#### 68"
    task = Task()
    ids, pl = task.encode_examples(tok, [Example(prompt, response, "", "0")])[0]
    assert ids[:pl] == encode_prompt(tok, prompt) == task.encode_prompt(tok, prompt)
    assert ids[-1] == tok.eos_token_id
    text = render_prompt(tok, prompt)
    if tok.chat_template:
        assert text.startswith("<|start_header_id|>user<|end_header_id|>\n\n" + prompt)
        assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    else:
        assert text == prompt + "\n"
    assert tok.decode(ids[:pl]) == text
    assert tok.decode(ids[pl:-1]) == response
    assert task.encode_examples(tok, [Example(prompt, response, "", "0"), Example("x", "y", "", "1")])[0] == (ids, pl)


def test_digits_are_single_tokens(tok):
    pieces = tok.convert_ids_to_tokens(tok("12345", add_special_tokens=False)["input_ids"])
    assert pieces == list("12345")


def test_load_tokenizer_error_names_the_path(tmp_path):
    with pytest.raises(OSError, match=str(tmp_path)):
        load_tokenizer(str(tmp_path))

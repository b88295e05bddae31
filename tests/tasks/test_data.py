"""Processed-JSONL schema: row validation, streaming reader with file:line errors or skip counts, collation."""

import json

import numpy as np
import pytest

from mdm.tasks.data import IGNORE_INDEX, ProcessedDataError, collate, read_processed, validate_row


@pytest.mark.parametrize("row, vocab, bad", [
    ({"input_ids": [1, 2, 3], "prompt_length": 1}, 10, None),
    ({"input_ids": [1, 2, 3], "prompt_length": 0}, None, None),
    ({"input_ids": [1, 2, 3]}, 10, "missing key(s) prompt_length"),
    ({"prompt_length": 1}, 10, "missing key(s) input_ids"),
    ({"input_ids": [], "prompt_length": 0}, 10, "non-empty"),
    ({"input_ids": "123", "prompt_length": 0}, 10, "non-empty list"),
    ({"input_ids": [1, 2.5], "prompt_length": 0}, 10, "input_ids[1]"),
    ({"input_ids": [1, True], "prompt_length": 0}, 10, "input_ids[1]"),
    ({"input_ids": [1, 10], "prompt_length": 0}, 10, "input_ids[1] = 10 is out of range [0, 10)"),
    ({"input_ids": [-1, 2], "prompt_length": 0}, None, "out of range"),
    ({"input_ids": [1, 2], "prompt_length": 2}, 10, "prompt_length = 2"),
    ({"input_ids": [1, 2], "prompt_length": -1}, 10, "prompt_length = -1"),
    ({"input_ids": [1, 2], "prompt_length": "1"}, 10, "prompt_length must be an int"),
])
def test_validate_row(row, vocab, bad):
    err = validate_row(row, vocab)
    if bad is None:
        assert err is None
    else:
        assert err is not None and bad in err


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_reader_errors_name_file_and_line(tmp_path):
    p = tmp_path / "train.jsonl"
    _write(p, [json.dumps({"input_ids": [1, 2], "prompt_length": 1}), "",
               json.dumps({"input_ids": [1, 99], "prompt_length": 1}), "{not json"])
    with pytest.raises(ProcessedDataError, match=rf"{p}:3: input_ids\[1\] = 99 is out of range"):
        list(read_processed(p, vocab_size=50))
    with pytest.raises(ProcessedDataError, match=rf"{p}:4: not valid JSON"):
        list(read_processed(p))


def test_reader_skip_counts(tmp_path, capsys):
    p = tmp_path / "train.jsonl"
    _write(p, [json.dumps({"input_ids": [1, 2], "prompt_length": 1}), "[1, 2]",
               json.dumps({"input_ids": [1, 99], "prompt_length": 1}), "{oops",
               json.dumps({"input_ids": [4, 5, 6], "prompt_length": 2})])
    reader = read_processed(p, vocab_size=50, bad_rows="skip")
    rows = list(reader)
    assert rows == [{"input_ids": [1, 2], "prompt_length": 1}, {"input_ids": [4, 5, 6], "prompt_length": 2}]
    assert reader.skipped == 3 and reader.rows == 2
    assert f"{p}:2:" in reader.skip_reasons[0]
    assert "skipped 3 invalid row(s) of 5" in capsys.readouterr().err


def test_reader_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="mdm preprocess"):
        read_processed(tmp_path / "nope.jsonl")


def test_collate_labels_closed_form():
    rows = [{"input_ids": [5, 6, 7, 8], "prompt_length": 2}, {"input_ids": [9, 3], "prompt_length": 1}]
    b = collate(rows, pad_id=0)
    assert all(v.dtype == np.int64 and v.shape == (2, 4) for v in b.values())
    np.testing.assert_array_equal(b["input_ids"], [[5, 6, 7, 8], [9, 3, 0, 0]])
    np.testing.assert_array_equal(b["labels"], [[-100, -100, 7, 8], [-100, 3, -100, -100]])
    np.testing.assert_array_equal(b["attention_mask"], [[1, 1, 1, 1], [1, 1, 0, 0]])
    # Truncation at max_len, fixed shapes, and a Ray Data column batch give the same rule.
    t = collate(rows, pad_id=0, max_len=3)
    np.testing.assert_array_equal(t["labels"], [[-100, -100, 7], [-100, 3, -100]])
    f = collate({"input_ids": np.array([[5, 6, 7, 8], [9, 3]], dtype=object),
                 "prompt_length": np.array([2, 1])}, pad_id=1, max_len=6, pad_to_max_len=True)
    assert f["input_ids"].shape == (2, 6) and f["input_ids"][1, 2:].tolist() == [1, 1, 1, 1]
    assert (f["labels"][f["attention_mask"] == 0] == IGNORE_INDEX).all()

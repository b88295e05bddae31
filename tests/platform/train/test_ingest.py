"""Ray Data ingest of processed JSONL: validation errors with file and line, skip/overlong counts, a stable
split by `train.train_ratio`, the padded micro-batch stream and its per-epoch reordering."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest  # noqa: E402

from mdm.platform.config import load_config  # noqa: E402
from mdm.platform.train.ingest import DataError, build_datasets, epoch_batches  # noqa: E402

VOCAB = 300


def _rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _build(data_cfg, path, **kw):
    args = dict(train_path=path, seed=3, train_ratio=0.8, max_len=64, batch_size=8, pad_id=1, vocab_size=VOCAB)
    args.update(kw)
    return build_datasets(data_cfg, **args)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, arithmetic_data) -> Path:
    """A directory of two processed files; b.jsonl has a bad row at line 7 (prompt_length too large) and a
    malformed line at line 12."""
    rows = Path(arithmetic_data["train"]).read_text().splitlines()
    d = tmp_path_factory.mktemp("bad")
    (d / "a.jsonl").write_text("\n".join(rows[:200]) + "\n")
    b = rows[200:260]
    bad = json.loads(b[6])
    bad["prompt_length"] = len(bad["input_ids"]) + 5
    b[6] = json.dumps(bad)
    b[11] = '{"input_ids": [5, 6,'
    (d / "b.jsonl").write_text("\n".join(b) + "\n")
    return d


def test_bad_row_fails_naming_file_and_line(ray_local, data_dir):
    cfg = load_config()
    with pytest.raises(DataError) as e:
        _build(cfg.data, str(data_dir))
    msg = str(e.value)
    assert msg.startswith("2 invalid processed row(s)")
    assert f"{data_dir / 'b.jsonl'}:7: prompt_length = " in msg
    assert f"{data_dir / 'b.jsonl'}:12: not valid JSON" in msg
    assert "data.bad_rows: skip" in msg


def test_skip_and_overlong_are_counted(ray_local, data_dir):
    rows = _rows(str(data_dir / "a.jsonl")) + [r for i, r in enumerate(_rows_lenient(data_dir / "b.jsonl"))
                                                if i != 6]
    max_len = sorted(len(r["input_ids"]) for r in rows)[len(rows) // 2]  # about half the rows are longer
    n_long = sum(len(r["input_ids"]) > max_len for r in rows)
    drop = _build(load_config([], ["data.bad_rows=skip", "data.overlong=drop"]).data, str(data_dir), max_len=max_len)
    assert (drop.n_rows, drop.n_bad, drop.n_overlong) == (260, 2, n_long)
    assert drop.n_train + drop.n_eval == 258 - n_long
    trunc = _build(load_config([], ["data.bad_rows=skip"]).data, str(data_dir), max_len=max_len)
    assert trunc.n_overlong == n_long and trunc.n_train + trunc.n_eval == 258
    lengths = [mb["input_ids"].shape[1] for mb in trunc.datasets()["train"].iter_rows()]
    assert max(lengths) == max_len


def test_invalid_utf8_is_a_bad_row_with_file_and_line(ray_local, arithmetic_data, tmp_path):
    """One stray byte (here 0xff inside a JSON string) used to abort the whole file in a Ray task with a
    100-line traceback; now it is that line's error, on the driver, and `bad_rows: skip` counts it."""
    rows = Path(arithmetic_data["train"]).read_bytes().splitlines()[:40]
    rows[2] = rows[2][:-1] + b', "note": "caf\xff"}'
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b"\r\n".join(rows) + b"\n")  # CRLF too: still one line per row
    with pytest.raises(DataError) as e:
        _build(load_config().data, str(path))
    assert str(e.value).startswith("1 invalid processed row(s); first: "
                                   f"{path}:3: not valid UTF-8 (byte 0xff at column ")
    skipped = _build(load_config([], ["data.bad_rows=skip"]).data, str(path))
    assert (skipped.n_rows, skipped.n_bad, skipped.n_train + skipped.n_eval) == (40, 1, 39)


def _rows_lenient(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def test_split_and_epoch_stream(ray_local, arithmetic_data):
    cfg = load_config()
    rows = _rows(arithmetic_data["train"])
    data = _build(cfg.data, arithmetic_data["train"], train_ratio=0.75)
    n = len(rows)
    assert data.n_train + data.n_eval == n and data.n_bad == 0
    # A Bernoulli(0.25) hash split: the eval count lies within 4 standard deviations of n/4.
    assert abs(data.n_eval - n / 4) < 4 * math.sqrt(n * 0.25 * 0.75)
    ds = data.datasets()

    def sequences(micro_batches):
        seqs = []
        for mb in micro_batches:
            for ids, mask, labels in zip(mb["input_ids"], mb["attention_mask"], mb["labels"]):
                k = int(mask.sum())
                assert (mask[:k] == 1).all() and (mask[k:] == 0).all() and (labels[k:] == -100).all()
                seqs.append(tuple(int(t) for t in ids[:k]))
        return seqs

    train = list(ds["train"].iter_rows())
    assert all(mb["input_ids"].shape[0] <= 8 for mb in train)
    e0, ev = sequences(train), sequences(ds["eval"].iter_rows())
    assert len(e0) == data.n_train and len(ev) == data.n_eval
    assert sorted(e0 + ev) == sorted(tuple(r["input_ids"]) for r in rows)
    in_file_order = [s for s in (tuple(r["input_ids"]) for r in rows) if s in set(e0)]
    assert e0 != in_file_order  # shuffled
    # The same seed gives the same split and the same order.
    again = _build(cfg.data, arithmetic_data["train"], train_ratio=0.75).datasets()
    assert sequences(again["train"].iter_rows()) == e0
    # Per epoch, a worker reorders its micro-batches with a local shuffle seeded by (seed, epoch).
    shard = ds["train"].iterator()
    orders = [[tuple(mb["input_ids"][0].tolist()) for mb in epoch_batches(shard, e, seed=3)] for e in (0, 1, 0)]
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1] and orders[0] == orders[2]

def test_worker_sizing_leaves_a_cpu_for_ray_data(ray_local):
    from mdm.platform.runtime.ray_runtime import check_worker_fit

    check_worker_fit(load_config([], ["ray.num_workers=2", "ray.cpus_per_worker=0.5"]).ray)  # 1 + 1 <= 2
    with pytest.raises(ValueError, match=r"ray.num_workers \(2\) x ray.cpus_per_worker \(1.0\) = 2 CPUs"):
        check_worker_fit(load_config([], ["ray.num_workers=2", "ray.cpus_per_worker=1.0"]).ray)

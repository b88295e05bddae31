"""The training stream does not depend on the cluster's size (issue #14): a run resumed on fewer nodes, after
one died, must see the same shuffled micro-batches as the uninterrupted run, or its losses differ.

Ray Data plans a read's block count from the CPUs it sees, and `random_shuffle(seed)` permutes differently
for another block count; `ingest.read_blocks` fixes the count from the data. Two local Rays of 2 and 4 CPUs
must give the same stream.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402

from mdm.platform.config import load_config  # noqa: E402
from mdm.platform.train.ingest import build_datasets  # noqa: E402


def _stream(cpus: int, path: str) -> list[list[int]]:
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        data = build_datasets(load_config().data, train_path=path, seed=3, train_ratio=0.9, max_len=64,
                              batch_size=8, pad_id=1, vocab_size=300)
        return [row["input_ids"][:, :12].tolist() for row in data.datasets()["train"].iter_rows()]
    finally:
        ray.shutdown()


def test_shuffled_stream_is_the_same_on_2_and_4_cpus(arithmetic_data):
    small, large = _stream(2, arithmetic_data["train"]), _stream(4, arithmetic_data["train"])
    assert len(small) == len(large) > 10
    assert small == large

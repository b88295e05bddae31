"""The Trainer's data sources (trainer.DataSource): a Ray Data shard stream, or tensors held in memory.

    source = RayShards(device, epochs=2, seed=42, has_eval=True)     # inside a Ray Train worker
    source = MemoryBatches(train, evals, batch_size=8, seed=42)        # {input_ids, labels, attention_mask} [N, L]
    for epoch, mb in source.train(start_epoch=1, skip=40): ...        # the data position of a restored run
    source.eval_batches(); source.prepare_batches()                   # eval split; train rows in file order

`RayShards` reads the worker's shards of the TorchTrainer's datasets (`ingest.Ingest.datasets`: "train"
shuffled by Ray Data and, per epoch, locally by (seed, epoch); "eval"; "prepare", the training rows in
file order) and moves each micro-batch to the device; it yields `epochs` epochs, then stops (the Trainer
says the data ran out). `MemoryBatches` permutes the training rows per epoch with a generator seeded
`seed * 1000 + epoch` (the last partial micro-batch dropped) and never runs out; eval and prepare
micro-batches are in row order, partial last one kept. Each in-memory micro-batch is cut to its longest
row (padding columns dropped).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator, Optional

import torch

if TYPE_CHECKING:
    from ray.data import DataIterator

Batch = dict[str, torch.Tensor]


def micro_batches(data: Batch, size: int, order: Optional[torch.Tensor] = None) -> Iterator[Batch]:
    """Micro-batches of `size` rows of `data` ([N, L] tensors), in `order` (the last partial one dropped) or
    else in row order (kept), each cut to its longest row."""
    n = len(data["input_ids"])
    idx_all = torch.arange(n) if order is None else order
    for i in range(0, n - (n % size if order is not None else 0), size):
        idx = idx_all[i:i + size]
        mb = {k: v[idx] for k, v in data.items()}
        width = int(mb["attention_mask"].sum(1).max())
        yield {k: v[:, :width] for k, v in mb.items()}


class MemoryBatches:
    """Training and eval rows held in memory as [N, L] int64 tensors (see the module docstring)."""

    def __init__(self, train: Batch, evals: Optional[Batch], *, batch_size: int, seed: int) -> None:
        self.data, self.evals, self.batch_size, self.seed = train, evals, batch_size, seed
        self.has_eval = evals is not None

    @property
    def n_train(self) -> int:
        return len(self.data["input_ids"])

    def train(self, start_epoch: int = 0, skip: int = 0) -> Iterator[tuple[int, Batch]]:
        epoch = start_epoch
        while True:
            gen = torch.Generator().manual_seed(self.seed * 1000 + epoch)
            order = torch.randperm(self.n_train, generator=gen)
            for i, mb in enumerate(micro_batches(self.data, self.batch_size, order)):
                if epoch > start_epoch or i >= skip:
                    yield epoch, mb
            epoch += 1

    def eval_batches(self) -> Iterable[Batch]:
        return micro_batches(self.evals, self.batch_size) if self.evals is not None else ()

    def prepare_batches(self) -> Iterable[Batch]:
        return micro_batches(self.data, self.batch_size)


class _Shard:
    """Lazy iterable of micro-batches (dicts of tensors on `device`) over one dataset shard of this worker."""

    def __init__(self, name: str, device: torch.device, prefetch: int = 4) -> None:
        import ray.train

        self.it: DataIterator = ray.train.get_dataset_shard(name)
        self.device, self.prefetch = device, prefetch

    def to_device(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        for mb in batches:
            yield {k: v.to(self.device, non_blocking=True) for k, v in mb.items()}

    def __iter__(self) -> Iterator[Batch]:
        from mdm.platform.train.ingest import shard_batches

        return self.to_device(shard_batches(self.it, self.prefetch))


class RayShards:
    """This Ray Train worker's shards of "train", "eval" and "prepare" (see the module docstring)."""

    def __init__(self, device: torch.device, *, epochs: int, seed: int, has_eval: bool) -> None:
        self.device, self.epochs, self.seed, self.has_eval = device, epochs, seed, has_eval
        self.prepare = _Shard("prepare", device, prefetch=1)

    def train(self, start_epoch: int = 0, skip: int = 0) -> Iterator[tuple[int, Batch]]:
        from mdm.platform.train.ingest import epoch_batches

        shard = _Shard("train", self.device)
        for epoch in range(start_epoch, self.epochs):
            for i, mb in enumerate(shard.to_device(epoch_batches(shard.it, epoch, self.seed, shard.prefetch))):
                if epoch > start_epoch or i >= skip:
                    yield epoch, mb

    def eval_batches(self) -> Iterable[Batch]:
        return _Shard("eval", self.device) if self.has_eval else ()

    def prepare_batches(self) -> Iterable[Batch]:
        return self.prepare

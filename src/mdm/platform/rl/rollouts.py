"""Rollouts for `mdm rl`: Ray actors that sample G completions per prompt and score them with the task pack.

    pool = RolloutPool(lambda: RolloutActor.options(num_cpus=0.5).remote(spec), n=2)
    pool.push(version=0, weights={name: tensor})           # through the object store, once per update
    pending = pool.submit([Chunk(key=0, prompts=[[5, 6, 7]], golds=["12"], seed=17)])
    results = pool.collect(pending)                         # [ChunkResult], in chunk order

Each actor builds the model once (the engine's `build_model`, as the learner does) and afterwards takes the
learner's trainable parameters by object reference (`push`), tagged with the optimizer step they are from
(the version, recorded on every result). A chunk is sampled through the one generation path
(`infer.generation.generate`) with the `sampler` section, seeded by the chunk's seed, and scored with the
task's `reward` (exact match plus the optional format reward). When an actor dies, `collect` starts a new one
with the same weights version and issues each of the dead actor's chunks again, exactly once; a chunk whose
second actor dies too fails the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import ray

from mdm.platform.infer.generation.generate import generate


@dataclass
class ActorSpec:
    """What a rollout actor builds (all plain values: it is shipped to the actor)."""

    engine: str
    auto_import: list[str]
    model_cfg: Any
    model: str                      # train.model: a hub id, a directory, "tiny"
    tokenizer: str
    sampler_cfg: Any
    task: str
    data_dir: Optional[str]
    num_generations: int
    format_reward: float
    seed: int
    task_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chunk:
    """Prompts to sample `generations` completions each for (None: the actor's `num_generations`); `key` names
    the chunk in its batch."""

    key: int
    prompts: list[list[int]]
    golds: list[str]
    seed: int
    generations: Optional[int] = None
    texts: list[str] = field(default_factory=list)  # the prompts as text (rollout tables)


@dataclass
class ChunkResult:
    """Per completion (G per prompt, groups contiguous): the generated ids (cut at the end token), text,
    reward and score; the weights version and sampler that produced them; the actor's name."""

    key: int
    ids: list[list[int]]
    texts: list[str]
    rewards: list[float]
    scores: list[float]
    formatted: list[bool]
    version: int
    sampler: str
    actor: str


class RolloutWorker:
    """The rollout actor's body (`RolloutActor` is it as a Ray actor class)."""

    def __init__(self, spec: ActorSpec) -> None:
        import torch

        from mdm.platform.registry import auto_import, get_registry, load_builtins
        from mdm.platform.tokenizer import load_tokenizer

        load_builtins()
        auto_import(spec.auto_import)
        self.spec = spec
        self.engine = get_registry("engines").get(spec.engine)
        self.task = get_registry("tasks").get(spec.task)(data_dir=spec.data_dir, **spec.task_args)
        self.tokenizer = load_tokenizer(spec.tokenizer, spec.model_cfg.trust_remote_code)
        torch.manual_seed(spec.seed)
        self.model = self.engine.build_model(spec.model_cfg, spec.model, self.tokenizer).eval()
        self.version = -1
        actor_id = ray.get_runtime_context().get_actor_id() if ray.is_initialized() else None
        self.name = f"rollout-{actor_id[:8]}" if actor_id else "local"

    def set_weights(self, version: int, weights: dict[str, Any]) -> int:
        """Load the learner's trainable state (`adapters.trainable_state`) of optimizer step `version`; an error
        naming the version when it holds other tensors than this model trains."""
        from mdm.platform.train.adapters import load_trainable_state

        load_trainable_state(self.model, weights, where=f"(the learner's weights of step {version})")
        self.version = version
        return version

    def sample(self, chunk: Chunk) -> ChunkResult:
        import dataclasses

        import torch

        g = chunk.generations or self.spec.num_generations
        repeated = [p for p in chunk.prompts for _ in range(g)]
        golds = [gold for gold in chunk.golds for _ in range(g)]
        one_call = dataclasses.replace(self.spec.sampler_cfg, batch_size=max(1, len(repeated)))
        gen = torch.Generator().manual_seed(chunk.seed)
        with torch.inference_mode():
            out = generate(self.model, self.engine, one_call, repeated, tokenizer=self.tokenizer, generator=gen)
        texts = list(out.texts or [])
        fr = self.spec.format_reward
        return ChunkResult(key=chunk.key, ids=out.ids, texts=texts,
                           rewards=[float(self.task.reward(t, gold, fr)) for t, gold in zip(texts, golds)],
                           scores=[float(self.task.score(t, gold)) for t, gold in zip(texts, golds)],
                           formatted=[self.task.extract(t) is not None for t in texts], version=self.version,
                           sampler=str(self.spec.sampler_cfg.name), actor=self.name)

    def weights(self) -> tuple[int, str]:
        """(the weights version, `digests.weights_digest` of the model): what the learner's weights became here."""
        from mdm.platform.train.digests import weights_digest

        return self.version, weights_digest(self.model)

    def pid(self) -> int:
        import os

        return os.getpid()


RolloutActor = ray.remote(max_restarts=0, max_task_retries=0)(RolloutWorker)


@dataclass
class Pending:
    """A submitted batch: its chunks, their futures and the weights they must be sampled with."""

    chunks: list[Chunk]
    futures: list[Any]
    owners: list[int]               # actor index per chunk
    version: int
    weights: Any                    # the object ref pushed as `version`
    reissued: list[int] = field(default_factory=list)  # keys issued a second time


class RolloutPool:
    """`n` rollout actors made by `make()`; see the module docstring."""

    def __init__(self, make: Callable[[], Any], n: int) -> None:
        self.make = make
        self.actors = [make() for _ in range(n)]
        self.version, self.weights = -1, None
        self.replaced = 0

    def push(self, version: int, weights: dict[str, Any]) -> None:
        """Send the learner's weights of step `version` to every actor (one object in the store)."""
        self.version, self.weights = version, ray.put(weights)
        for a in self.actors:
            a.set_weights.remote(version, self.weights)

    def submit(self, chunks: list[Chunk]) -> Pending:
        owners = [i % len(self.actors) for i in range(len(chunks))]
        futures = [self.actors[o].sample.remote(c) for o, c in zip(owners, chunks)]
        return Pending(chunks, futures, owners, self.version, self.weights)

    def collect(self, pending: Pending) -> list[ChunkResult]:
        """The batch's results in chunk order; a dead actor's chunks issued again once (module docstring)."""
        results: list[Optional[ChunkResult]] = [None] * len(pending.chunks)
        for i, fut in enumerate(pending.futures):
            try:
                results[i] = ray.get(fut)
            except ray.exceptions.RayActorError:
                if pending.chunks[i].key in pending.reissued:
                    raise
                results[i] = self.reissue(pending, i)
        return [r for r in results if r is not None]

    def reissue(self, pending: Pending, i: int) -> ChunkResult:
        """Replace chunk i's dead actor (same weights version) and sample the chunk there again."""
        owner = pending.owners[i]
        if not self.alive(owner):
            self.actors[owner] = self.make()
            self.replaced += 1
        if pending.weights is not None:  # the batch's own version, whatever the actor holds now
            self.actors[owner].set_weights.remote(pending.version, pending.weights)
        pending.reissued.append(pending.chunks[i].key)
        result = ray.get(self.actors[owner].sample.remote(pending.chunks[i]))
        if self.weights is not None and self.version != pending.version:  # bring it up to the newest push
            self.actors[owner].set_weights.remote(self.version, self.weights)
        return result

    def alive(self, i: int) -> bool:
        try:
            ray.get(self.actors[i].pid.remote(), timeout=30)
            return True
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return False

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)

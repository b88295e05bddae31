"""What an engine plugs into the platform: its config sections, its model/objective/sampling hooks, and
which of its keys are inert under which settings.

An engine registers one `EngineSpec` in the `engines` registry:

    get_registry("engines").register("llada_plus", EngineSpec(
        train_config=TrainConfig, model_config=ModelConfig, sampler_config=SamplerConfig,
        build_model=..., build_objective=..., sample=..., end_token_ids=...,
        conditions={"train.p_model": {"train.PPOTS": True}, "model.lora.alpha": {"model.lora.r": Not(0)}},
        likelihood_config=LikelihoodConfig, loglikelihood=..., loglikelihood_rolling=...))   # optional

The platform (config loader, trainer, sweeps, tracking, batch inference, the generation path) reaches the
engine only through this spec, so it never imports an engine module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Protocol

from mdm.platform.fields import choice, registry_choice

# transformers.get_scheduler names accepted for train.lr_scheduler_type (see mdm.platform.train.lr_schedule).
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_min_lr",
                 "cosine_with_restarts", "polynomial", "inverse_sqrt", "warmup_stable_decay")


@dataclass
class BaseTrainConfig:
    """The seed's engine-agnostic `train.*` keys (names and meanings unchanged).

    `model` is "tiny" (a small model built from the `model` section, no download), a local directory or a
    hub id. `max_steps` > 0 stops training after that many optimizer steps (overrides `epochs`).
    `lr_scheduler_type` / `lr_scheduler_kwargs` / `warmup_steps`: Hugging Face's schedules by name, with HF's
    curves (`mdm.platform.train.lr_schedule` lists them). `adam_beta1/2`, `adam_epsilon`, `weight_decay`: AdamW.
    `eval_steps`: steps between evaluations with `eval_strategy: steps`, where it is required; null (the seed's
    value) is fine with the other strategies, which do not read it. `output_dir`: null means "outputs".
    `train_data_path`: unset means the seed's `./data/train/<task>.jsonl` (resolved by the trainer).
    `china`: the seed's hub-mirror switch, the same as the top-level `china` (`mdm.platform.hub`).
    """

    task: Optional[str] = registry_choice(None, "tasks")
    model: str = "tiny"
    train_data_path: Optional[str] = None
    output_dir: Optional[str] = "outputs"
    seed: int = 42
    batch_size_per_gpu: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = choice("cosine", LR_SCHEDULERS)
    lr_scheduler_kwargs: Dict[str, Any] = field(default_factory=dict)
    warmup_steps: int = 0
    epochs: int = 1
    max_steps: int = -1
    train_ratio: float = 0.95
    max_len: int = 1024
    eval_strategy: str = choice("epoch", ("epoch", "steps", "no"))
    eval_steps: Optional[int] = 500
    save_strategy: str = choice("steps", ("last", "epoch", "steps", "no"))  # periodic: a killed run resumes
    save_steps: int = 500
    logging_steps: int = 10
    china: bool = False

    def __post_init__(self) -> None:
        if self.output_dir is None:  # the seed writes `output_dir: null`
            self.output_dir = "outputs"
        for key in ("batch_size_per_gpu", "grad_accum", "epochs", "save_steps", "logging_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.max_len < 2:
            raise ValueError(f"train.max_len must be >= 2 (a prompt token and a response token), got {self.max_len}")
        if self.eval_steps is None and self.eval_strategy == "steps":
            raise ValueError("train.eval_steps is null but train.eval_strategy: steps needs it; set train.eval_steps "
                             "to the number of steps between evaluations")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ValueError(f"train.eval_steps must be >= 1 or null, got {self.eval_steps}")
        if not 0.0 < self.train_ratio <= 1.0:
            raise ValueError(f"train.train_ratio must be in (0, 1], got {self.train_ratio}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr_scheduler_type == "constant" and self.warmup_steps > 0:
            raise ValueError(f"train.warmup_steps is {self.warmup_steps} but train.lr_scheduler_type: constant "
                             f"ignores warmup (Hugging Face's curve); use constant_with_warmup")


class ModelSection(Protocol):
    """What the platform reads of an engine's `model` section (`EngineSpec.model_config`); the rest is the
    engine's own."""

    trust_remote_code: bool


class SamplerSection(Protocol):
    """What the platform reads of an engine's `sampler` section (`EngineSpec.sampler_config`)."""

    name: str
    batch_size: int
    gen_length: int


class LikelihoodSection(Protocol):
    """An engine's `likelihood` section (`EngineSpec.likelihood_config`), a dataclass; an `mc_num` field
    (samples per item) lets batch inference split an item's samples over actors."""

    __dataclass_fields__: ClassVar[dict[str, Any]]


@dataclass(frozen=True)
class LoglikScore:
    """A likelihood hook's answer for one item: `value` (an estimate of, or bound on, log p in nats), its
    standard error `stderr` (0 when exact, nan when unknown), `n_samples` (Monte Carlo samples behind it) and
    `greedy` (lm-eval's is_greedy; None unless asked for)."""

    value: float
    stderr: float
    n_samples: int = 0
    greedy: Optional[bool] = None


@dataclass(frozen=True)
class ModelMemory:
    """An engine's `model_memory` answer, for `mdm plan` (platform/train/memory_plan.py adds sharding):

    `params` / `trainable`: parameters in all / that train (an adapter's only with LoRA); `trainable_tensors`:
    how many tensors hold them (AdamW keeps a step counter per tensor); `weight_bytes`: bytes per weight (and
    activation) element on the device, of dtype `weight_dtype`; `trainable_bytes`: bytes per trained weight
    (PEFT keeps adapters in float32 on a half-precision base unless DeepSpeed casts them); `quantizable`: the frozen base weights a 4-bit
    base would hold in 4 bits; `largest_unit`: parameters ZeRO-3 gathers at once (a block); `hidden`: the hidden
    size (DeepSpeed's bucket sizes); `activations_plain` / `activations_checkpointed`: peak bytes of one training
    micro-batch without / with gradient checkpointing, `checkpointing` the configured one; `other_forwards`:
    peak bytes of the largest forward outside the training step (`other_what` says which); `rows` / `tokens`:
    forward rows and tokens of a micro-batch; `notes`: what was assumed; `four_bit`: the `quantizable` weights
    are loaded in 4 bits (QLoRA)."""

    params: int
    trainable: int
    trainable_tensors: int
    weight_bytes: int
    weight_dtype: str
    trainable_bytes: int
    quantizable: int
    largest_unit: int
    hidden: int
    activations_plain: int
    activations_checkpointed: int
    checkpointing: bool
    other_forwards: int
    other_what: str
    rows: int
    tokens: int
    notes: tuple[str, ...] = ()
    four_bit: bool = False

    @property
    def activations(self) -> int:
        """The training step's activations as configured."""
        return self.activations_checkpointed if self.checkpointing else self.activations_plain


@dataclass(frozen=True)
class EngineSpec:
    """An engine's sections and hooks.

    build_model(model_cfg, model_name_or_path, tokenizer) -> torch.nn.Module (a transformers PreTrainedModel)
    build_objective(train_cfg) -> an object with
        prepare(model, sequences_iter, device) -> metrics    # e.g. P-POTS estimation before training
        loss(model, batch, generator) -> (loss, metrics)   # batch: {"input_ids", "labels", "attention_mask"}
        state_dict() / load_state_dict(d)                  # restored on resume
    sample(model, prompt_ids, sampler_cfg, generator) -> an object with `.tokens` (per prompt, the generated
        ids, `sampler_cfg.gen_length` each) and `.nfe` (model forward passes)
    end_token_ids(model, sampler_cfg) -> the ids that end a generated text (cut there)
    conditions: {key: {other_key: value}}: `key` has an effect only when every `other_key` has its `value`,
        or any value but `v` for a `Not(v)` (LLaDA+: `train.p_model` only matters when `train.PPOTS` is true,
        `model.lora.alpha` only when `model.lora.r` is not 0). Sweeps deduplicate trials by it, tracking logs
        such keys as inert, and the engine's own code follows the same rule.
    label(flat_config) -> a short name of the training configuration that `label_keys` describe (LLaDA+:
        "Standard", "MIRROR", "PPOTS(EPR)", "MIRROR+PPOTS(EPR)"), used in run names and comparison tables
        (`mdm.platform.runs.trial_label`); None: those keys are shown as key=value like any other.
    forwards_per_sequence(flat_config) -> model forward rows per training sequence (LLaDA+: 2 with MIRROR,
        else 1); a comparison at equal sequence-forwards divides `train.batch_size_per_gpu` by it.
    Likelihood scoring (optional; `mdm infer --mode likelihood`, the lm-eval model `mdm`):
    likelihood_config: the dataclass of the engine's `likelihood` section (absent: no such section). An
        `mc_num` field (samples per item) lets batch inference split an item's samples (`eval.mc_shards`).
    loglikelihood(model, items, likelihood_cfg, generator, greedy=False) -> list[LoglikScore], one per
        (prompt_ids, answer_ids) item: log p(answer | prompt) or a bound on it, with its standard error; an
        item's value must not depend on the other items of the call (seed per item, not per call).
    loglikelihood_rolling(model, texts, likelihood_cfg, generator, prefix=()) -> list[LoglikScore], one per
        text (token ids): log p(text), scored in windows, given `prefix` (e.g. [BOS]).
    Memory planning (optional; `mdm plan`):
    model_memory(model_cfg, train_cfg, name_or_path=, vocab_size=, precision=) -> ModelMemory: the model's
        parameters and activations (`precision`: DeepSpeed's "bf16"/"fp16", else None for the model's dtype).
    memory_knobs(flat_config) -> [[{key: value}, ...], ...]: engine keys that lower memory, one list per kind,
        least drastic first (LLaDA+: gradient checkpointing, LoRA ranks); the planner tries them.
    check_model(model_cfg, name_or_path, use_gpu=, zero_stage=) (optional): ValueError (one line) for a model
        section that cannot train on this run's hardware (LLaDA+: `model.load_in_4bit` without GPUs or LoRA);
        `mdm train` calls it before any work.
    build_rl_objective(rl_cfg, ref_model=None) (optional; `mdm rl`): the GRPO objective, the `build_objective`
        protocol on rollout micro-batches plus `advantages(rewards)` (see mdm.platform.rl.source).
    register_auto_classes() (optional): registers the engine's own `model_type`s with transformers' Auto
        classes (imports its model code); `mdm.platform.tokenizer` calls it before reading the tokenizer of a
        model directory whose config.json names a model_type transformers does not know yet.
    """

    train_config: type
    model_config: type
    sampler_config: type
    build_model: Callable[..., Any]
    build_objective: Callable[..., Any]
    sample: Callable[..., Any]
    end_token_ids: Callable[..., list[int]]
    conditions: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, hash=False)
    label: Optional[Callable[[Mapping[str, Any]], str]] = None
    label_keys: tuple[str, ...] = ()
    forwards_per_sequence: Optional[Callable[[Mapping[str, Any]], int]] = None
    likelihood_config: Optional[type] = None
    loglikelihood: Optional[Callable[..., list[LoglikScore]]] = None
    loglikelihood_rolling: Optional[Callable[..., list[LoglikScore]]] = None
    register_auto_classes: Optional[Callable[[], None]] = None
    model_memory: Optional[Callable[..., ModelMemory]] = None
    memory_knobs: Optional[Callable[[Mapping[str, Any]], list[list[dict[str, Any]]]]] = None
    check_model: Optional[Callable[..., None]] = None
    build_rl_objective: Optional[Callable[..., Any]] = None

    def require_likelihood(self, name: str = "this engine") -> None:
        """Raise ValueError unless the engine can score likelihoods (its hooks and section are set)."""
        if self.loglikelihood is None or self.likelihood_config is None:
            raise ValueError(f"engine {name!r} has no likelihood hooks (EngineSpec.loglikelihood / "
                             f"likelihood_config): it cannot score by likelihood; use generation")


@dataclass(frozen=True)
class Not:
    """A condition's value that every value but `value` meets: `{"model.lora.r": Not(0)}` (LoRA on)."""

    value: object

    def __str__(self) -> str:  # how a sweep's conditions are digested into its name (runs.sweep_name)
        return f"not {self.value!r}"


def meets(value: object, want: object) -> bool:
    """Whether a key's `value` meets a condition's `want`: equal to it, or for `Not(v)` anything but v."""
    return value != want.value if isinstance(want, Not) else value == want


def inert_keys(conditions: Mapping[str, Mapping[str, Any]], flat: Mapping[str, Any]) -> set[str]:
    """The keys of `flat` (a flattened config) whose condition fails, i.e. that cannot change the run."""
    return {key for key, cond in conditions.items()
            if key in flat and not all(meets(flat.get(other), want) for other, want in cond.items())}

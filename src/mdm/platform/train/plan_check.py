"""The memory plan `mdm train` checks before any worker starts: one line, and a refusal when it cannot fit.

    checked = check_plan(cfg, vocab_size=len(tokenizer), force=False)   # PlanError: no fit
    checked.line()      # "memory plan per GPU: 61.23 GiB of 80.00 GiB (...): weights ..., ... -- fits"
    checked.params()    # {"plan/total_gib": 61.23, "plan/gpu_gib": 80.0, "plan/fits": True}: MLflow params

Every run is planned on `ray.num_workers` devices (memory_plan.py, the same arithmetic as `mdm plan`). A run
that trains on GPUs (`ray.use_gpu`) prints the plan's line and is checked against the GPU's size; a CPU run
prints nothing and only logs the plan (its per-worker total, `plan/gpu_gib` and `plan/fits` "cpu"). The
memory of one GPU: `ray.gpu_mem_gib` when set, else this driver's own CUDA device 0 when the Ray is this
machine, else Ray's `accelerator_type:<NAME>` resources (`ray.cluster_resources()`) looked up in
`gpu_cards.CARDS` (the smallest when the cluster has several; unknown when any is not in the table). A worker
with a fraction of a GPU (`ray.gpus_per_worker` < 1) has that fraction of its memory. When the size is unknown
the line has no verdict and says which key sets it. A plan that does not fit raises `PlanError` (`mdm train`:
exit status 2) unless `force`; the changes that would fit are `mdm plan`'s to list.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Optional, Union

from mdm.platform.train.gpu_cards import accelerator_gib
from mdm.platform.train.memory_plan import GIB, Plan, plan_memory
from mdm.platform.train.plan_advice import gib

if TYPE_CHECKING:
    from mdm.platform.config import RunConfig
    from mdm.platform.runtime.ray_config import RayConfig

SIZE_KEY = "ray.gpu_mem_gib"  # the config key that sets the GPU size


class PlanError(ValueError):
    """A run whose memory plan does not fit its GPUs, refused before any worker starts."""


def check_runnable(cfg: RunConfig) -> None:
    """Before any work (ValueError, one line): the precision DeepSpeed would train in, and the engine's check of
    the model section on this run's hardware (EngineSpec.check_model: LLaDA+'s `model.load_in_4bit`)."""
    from mdm.platform.registry import get_registry
    from mdm.platform.train.updater import check_precision

    check_precision(cfg.deepspeed, on_gpu=cfg.ray.use_gpu)
    spec = get_registry("engines").get(cfg.engine)
    if spec.check_model is not None:
        spec.check_model(cfg.model, cfg.train.model, use_gpu=cfg.ray.use_gpu,
                         zero_stage=cfg.deepspeed.zero_stage if cfg.deepspeed.enabled else 0)


def driver_cuda_gib() -> tuple[Optional[float], str]:
    """The memory of this process's CUDA device 0, and its name; (None, why) without one."""
    import torch

    if not torch.cuda.is_available():
        return None, "no CUDA device on the driver"
    props = torch.cuda.get_device_properties(0)
    return props.total_memory / GIB, f"the driver's {props.name}"


def gpu_memory(rcfg: RayConfig, resources: Callable[[], Mapping[str, float]],
               local: bool = True) -> tuple[Optional[float], str]:
    """GiB per training worker and where it came from: `ray.gpu_mem_gib`, the driver's CUDA device when the Ray
    is this machine (`local`; on a cluster the driver's GPU says nothing of the workers'), Ray's accelerator
    type (module docstring); (None, why) when unknown."""
    if rcfg.gpu_mem_gib is not None:
        size, source = float(rcfg.gpu_mem_gib), SIZE_KEY
    else:
        size, source = driver_cuda_gib() if local else (None, "a cluster: the driver's GPU is not the workers'")
        if size is None:
            size, why = accelerator_gib(resources())
            source = why if size is not None else f"{source}, {why}"
    share = min(rcfg.gpus_per_worker, 1.0)
    if size is None or share <= 0:
        return None, source
    if share < 1.0:
        return size * share, f"{source}, x{share:g} per worker (ray.gpus_per_worker)"
    return size, source


@dataclass(frozen=True)
class PlanCheck:
    """A plan and the GPU it was checked against (`gpu_gib` None: unknown, no verdict)."""

    plan: Plan
    gpu_gib: Optional[float]
    source: str

    on_cpu: bool = False  # a CPU run: planned for the record, never judged

    @property
    def fits(self) -> Optional[bool]:
        return None if self.gpu_gib is None else self.plan.fits

    @property
    def over(self) -> int:
        return self.plan.total - self.plan.gpu_bytes

    def line(self, force: bool = False) -> str:
        """The plan in one line: total, GPU size and its source, the parts, the setup, the verdict."""
        p, s = self.plan, self.plan.state
        parts = (f"weights {gib(s.weights, 0)}, gradients {gib(s.gradients, 0)}, optimizer {gib(s.optimizer, 0)}, "
                 f"DeepSpeed buffers {gib(s.buffers, 0)}, activations {gib(p.activations, 0)}, reserve "
                 f"{gib(p.reserve, 0)}" + (f" (+ {gib(s.host, 0)} on the host)" if s.host else ""))
        setup = p.sharding.describe(p.gpus)
        if self.fits is None:
            return (f"memory plan per GPU: {gib(p.total, 0)} GiB: {parts}; {setup} -- GPU size unknown "
                    f"({self.source}): set {SIZE_KEY} for a verdict")
        verdict = "fits" if self.fits else f"does not fit ({gib(self.over, 0)} GiB over)"
        return (f"memory plan per GPU: {gib(p.total, 0)} GiB of {gib(p.gpu_bytes, 0)} GiB ({self.source}): "
                f"{parts}; {setup} -- {verdict}" + ("; --force: training anyway" if force and not self.fits else ""))

    def params(self) -> dict[str, Union[float, bool, str]]:
        """The plan as MLflow params (`plan/*`; "unknown" without a GPU size, "cpu" on a CPU run)."""
        if self.on_cpu:
            return {"plan/total_gib": round(self.plan.total / GIB, 2), "plan/gpu_gib": "cpu", "plan/fits": "cpu"}
        return {"plan/total_gib": round(self.plan.total / GIB, 2),
                "plan/gpu_gib": "unknown" if self.gpu_gib is None else round(self.gpu_gib, 2),
                "plan/fits": "unknown" if self.fits is None else self.fits}


def cpu_plan(cfg: RunConfig, vocab_size: Optional[int]) -> Optional[PlanCheck]:
    """The plan of a CPU run, per worker, without a verdict or a word; None when the planner cannot plan it."""
    try:
        plan = plan_memory(cfg, gpus=cfg.ray.num_workers, gpu_gib=1.0, vocab_size=vocab_size)
    except (OSError, ValueError):
        return None
    return PlanCheck(plan, None, "a CPU run", on_cpu=True)


def check_plan(cfg: RunConfig, *, vocab_size: Optional[int], force: bool = False,
               resources: Optional[Callable[[], Mapping[str, float]]] = None) -> Optional[PlanCheck]:
    """Plan a GPU run, print its line (stderr) and raise PlanError when it does not fit and not `force`; a CPU
    run is planned silently, for its MLflow params. None for an engine or model the planner cannot plan (a note
    printed on GPU runs). `resources`: Ray's cluster resources, asked only when the GPU size is not known
    otherwise."""
    if not cfg.ray.use_gpu:
        return cpu_plan(cfg, vocab_size)
    if resources is None:
        import ray

        resources = ray.cluster_resources
    from mdm.platform.runtime.ray_runtime import is_local_cluster

    gpu_gib, source = gpu_memory(cfg.ray, resources, local=is_local_cluster(cfg.ray))
    try:  # the total does not depend on the GPU size: an unknown one is planned against 1 GiB, no verdict
        plan = plan_memory(cfg, gpus=cfg.ray.num_workers, gpu_gib=gpu_gib or 1.0, vocab_size=vocab_size)
    except (OSError, ValueError) as e:  # e.g. a model that is not LLaDA: training decides, not the planner
        print(f"mdm train: no memory plan ({e})", file=sys.stderr)
        return None
    checked = PlanCheck(plan, gpu_gib, source)
    print(f"mdm train: {checked.line(force)}", file=sys.stderr)
    if checked.fits is False and not force:
        raise PlanError(f"the memory plan needs {gib(plan.total, 0)} GiB per GPU, {gib(checked.over, 0)} GiB more "
                        f"than the {gib(plan.gpu_bytes, 0)} GiB of {source}; `mdm plan` with this run's "
                        f"--config/--set and --gpu-mem {gib(plan.gpu_bytes, 0)} --gpus {cfg.ray.num_workers} lists "
                        "changes that fit (or pass --force to train anyway)")
    return checked

"""LoRA (`model.lora`, through PEFT) in the one training path: the Trainer on a tiny LLaDA in this process, no Ray.

- only the adapters train: the optimizer holds exactly the parameters that require grad, the base weights do
  not move, the adapters do, and the parameter counts (all / trainable) are logged at step 0;
- a checkpoint holds the adapter weights as safetensors and the optimizer/scheduler state, nothing of the
  base; a run resumed from it at step 3 logs the same losses at steps 4-6 as the run that went on, and ends
  with the same adapter weights; a checkpoint of another `model.lora` is refused naming the file;
- under DeepSpeed (ZeRO 0, 2, 3 in bf16; one process on CPU/gloo) the checkpoint's module state holds the
  adapters only, and a fresh updater loaded from it steps to the same losses as the one that wrote it;
- the export is PEFT's adapter directory, which `PeftModel.from_pretrained` loads on a freshly built base to
  the same logits; with `export.merge_lora` the merged full model in `<export>/merged` gives the same logits
  without PEFT; `merge_lora` on a model without adapters is an error naming the key.

    pytest tests/platform/train/test_adapters.py -q          # about 40 s
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from safetensors.torch import load_file

from mdm.platform.config import load_config
from mdm.platform.train.adapters import PARAMS_TOTAL, PARAMS_TRAINABLE
from mdm.platform.train.checkpoint import cleanup, write_export
from mdm.platform.train.safe_load import CheckpointError, load_plain
from mdm.platform.train.sources import MemoryBatches
from mdm.platform.train.trainer import Trainer
from deepspeed_child import run_child
from test_trainer import BS, N_TRAIN, SEED, TINY, rows

LORA = ["model.lora.r=4", "model.lora.alpha=8", "train.lr=1e-2", "train.logging_steps=1",
        "train.eval_strategy=no", "train.save_strategy=steps", "train.save_steps=3"]


class SavingReporter:
    """Records the losses; takes the checkpoint offered at a save step (kept in `checkpoints`)."""

    keeps_checkpoints = True
    stopping = False

    def __init__(self) -> None:
        self.logged, self.losses, self.checkpoints = [], {}, {}

    def begin(self, kept_through):
        pass

    def log(self, step, metrics):
        self.logged.append((step, metrics))

    def tags(self, tags):
        pass

    def report(self, metrics, save, final):
        self.losses[int(metrics["step"])] = metrics["train/loss"]
        if save is not None:
            self.checkpoints[int(metrics["step"])] = save()


def build(overrides: list[str], reporter: SavingReporter, total: int = 6) -> Trainer:
    from mdm.engines.llada_plus.model_build import build_model
    from mdm.engines.llada_plus.objective import build_objective

    cfg = load_config([], TINY + overrides)
    torch.manual_seed(SEED)
    model = build_model(cfg.model, "tiny")
    source = MemoryBatches(rows(N_TRAIN, 0), None, batch_size=BS, seed=SEED)
    return Trainer(model, build_objective(cfg.train), train_cfg=cfg.train, ds_cfg=cfg.deepspeed, total_steps=total,
                   steps_per_epoch=N_TRAIN // BS, source=source, reporter=reporter, device=torch.device("cpu"))


@pytest.fixture()
def run():
    """A LoRA run of 6 steps with a checkpoint at step 3 (deleted after the test)."""
    reporter = SavingReporter()
    trainer = build(LORA, reporter)
    initial = copy.deepcopy(trainer.module)
    trainer.fit()
    yield trainer, reporter, initial
    for ckpt in reporter.checkpoints.values():
        cleanup(ckpt)


def test_only_the_adapters_train(run):
    trainer, reporter, initial = run
    trainable = {n for n, p in trainer.module.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    in_optimizer = {id(p) for g in trainer.updater.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in trainer.module.parameters() if p.requires_grad}
    before = dict(initial.named_parameters())
    for name, p in trainer.module.named_parameters():
        assert (not torch.equal(p, before[name])) == (name in trainable), name  # adapters moved, the base did not
    total = sum(p.numel() for p in trainer.module.parameters())
    assert reporter.logged[0] == (0, {PARAMS_TOTAL: float(total),
                                      PARAMS_TRAINABLE: float(sum(p.numel() for n, p in
                                                                  trainer.module.named_parameters()
                                                                  if n in trainable))})
    assert reporter.logged[0][1][PARAMS_TRAINABLE] < total / 4


def test_checkpoint_holds_the_adapter_and_optimizer_state_only(run):
    trainer, reporter, _ = run
    ckpt = reporter.checkpoints[3]
    files = set(os.listdir(ckpt.path))
    assert files == {"model.safetensors", "plain_updater.pt", "worker_0.pt", "objective.pt"}, files
    weights = load_file(os.path.join(ckpt.path, "model.safetensors"))
    assert set(weights) == {n for n, p in trainer.module.named_parameters() if p.requires_grad}
    state = load_plain(os.path.join(ckpt.path, "plain_updater.pt"))
    assert set(state) == {"optimizer", "scheduler", "global_step"} and state["global_step"] == 3
    assert len(state["optimizer"]["state"]) == len(weights)  # AdamW moments of the adapters, nothing else


def test_resume_from_the_checkpoint_is_exact(run):
    trainer, reporter, _ = run
    resumed_reporter = SavingReporter()
    resumed = build(LORA, resumed_reporter)
    torch.manual_seed(1234)  # the process's RNG elsewhere: the checkpoint restores it
    resumed.start(reporter.checkpoints[3])
    resumed.train()
    assert sorted(resumed_reporter.losses) == [4, 5, 6]
    assert [resumed_reporter.losses[s] for s in (4, 5, 6)] == [reporter.losses[s] for s in (4, 5, 6)]
    for (name, p), q in zip(resumed.module.named_parameters(), trainer.module.parameters()):
        assert torch.equal(p, q), name
    for ckpt in resumed_reporter.checkpoints.values():
        cleanup(ckpt)


def test_a_checkpoint_of_another_lora_section_is_refused(run):
    _, reporter, _ = run
    other = build(["model.lora.r=4", "model.lora.target_modules=[q_proj]"] + LORA[1:], SavingReporter())
    with pytest.raises(CheckpointError, match=r"model\.safetensors holds other weights than this model trains"):
        other.start(reporter.checkpoints[3])


def test_export_is_a_peft_adapter_and_merge_gives_the_same_model(run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModel

    from mdm.engines.llada_plus.model_build import build_model

    trainer, _, _ = run
    model = trainer.module.eval()
    out = tmp_path / "final"
    write_export(model, None, str(out), merge_lora=True)
    assert {"adapter_config.json", "adapter_model.safetensors", "merged"} <= set(os.listdir(out))
    assert "config.json" not in os.listdir(out)  # no copy of the base
    ids = torch.randint(3, 39, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids).logits
        torch.manual_seed(SEED)
        base = build_model(load_config([], TINY).model, "tiny")
        loaded = PeftModel.from_pretrained(base, str(out)).eval()
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=0)
        merged = AutoModel.from_pretrained(str(out / "merged")).eval()
        assert not any("lora" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_merge_lora_without_adapters_is_an_error(tmp_path):
    from mdm.engines.llada_plus.model_build import build_model

    model = build_model(load_config([], TINY).model, "tiny")
    with pytest.raises(ValueError, match="export.merge_lora: true, but the model has no adapters"):
        write_export(model, None, str(tmp_path / "final"), merge_lora=True)
    assert not (tmp_path / "final").exists()


DEEPSPEED_BODY = """
    from mdm.platform.train.safe_load import DEEPSPEED_SAFE_GLOBALS, load_plain

    TINY = TINY + ["deepspeed.precision=bf16", "model.lora.r=4"]

    def step(up, seed):
        loss = loss_of(up, seed)
        up.backward(loss)
        up.step()
        return float(loss)

    def allow():
        found = []
        for module, name in DEEPSPEED_SAFE_GLOBALS:
            found += [getattr(importlib.import_module(module), name, None)]
        return tuple(c for c in found if c is not None)

    out = []
    for stage in (0, 2, 3):
        cfg = load_config([], TINY + [f"deepspeed.zero_stage={stage}"])
        def updater():
            torch.manual_seed(0)
            return DeepSpeedUpdater(build_model(cfg.model, "tiny"), cfg.deepspeed, cfg.train, total_steps=5,
                                    world_size=1)
        a = updater()
        trained = sorted(n for n, p in a.module.named_parameters() if p.requires_grad)
        for s in range(2):
            step(a, s)
        d = tempfile.mkdtemp()
        a.save(d, 0)
        states = [f for f in os.listdir(os.path.join(d, "ds")) if f.endswith("model_states.pt")][0]
        module = load_plain(os.path.join(d, "ds", states), allow=allow())["module"]
        went_on = [step(a, s) for s in (2, 3)]
        b = updater()
        b.load(d)
        out.append({"stage": stage, "saved": sorted(module), "trained": trained, "went_on": went_on,
                    "resumed": [step(b, s) for s in (2, 3)]})
    print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_deepspeed_checkpoints_hold_the_adapters_and_resume_exactly():
    results = run_child(DEEPSPEED_BODY)
    assert [r["stage"] for r in results] == [0, 2, 3]
    for r in results:
        assert r["saved"] == r["trained"] and all(".lora_" in n for n in r["saved"]), r["stage"]
        assert r["resumed"] == r["went_on"], r

"""The memory plan's state bytes against what DeepSpeed itself holds, ZeRO 0-3, fp32 and bf16, full and LoRA.

One DeepSpeed process on CPU/gloo (in a child process, so this one keeps no process group), through the
Trainer's `DeepSpeedUpdater`: after a backward and a real optimizer step, the sum of numel x element size of
- the weights (ZeRO-3: each parameter's partition, `ds_tensor`),
- the gradients DeepSpeed keeps (ZeRO 0: `param.grad`; 1-2: `averaged_gradients`; 3: its flat gradient buffer),
- the optimizer state (the wrapped AdamW's state plus DeepSpeed's float32 master partitions)
equals the plan's weights, gradients and optimizer state on one GPU. With one process a partition is the whole,
so this checks the per-stage formulas at N = 1 (the division by N is checked in test_memory_plan.py);
DeepSpeed's bucket buffers (its defaults, declared in memory_plan.py) are not measured here.

    pytest tests/platform/train/test_memory_plan_deepspeed.py -q      # about 30 s
"""

from __future__ import annotations

import pytest
from deepspeed_child import run_child

BODY = """
    from mdm.platform.train.memory_plan import plan_memory

    def nbytes(tensors):
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def flat(obj):
        if isinstance(obj, torch.Tensor):
            return [obj]
        items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else []
        return [t for x in items for t in flat(x)]

    def held(updater, stage):
        opt, params = updater.engine.optimizer, list(updater.module.parameters())
        weights = nbytes(getattr(p, "ds_tensor", p) for p in params)
        if stage == 0:
            grads = nbytes(p.grad for p in params)
        elif stage < 3:
            grads = nbytes(flat(opt.averaged_gradients))
        else:
            grads = nbytes([opt.grad_partitions_flat_buffer])
        return weights, grads

    out = []
    for stage in (0, 1, 2, 3):
        for precision in ("fp32", "bf16"):
            for lora in ([], ["model.lora.r=4"]):
                cfg = load_config([], TINY + [f"deepspeed.zero_stage={stage}", f"deepspeed.precision={precision}"]
                                  + lora)
                torch.manual_seed(0)
                up = DeepSpeedUpdater(build_model(cfg.model, "tiny"), cfg.deepspeed, cfg.train, total_steps=3,
                                      world_size=1)
                loss = loss_of(up, 1, noise_seed=2)
                up.backward(loss)
                weights, grads = held(up, stage)
                assert up.step()
                opt = up.engine.optimizer
                inner = getattr(opt, "optimizer", opt)
                state = flat([s for s in inner.state.values()])
                masters = [getattr(opt, n, None) for n in ("fp32_groups", "single_partition_of_fp32_groups",
                                                           "fp32_partitioned_groups_flat")]
                optimizer = nbytes(state) + sum(nbytes(flat(m)) for m in masters if m)
                plan = plan_memory(cfg, gpus=1, gpu_gib=80).state
                out.append({"case": f"ZeRO-{stage} {precision} {'lora' if lora else 'full'}",
                            "held": [weights, grads, optimizer],
                            "planned": [plan.weights, plan.gradients, plan.optimizer]})
    print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_planned_state_equals_what_deepspeed_holds_at_zero_0_to_3():
    results = run_child(BODY)
    assert len(results) == 16
    wrong = [r for r in results if r["held"] != r["planned"]]
    assert not wrong, wrong
    assert all(min(r["held"]) > 0 for r in results)  # every kind was found and measured

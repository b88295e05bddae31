"""The weights `mdm rl` pushes to its rollout actors under DeepSpeed ZeRO-3, where each rank holds only a
shard of every parameter: `rl.worker.learner_weights` gathers them whole, before and after an optimizer step,
equal to DeepSpeed's own full copy of each parameter (`deepspeed.utils.safe_get_full_fp32_param`), for a full
fine-tune and for LoRA (the adapters). One DeepSpeed process on CPU/gloo in a child (deepspeed_child.py); the
gathering across two ranks runs in test_rl.py's on-policy run.

    pytest tests/platform/rl/test_rl_zero3.py -q      # about 30 s
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from deepspeed_child import run_child  # noqa: E402

BODY = """
    from deepspeed.utils import safe_get_full_fp32_param
    from mdm.platform.rl.worker import learner_weights, partitioned

    def equal(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    out = []
    for lora in ([], ["model.lora.r=4"]):
        cfg = load_config([], TINY + ["deepspeed.zero_stage=3"] + lora)
        torch.manual_seed(0)
        model = build_model(cfg.model, "tiny")
        before = learner_weights(model)
        up = DeepSpeedUpdater(model, cfg.deepspeed, cfg.train, total_steps=3, world_size=1)
        sharded = partitioned(up.module) and all(p.numel() == 0 for p in up.module.parameters())
        first = learner_weights(up.module)
        up.backward(loss_of(up, 1))
        assert up.step()
        after = learner_weights(up.module)
        full = {n: safe_get_full_fp32_param(p) for n, p in up.module.named_parameters() if p.requires_grad}
        out.append({"case": "lora" if lora else "full", "sharded": sharded, "n": len(after),
                    "start": equal(first, before), "moved": not equal(after, before),
                    "deepspeeds": all(torch.equal(after[n], full[n]) for n in full) and len(full) > 0,
                    "buffers": sorted(set(after) - set(full)) == sorted(set(before) - set(full))})
    print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
def test_learner_weights_gather_zero3_shards_whole():
    results = run_child(BODY)
    assert [r["case"] for r in results] == ["full", "lora"]
    for r in results:
        assert r["sharded"] and r["n"] > 0, r  # ZeRO-3 really partitioned the module: no rank holds a whole one
        assert r["start"] and r["moved"] and r["deepspeeds"] and r["buffers"], r

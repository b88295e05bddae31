"""A one-process DeepSpeed world (CPU, gloo) in a child process, for tests that need DeepSpeed's real state
without leaving a process group in the test process.

    results = run_child(BODY)     # BODY: Python after PREAMBLE; it prints one line "RESULT <json>"

PREAMBLE starts the process group and defines `V`, `TINY` (a 2-layer LLaDA with DeepSpeed on; a body adds
its own `--set` pairs), `batch(seed)` (a random micro-batch) and `loss_of(up, seed)` (the diffusion loss of
`batch(seed)` on the updater's module), with the imports the bodies use.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from typing import Any

PREAMBLE = textwrap.dedent("""
    import importlib, json, os, sys, tempfile, torch
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import torch.distributed as dist
    dist.init_process_group("gloo", rank=0, world_size=1)
    from mdm.engines.llada_plus.loss import diffusion_loss
    from mdm.engines.llada_plus.model_build import build_model
    from mdm.platform.config import load_config
    from mdm.platform.train.updater import DeepSpeedUpdater

    V = 96
    TINY = ["model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.mlp_hidden_size=96",
            f"model.vocab_size={V}", f"model.mask_token_id={V - 1}", "model.eos_token_id=2", "model.pad_token_id=0",
            "train.batch_size_per_gpu=2", "train.max_len=16", "deepspeed.enabled=true", "train.lr=1e-2"]

    def batch(seed):
        ids = torch.randint(3, V - 1, (2, 16), generator=torch.Generator().manual_seed(seed))
        return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}

    def loss_of(up, seed, noise_seed=None):
        noise = torch.Generator().manual_seed(seed if noise_seed is None else noise_seed)
        loss, _ = diffusion_loss(up.module, batch(seed), torch.full((2,), 0.5), None, mask_id=V - 1, generator=noise)
        return loss
""")


def run_child(body: str, timeout: float = 600) -> Any:
    """Run PREAMBLE + `body` in a fresh Python on a free loopback port; the JSON after its "RESULT " line."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-c", PREAMBLE + textwrap.dedent(body), str(port)], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])

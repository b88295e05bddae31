"""Sampler speed, side by side: (a) `llada` one prompt at a time, (b) `llada` batched, (c) `fast` dual cache
batched with a threshold. Prints tokens/s, forward passes and ratios to (a).

    python bench/sampler_speed.py                                    # CPU: small LLaDA, 32 prompts
    python bench/sampler_speed.py --device cuda --arch llada-8b --dtype bf16 --n_single 2 --gen_length 256

The model is a seeded random LLaDA whose output head is scaled so predictions are confident (as a trained
model's are; random logits alone make threshold decoding meaningless) and whose [MASK] row is zeroed, as in
the reference fixture. The median top-1 probability on masked positions is printed as a check.

Last, the batching ceiling: the same block-logits forwards (i) one sequence at a time, (ii) in padded batches.
(b) runs exactly (a)'s forwards, only batched, so (ii)/(i) bounds what batching the exact sampler can gain on
the device. Measured on an idle 2-core CPU (2 threads, --n_single 8): ceiling 1.3x, (b) 1.2x, (c) 8.3x.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from mdm.engines.llada_plus.config import SamplerConfig
from mdm.engines.llada_plus.model import LLaDAConfig, LLaDAModelLM, llada_8b_config
from mdm.engines.llada_plus.sampling.sampler import logits_for
from mdm.engines.llada_plus.sampling.batch import SampleBatch
from mdm.platform.infer.generation.generate import generate

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build(arch: str, device: str, dtype: torch.dtype, head_scale: float) -> LLaDAModelLM:
    if arch == "small":
        cfg = LLaDAConfig(d_model=256, n_heads=8, n_kv_heads=8, n_layers=4, mlp_hidden_size=768, vocab_size=2048,
                          embedding_size=2048, mask_token_id=2047, eos_token_id=2046, pad_token_id=2046,
                          max_sequence_length=1024)
    else:
        cfg = llada_8b_config()
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build directly in the target dtype and device: 8B fp32 would not fit
    try:
        with torch.device(device):
            model = LLaDAModelLM(cfg)
    finally:
        torch.set_default_dtype(old)
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head.mul_(head_scale)
        head[cfg.mask_token_id] = 0
    return model.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Meter:
    """Accumulated wall seconds, process CPU seconds, forward passes and prompts of one sampler setting."""

    def __init__(self, name: str, fn, batch: int) -> None:
        self.name, self.fn, self.batch = name, fn, batch
        self.wall = self.cpu = 0.0
        self.nfe = self.n = 0

    def run(self, prompts: list[list[int]], device: str) -> None:
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(prompts), self.batch):
            self.nfe += self.fn(prompts[i:i + self.batch]).nfe
        sync(device)
        self.wall += time.perf_counter() - t0
        self.cpu += time.process_time() - c0
        self.n += len(prompts)


@torch.no_grad()
def forward_ceiling(model: LLaDAModelLM, chunks: list, args: argparse.Namespace, reps: int = 3) -> tuple:
    """CPU and wall seconds per sequence of one sampler-style forward (logits over one block) for each chunk's
    prompts + masks, (i) one sequence at a time, (ii) the chunk as one padded batch. Their ratio is the most any
    exact sampler can gain from batching on this device: (b) runs the same forwards, only batched."""
    c, out = model.config, []
    for batched in (False, True):
        t0, c0, n = time.perf_counter(), time.process_time(), 0
        for _ in range(reps):
            for chunk in chunks:
                for group in ([chunk] if batched else [[p] for p in chunk]):
                    b = SampleBatch.build(group, args.gen_length, c.mask_token_id, c.eos_token_id, args.device)
                    s = b.gen_start
                    logits_for(model, b.x, slice(s, s + args.block_length), attention_mask=b.attention_mask,
                               position_ids=b.position_ids)
                    n += len(group)
        sync(args.device)
        out.append(((time.perf_counter() - t0) / n, (time.process_time() - c0) / n))
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", choices=("small", "llada-8b"), default="small")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    ap.add_argument("--n_prompts", type=int, default=32)
    ap.add_argument("--n_single", type=int, default=None, help="prompts timed one at a time (default: all)")
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--gen_length", type=int, default=128)
    ap.add_argument("--block_length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None, help="default: gen_length")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--prompt_len", type=int, nargs=2, default=(16, 64), metavar=("MIN", "MAX"))
    ap.add_argument("--head_scale", type=float, default=40.0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:  # on a shared, oversubscribed CPU one thread avoids spin-waiting between ops
        torch.set_num_threads(args.threads)

    model = build(args.arch, args.device, DTYPES[args.dtype], args.head_scale)
    c = model.config
    g = torch.Generator().manual_seed(1)
    lens = torch.randint(args.prompt_len[0], args.prompt_len[1] + 1, (args.n_prompts,), generator=g).tolist()
    prompts = [torch.randint(0, c.eos_token_id, (n,), generator=g).tolist() for n in lens]
    steps = args.steps or args.gen_length
    base = dict(gen_length=args.gen_length, block_length=args.block_length, steps=steps)
    llada_cfg = SamplerConfig(name="llada", **base)
    fast_cfg = SamplerConfig(name="fast", cache="dual", threshold=args.threshold, **base)

    def sampler(cfg: SamplerConfig, batch: int):  # the one generation path, `batch` prompts per sampler call
        one_call = dataclasses.replace(cfg, batch_size=batch)
        return lambda b: generate(model, "llada_plus", one_call, b)

    with torch.no_grad():  # confidence check on one prompt + masks
        x = torch.tensor([prompts[0] + [c.mask_token_id] * args.gen_length], device=args.device)
        p = torch.softmax(model(x).logits[0, len(prompts[0]):].float(), -1).max(-1).values
    n_params = sum(t.numel() for t in model.parameters()) / 1e6
    print(f"arch={args.arch} device={args.device} dtype={args.dtype} params={n_params:.1f}M "
          f"prompts={args.n_prompts} len={args.prompt_len} gen={args.gen_length} block={args.block_length} "
          f"steps={steps} threshold={args.threshold} median top-1 prob={p.median().item():.3f} "
          f"threads={torch.get_num_threads()}", flush=True)
    sampler(fast_cfg, 2)(prompts[:2])  # warm-up (allocator, kernels)

    meters = [
        Meter("(a) llada, one prompt at a time", sampler(llada_cfg, 1), 1),
        Meter(f"(b) llada, batched at {args.batch_size}", sampler(llada_cfg, args.batch_size), args.batch_size),
        Meter(f"(c) fast dual cache, batched at {args.batch_size}, threshold {args.threshold}",
              sampler(fast_cfg, args.batch_size), args.batch_size),
    ]
    # Batches group similar prompt lengths (as `generate` does too). The settings take turns chunk by chunk, so a
    # shared machine's changing load hits them alike; (a) times an even share of --n_single prompts per chunk.
    order = sorted(prompts, key=len)
    chunks = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    n_single = args.n_single or len(prompts)
    for j, chunk in enumerate(chunks):
        take = n_single * (j + 1) // len(chunks) - n_single * j // len(chunks)
        meters[0].run(chunk[::max(1, len(chunk) // max(1, take))][:take], args.device)
        meters[1].run(chunk, args.device)
        meters[2].run(chunk, args.device)
        print(f"  chunk {j + 1}/{len(chunks)} done", flush=True)
    # CPU tokens/s (generated tokens per process-CPU second) is the steadier number on a shared machine
    print(f"{'':58s} {'tokens/s':>9s} {'ratio':>6s} {'CPU tok/s':>9s} {'ratio':>6s} {'forwards':>8s} "
          f"{'fwd/prompt':>10s} {'s/forward':>9s}")
    base = None
    for m in meters:
        tps, ctps = m.n * args.gen_length / m.wall, m.n * args.gen_length / m.cpu
        base = base or (tps, ctps)
        print(f"{m.name:58s} {tps:9.1f} {tps / base[0]:5.1f}x {ctps:9.1f} {ctps / base[1]:5.1f}x {m.nfe:8d} "
              f"{m.nfe * m.batch / m.n:10.1f} {m.wall / m.nfe:9.4f}", flush=True)
    one, batched = forward_ceiling(model, chunks, args)
    print(f"batching ceiling: one forward per sequence {one[0] * 1e3:.1f} ms wall / {one[1] * 1e3:.1f} ms CPU alone, "
          f"{batched[0] * 1e3:.1f} / {batched[1] * 1e3:.1f} ms in batches of {args.batch_size}: "
          f"{one[0] / batched[0]:.1f}x wall, {one[1] / batched[1]:.1f}x CPU is the most (b) can gain over (a) here",
          flush=True)

if __name__ == "__main__":
    main()

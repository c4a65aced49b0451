"""Ulysses sequence parallelism: step time on 1 and 2 ranks, all-to-all bytes, and the 8-rank projection.

    python -m benchmarks.parallel                    # CPU, gloo, one thread per rank, float32
    python -m benchmarks.parallel --backend nccl     # one GPU per rank, bfloat16

Measured: the "medium" config (inner dim 512, 8 heads, 2 double + 4 single blocks, random
weights), a 9-frame window of ``--latent`` x ``--latent`` latents, 729 image-embedding tokens and
80 text tokens; the median ``denoise`` time over the timed steps, and the bytes each rank sent
through all-to-all per step (counted by ``UlyssesParallel``). The count is checked against the
formula used for the projection: per attention each rank sends 3/N (q, k, v) and receives back
1/N of the [L, D] tokens, (N-1)/N of each leaving the rank: 4·L·D·bytes·(N-1)/N² per block.

Projected, on paper: the real config (D = 3072, 60 blocks) at the 640 bucket (17,500 image
tokens, 729 image-embedding tokens, 80 text tokens) on 8 ranks, bfloat16: bytes per rank per
step and their time over NVLink (~450 GB/s) and PCIe 4 (~25 GB/s), against a step's compute
time estimated from its FLOPs at ``--tflops`` per GPU (an assumption, printed as such).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from framepack.conditioning import Conditioning
from framepack.distributed.launch import join
from framepack.distributed.sequence import sequence_parallel
from framepack.models.transformer import FramePackTransformer, TransformerConfig

NVLINK_GBPS = 450.0
PCIE4_GBPS = 25.0
REAL_640_TOKENS = 17_500 + 729 + 80  # image stream at 640x608, image embeddings, text


def a2a_bytes_per_rank(tokens: int, dim: int, blocks: int, ranks: int, element_bytes: int) -> float:
    """Bytes one rank sends through all-to-all in one step (q, k, v out, attention back)."""
    padded = -(-tokens // ranks) * ranks
    return blocks * 4 * padded * dim * element_bytes * (ranks - 1) / ranks**2


def step_flops(tokens: int, config: TransformerConfig) -> float:
    """Matmul FLOPs of one step of the block stack: projections and MLPs, plus attention."""
    dim, mlp = config.inner_dim, config.mlp_dim
    double = 2 * tokens * (4 * dim * dim + 2 * dim * mlp)  # qkv + out, MLP in and out
    single = 2 * tokens * (3 * dim * dim + dim * mlp + (dim + mlp) * dim)
    attention = 4 * tokens * tokens * dim
    return config.num_layers * (double + attention) + config.num_single_layers * (single + attention)


def inputs(latent: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, Conditioning]:
    g = torch.Generator().manual_seed(0)
    config = TransformerConfig.preset("medium")
    cond = Conditioning(
        text_embeds=torch.randn(1, 80, config.text_embed_dim, generator=g),
        text_mask=torch.ones(1, 80, dtype=torch.bool),
        pooled=torch.randn(1, config.pooled_projection_dim, generator=g),
        guidance=torch.tensor([10.0]),
        image_embeds=torch.randn(1, 729, config.image_proj_dim, generator=g),
    ).to(device)
    return torch.randn(1, 16, 9, latent, latent, generator=g).to(device, dtype), cond


def rank_main(rank: int, world: int, rendezvous: str, backend: str, latent: int, repeats: int, out: str) -> None:
    torch.set_num_threads(1)
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    dtype = torch.bfloat16 if backend == "nccl" else torch.float32
    join(backend, init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = FramePackTransformer(TransformerConfig.preset("medium")).eval().to(device, dtype)
    latents, cond = inputs(latent, dtype, device)
    prepared = model.prepare(cond, None, latents.shape)
    timestep = torch.tensor([900.0], device=device)
    sync = torch.cuda.synchronize if backend == "nccl" else (lambda: None)
    # One rank runs the unchanged single-process path: the baseline.
    with sequence_parallel(model) if world > 1 else contextlib.nullcontext() as parallel:
        model.denoise(latents, timestep, prepared)  # warm-up
        if parallel is not None:
            parallel.bytes_exchanged = 0
        times = []
        for _ in range(repeats):
            dist.barrier()
            sync()
            start = time.perf_counter()
            model.denoise(latents, timestep, prepared)
            sync()
            times.append(time.perf_counter() - start)
    if rank == 0:
        tokens = 9 * (latent // 2) ** 2 + 729 + 80
        sent = 0 if parallel is None else parallel.bytes_exchanged / repeats
        Path(out).write_text(f"{statistics.median(times)} {sent} {tokens}")
    dist.destroy_process_group()


def measure(world: int, backend: str, latent: int, repeats: int) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "result")
        mp.spawn(rank_main, args=(world, os.path.join(folder, "rdzv"), backend, latent, repeats, out), nprocs=world)
        seconds, sent, tokens = Path(out).read_text().split()
    return float(seconds), float(sent), int(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("gloo", "nccl"), default="gloo")
    parser.add_argument("--latent", type=int, default=24, help="latent height and width (default 24: 192 px)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tflops", type=float, default=400.0, help="assumed dense bf16 TFLOP/s per GPU")
    args = parser.parse_args()

    medium = TransformerConfig.preset("medium")
    element = 2 if args.backend == "nccl" else 4
    print(f"medium config, {args.backend}, latent 9x{args.latent}x{args.latent}")
    base = None
    for world in (1, 2):
        seconds, sent, tokens = measure(world, args.backend, args.latent, args.repeats)
        expected = a2a_bytes_per_rank(
            tokens, medium.inner_dim, medium.num_layers + medium.num_single_layers, world, element
        )
        base = base or seconds
        print(
            f"  {world} rank(s): step {seconds * 1000:8.1f} ms (x{base / seconds:.2f}), {tokens} tokens, "
            f"all-to-all sent per rank per step {sent / 1e6:8.2f} MB (formula {expected / 1e6:.2f} MB)"
        )

    real = TransformerConfig.preset("framepack")
    blocks = real.num_layers + real.num_single_layers
    sent = a2a_bytes_per_rank(REAL_640_TOKENS, real.inner_dim, blocks, 8, 2)
    compute = step_flops(REAL_640_TOKENS, real) / (args.tflops * 1e12)
    print(f"projected: real config, 640 bucket ({REAL_640_TOKENS} tokens), 8 ranks, bfloat16")
    print(f"  all-to-all per rank per step: {sent / 1e9:.2f} GB")
    print(
        f"  compute per step on one GPU at {args.tflops:.0f} TFLOP/s (assumed): {compute:.2f} s; per rank of 8: {compute / 8:.3f} s"
    )
    for name, rate in (("NVLink", NVLINK_GBPS), ("PCIe 4", PCIE4_GBPS)):
        seconds = sent / (rate * 1e9)
        print(
            f"  {name} ~{rate:.0f} GB/s: {seconds * 1000:.0f} ms per step = {seconds / (compute / 8) * 100:.0f} % of a rank's compute"
        )


if __name__ == "__main__":
    main()

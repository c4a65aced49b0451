"""The planner's activation estimates against the activations a run measures.

``memory.planner.activation_estimates`` gives each phase's peak activation bytes from the
model widths and the video size. Here the real-size models (fake weights: shapes, no
memory, see ``framepack.dry_run``) run one whole generation on a claimed ``cuda`` device
with every weight resident, at the 640 bucket's largest frame and a prompt long enough to
be cut at the maximum length (the estimates' worst case). A phase's measured activations
are its device peak minus every weight: the storages the dry run counts, exactly as a
CUDA allocator would hold them (no fragmentation, which ``DEVICE_RESERVE_BYTES`` covers).

Tolerance: an estimate must never be below what the phase measured (a plan that counts too
little runs out of memory mid-video) and may exceed it by at most the per-phase factor in
``MAX_RATIO``: the ratio measured when the test was written (bf16; in brackets) plus about
5 %, so an estimate that drifts from the models must be re-measured. The estimates are
deliberately upper bounds: text counts the longest prompt and its CLIP encoder on top of the
Llama MLP; image and sampling count SigLIP's 729 image tokens and the full 512 padded text
tokens; the VAE multipliers are constants measured on the real VAE (``benchmarks/dry_run.py``).

Why the real size and not the tiny models: the estimates are written in the proportions of
the real models (Llama's 14336-wide MLP dominates its activations, not the 351 x 351
attention scores), which the tiny models do not have: the tiny Llama at the longest prompt
holds about 3x its estimate, all attention scores. The tiny pipeline's placement is checked
against its plan in ``tests/test_dry_run.py`` instead.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.dry_run import real_size_components
from framepack import FramePackPipeline, GenerationConfig
from framepack.dry_run import CudaDryRun
from framepack.memory.planner import activation_estimates
from framepack.memory.residency import ModuleTensors

MAX_RATIO = {
    "text": 1.6,  # measured 1.54
    "image": 1.3,  # 1.23
    "sampling": 1.3,  # 1.24
    "decode": 1.08,  # 1.03
}


def test_activation_estimates_bound_the_measured_peaks_of_the_real_models() -> None:
    config = GenerationConfig(seconds=1.0, steps=1, resolution=640, seed=0)
    image = np.full((416, 960, 3), 128, np.uint8)  # the largest frame of the 640 buckets
    with CudaDryRun(total_gib=80, bf16=True) as dry:
        pipe = FramePackPipeline(real_size_components(dry, torch.bfloat16), device="cuda")
        weights = 0
        for module in pipe.components.modules().values():  # all resident, as on a card with room
            tensors = ModuleTensors(module)
            tensors.assign([t.to("cuda") for t in tensors.tensors])
            weights += tensors.nbytes
        with dry.pipeline_phases(pipe):
            pipe.generate(image, "a man dances " * 200, config)
        estimates, _ = activation_estimates(pipe.components.modules(), config.resolution, config.window)
        measured = {phase: dry.counters.phase_peaks[phase] - weights for phase in MAX_RATIO}
    for phase, limit in MAX_RATIO.items():
        ratio = estimates[phase] / measured[phase]
        assert 1.0 <= ratio <= limit, f"{phase}: estimate {estimates[phase]} / measured {measured[phase]} = {ratio:.3f}"

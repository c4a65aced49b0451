"""What a device can do: its published peak rates, and how much of them a generation gets.

A ``DeviceProfile`` holds the rates the time model divides by. The GPU figures are the
vendors' published peaks (each row names its spec sheet); the *efficiency* factors turn a
peak into what a run sustains and are assumptions, stated here once for every card:

* ``MATMUL_EFFICIENCY`` 0.7: the large bf16/fp16 GEMMs of a step (thousands of tokens x
  3072 x 3072..12288) are the shapes cuBLAS runs closest to peak; a whole step also pays
  the tails of small GEMMs (modulation, refiner) and clock limits under sustained load.
* ``ATTENTION_EFFICIENCY`` 0.6: fused SDPA kernels reach a smaller share of the tensor
  peak than GEMMs (softmax and rescaling between the two products).

The one GPU timing in this repository checks them: the README quotes the official app at
2.5 s per frame on an RTX 4090 without a cache (its attention backend unstated; sage or
flash attention would make it faster). These factors predict 3.1 s per frame for a 5 s
video at the 640 bucket there (``framepack plan --device-profile rtx4090``), 25 % slower.
* ``COPY_EFFICIENCY`` 0.8: page-locked host->device copies over PCIe reach about 80 % of
  the link's nominal rate (protocol overhead).
* ``BANDWIDTH_EFFICIENCY`` 0.7 for the element-wise passes (norms, modulation, RoPE, GELU),
  which stream memory rather than compute.

These are the numbers to replace with ``--measure`` (``measure.py``), which times the real
shapes on the device at hand. The ``cpu`` row is this project's CPU reference machine, from
its own benchmarks (README: the medium step's matmuls run at the ``torch.mm`` float32 rate,
178 GFLOP/s on 2 cores, and its SDPA flash attention at about half that share of a step); a
different CPU should ``--measure``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import ConfigError
from .timing import CallTiming

GB = 10**9  # the vendors' unit for memory bandwidth and size
TFLOPS = 10**12
# PCIe x16 nominal data rate per direction, GB/s (PCI-SIG: 8 / 16 / 32 GT/s, 128b/130b coding).
PCIE_X16_GBPS = {3: 15.75, 4: 31.5, 5: 63.0}

MATMUL_EFFICIENCY = 0.7
ATTENTION_EFFICIENCY = 0.6
COPY_EFFICIENCY = 0.8
BANDWIDTH_EFFICIENCY = 0.7
DISK_READ_BYTES_PER_S = 500 * 10**6  # a SATA SSD's sequential read (NVMe: 2-7 GB/s); --measure reads the real one
# Assumed: libx264 on a few desktop cores encodes 640x480 at crf 16 at ~150 frames per second;
# --measure encodes frames of the bucket's size with the pipeline's own writer instead.
VIDEO_ENCODE_PIXELS_PER_S = 150 * 640 * 480


@dataclass(frozen=True)
class DeviceProfile:
    """Sustained rates of one device (bytes and FLOPs per second), already net of efficiency."""

    name: str
    matmul_flops: float  # per second, in the compute dtype
    attention_flops: float
    conv_flops: float  # the VAE decode's FLOPs per second (measured: a real decode's, norms and copies included)
    memory_bandwidth: float  # bytes per second, for element-wise passes
    host_to_device: float | None  # bytes per second; None: the device is the host (nothing to copy)
    memory_bytes: int | None  # device memory; None: the host's RAM
    bf16_native: bool
    kernel_overhead_s: float  # fixed cost of one kernel launch (and the Python around it)
    disk_read: float = DISK_READ_BYTES_PER_S
    # H.264 encoding on the host (libx264 via PyAV, crf 16), pixels of frames per second
    video_encode_pixels: float = VIDEO_ENCODE_PIXELS_PER_S
    # Host bytes a CPU decode holds per output pixel of a temporal tile (measured: the decode
    # probe's peak RSS growth); None: the planner's activation estimate stands alone.
    decode_bytes_per_pixel: float | None = None
    # The same for the encode of the start image, per input pixel (the encode probe's).
    encode_bytes_per_pixel: float | None = None
    # The VAE encode's FLOPs per second (measured: a real cold encode's); None: ``conv_flops``.
    vae_encode_flops: float | None = None
    # Seconds each temporal tile of a decode costs beside its FLOPs (measured: fitted through a
    # full tile and a one-frame tile, as a decode's last tile often is); 0: FLOPs alone.
    decode_tile_fixed_s: float = 0.0
    # (latent frames, measured seconds over the fitted line's) of the temporal tile sizes a run
    # decodes that are shorter than the fit's full tile, each timed once by ``--measure`` at the
    # latent size ``decode_tile_latent`` (height, width): a kernel's speed depends on its shape
    # (a 4-frame tile of a 128 px decode took longer than a 5-frame one here), which FLOPs cannot
    # tell. A size not listed, a decode of another latent size or in spatial tiles: 1.
    decode_tile_factors: tuple[tuple[int, float], ...] = ()
    decode_tile_latent: tuple[int, int] | None = None
    # A transformer call's parts and the sampler's step as timed on the device (``call_probe.py``);
    # None: the call's time is its FLOPs and bytes at the rates above.
    call_timing: CallTiming | None = None
    source: str = "table"  # "table" or "measured"

    @property
    def is_host(self) -> bool:
        return self.host_to_device is None

    def with_measured(self, **rates: object) -> DeviceProfile:
        return replace(self, source="measured", **rates)


def _gpu(
    name: str,
    *,
    tensor_tflops: float,
    memory_gb: float,
    bandwidth_gbps: float,
    pcie_gen: int,
    lanes: int = 16,
    bf16_native: bool = True,
) -> DeviceProfile:
    peak = tensor_tflops * TFLOPS
    return DeviceProfile(
        name=name,
        matmul_flops=peak * MATMUL_EFFICIENCY,
        attention_flops=peak * ATTENTION_EFFICIENCY,
        conv_flops=peak * MATMUL_EFFICIENCY,  # cuDNN runs them as implicit GEMMs on the tensor cores
        memory_bandwidth=bandwidth_gbps * GB * BANDWIDTH_EFFICIENCY,
        host_to_device=PCIE_X16_GBPS[pcie_gen] * lanes / 16 * GB * COPY_EFFICIENCY,
        memory_bytes=int(memory_gb * GB),
        bf16_native=bf16_native,
        kernel_overhead_s=10e-6,  # a CUDA launch plus PyTorch's dispatch, a few microseconds each
    )


# Dense fp16/bf16 tensor throughput with float32 accumulation (what PyTorch's matmuls use);
# GeForce cards run it at half their fp16-accumulate rate, which the spec sheets list first.
PROFILES: dict[str, DeviceProfile] = {
    # NVIDIA Ampere GA102 whitepaper, appendix (GA106 column, RTX 3060): 25.6 TFLOPS fp16 tensor
    # with fp32 accumulate (dense), 12 GB GDDR6, 360 GB/s, PCIe 4.0 x16.
    "rtx3060": _gpu("rtx3060", tensor_tflops=25.6, memory_gb=12, bandwidth_gbps=360, pcie_gen=4),
    # NVIDIA Ampere GA102 whitepaper, table 9 (RTX 3090): 71 TFLOPS fp16 tensor with fp32
    # accumulate (dense), 24 GB GDDR6X, 936 GB/s, PCIe 4.0 x16.
    "rtx3090": _gpu("rtx3090", tensor_tflops=71.0, memory_gb=24, bandwidth_gbps=936, pcie_gen=4),
    # NVIDIA Ada Lovelace whitepaper, appendix (AD106, RTX 4060 Ti 8 GB): 44.1 TFLOPS fp16 tensor
    # with fp32 accumulate (dense), 8 GB GDDR6, 288 GB/s, PCIe 4.0 x8.
    "rtx4060ti-8gb": _gpu("rtx4060ti-8gb", tensor_tflops=44.1, memory_gb=8, bandwidth_gbps=288, pcie_gen=4, lanes=8),
    # NVIDIA Ada Lovelace whitepaper, appendix (AD104, RTX 4070): 58.3 TFLOPS fp16 tensor with
    # fp32 accumulate (dense), 12 GB GDDR6X, 504 GB/s, PCIe 4.0 x16.
    "rtx4070": _gpu("rtx4070", tensor_tflops=58.3, memory_gb=12, bandwidth_gbps=504, pcie_gen=4),
    # NVIDIA Ada Lovelace whitepaper, table 1 (RTX 4090): 165.2 TFLOPS fp16 tensor with fp32
    # accumulate (dense), 24 GB GDDR6X, 1008 GB/s, PCIe 4.0 x16.
    "rtx4090": _gpu("rtx4090", tensor_tflops=165.2, memory_gb=24, bandwidth_gbps=1008, pcie_gen=4),
    # NVIDIA A100 datasheet (80 GB SXM): 312 TFLOPS bf16 tensor (dense), 80 GB HBM2e,
    # 2039 GB/s, PCIe 4.0 host link.
    "a100": _gpu("a100", tensor_tflops=312, memory_gb=80, bandwidth_gbps=2039, pcie_gen=4),
    # NVIDIA H100 datasheet (SXM): 989 TFLOPS bf16 tensor (dense; 1979 is with sparsity),
    # 80 GB HBM3, 3350 GB/s, PCIe 5.0 host link.
    "h100": _gpu("h100", tensor_tflops=989, memory_gb=80, bandwidth_gbps=3350, pcie_gen=5),
    # This project's 2-core CPU benchmark machine, float32 (README, kernel_floor/transformer_step):
    # torch.mm 178 GFLOP/s; SDPA's flash kernel is half of a medium step whose matmuls are
    # ~80 % of it, about 45 GFLOP/s. Assumed, not measured here: conv3d at a third of the mm rate,
    # element-wise passes ~5 GB/s, ~8 us per op in PyTorch (--measure times all of them).
    "cpu": DeviceProfile(
        name="cpu",
        matmul_flops=178e9,
        attention_flops=45e9,
        conv_flops=60e9,
        memory_bandwidth=5 * GB,
        host_to_device=None,
        memory_bytes=None,
        bf16_native=False,
        kernel_overhead_s=8e-6,
    ),
}


def device_profile(name: str) -> DeviceProfile:
    """The named profile; ConfigError naming the choices for an unknown name."""
    key = name.strip().lower()
    if key not in PROFILES:
        raise ConfigError(f"device profile {name!r}: unknown; choose one of {', '.join(PROFILES)} (or --measure)")
    return PROFILES[key]

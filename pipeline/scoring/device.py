"""Device, precision and batch-size rules of the scorer: where and how fast the frozen tower runs.

These decide only speed (and floating-point rounding): which device, whether to autocast to bf16/fp16,
how many views go through one forward and how many images one loader batch holds. What they resolve to
is recorded in the store attributes and its fingerprint (pipeline.scoring.loop), so a resumed run never
mixes shards computed under other rules. Kept apart from the loop so benchmarks and tests can ask what
a machine would use without scoring anything (docs/design.md#scale, docs/scaling.md).
"""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Input pixels (views × side²) per forward on CPU. 2 M pixels = 480 views of a 64 px tower (the embedded
# default: one forward per batch) or 40 views of a 224 px one, whose activations then stay in a few hundred
# MB while the convolution GEMMs (M = views × H × W) remain large enough to run near the matmul peak.
CPU_FORWARD_PIXELS = 1 << 21
# Bytes of device memory per input pixel at the peak of a half-precision forward (widest early activations
# of a ResNet stem, a few alive at once), with margin; sizes CUDA forwards from the free memory.
CUDA_BYTES_PER_PIXEL = 256
CUDA_MAX_BATCH_VIEWS = 4096


def cpu_flags() -> set[str]:
    """Instruction-set flags of this CPU (Linux /proc/cpuinfo: x86 `flags`, ARM `Features`); empty if unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """True when the CPU multiplies bf16 in hardware (x86 AVX512-BF16 or AMX-BF16, ARM BF16).

    Elsewhere oneDNN/MKL emulate bf16 (on AVX2 a bf16 matmul runs ~100× slower than fp32), so autocast
    would only cost speed and precision.
    """
    flags = cpu_flags() if flags is None else flags
    if flags & {"avx512_bf16", "amx_bf16"}:
        return True
    if "bf16" in flags:  # aarch64 FEAT_BF16; only trust it where oneDNN agrees
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


# the variables that hold MKL's and oneDNN's kernels below the CPU's own level (ATEN_CPU_CAPABILITY holds ATen's,
# which torch reports itself): with all three at AVX2 an AVX-512 machine computes as an AVX2-only one does
LIBRARY_ISA_VARIABLES = (("MKL", "MKL_ENABLE_INSTRUCTIONS"), ("oneDNN", "ONEDNN_MAX_CPU_ISA"),
                         ("oneDNN", "DNNL_MAX_CPU_ISA"))


def library_isa_limits(environ: dict[str, str] | None = None) -> str:
    """The limits set on MKL's and oneDNN's kernels, e.g. `MKL AVX2, oneDNN AVX2`; empty where none is set."""
    environ = os.environ if environ is None else environ
    limits: dict[str, str] = {}
    for library, variable in LIBRARY_ISA_VARIABLES:
        if environ.get(variable) and library not in limits:
            limits[library] = environ[variable].upper()
    return ", ".join(f"{library} {isa}" for library, isa in limits.items())


def cpu_class(device: torch.device) -> str:
    """The class of machine the scores were computed on, as the figures differ by it: on a CPU, torch's kernel
    level (`AVX2`, `AVX512`; ATEN_CPU_CAPABILITY can lower it), the limits set on MKL's and oneDNN's kernels
    where there are any, and whether it multiplies bf16 natively; on a GPU, its name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    limits = library_isa_limits()
    held = f" ({limits})" if limits else ""
    return f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()} kernels{held}, {bf16}"


def resolve_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`: the process's GPU (`cuda:local_rank` modulo the count) if CUDA is available, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        requested = f"cuda:{local_rank % max(1, torch.cuda.device_count())}"
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {requested!r}")
    return device


def resolve_precision(requested: str, device: torch.device, native_bf16: bool | None = None) -> str:
    """The compute precision actually used: `fp32`, `bf16` or `fp16`.

    `auto`: fp16 autocast on CUDA (CLIP towers were trained in fp16; more mantissa than bf16), bf16 autocast
    on CPUs with native bf16, fp32 elsewhere. An explicit value is honoured as given.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu" and (cpu_has_native_bf16() if native_bf16 is None else native_bf16):
        return "bf16"
    return "fp32"


def resolve_batch_views(requested: int | None, image_size: int, device: torch.device,
                        free_bytes: int | None = None) -> int:
    """Views per forward. None = chosen for the device: a pixel budget on CPU (see CPU_FORWARD_PIXELS), a
    share of the free memory on CUDA."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"batch_views must be >= 1, got {requested}")
        return requested
    pixels = image_size * image_size
    if device.type == "cuda":
        if free_bytes is None:
            free_bytes = torch.cuda.mem_get_info(device)[0]
        return max(1, min(CUDA_MAX_BATCH_VIEWS, int(0.5 * free_bytes) // (pixels * CUDA_BYTES_PER_PIXEL)))
    return max(1, CPU_FORWARD_PIXELS // pixels)


def images_per_batch(batch_images: int, batch_views: int, views_per_image: int) -> int:
    """Images decoded and handed over together: at most `batch_images`, and no more than fill one forward, so
    that the views held in memory stay near `batch_views` whatever the resolution (at least one image)."""
    return max(1, min(batch_images, batch_views // views_per_image))


def forward_slices(n: int, batch_views: int) -> list[slice]:
    """Split n views into the fewest forwards of at most `batch_views`, of near-equal size (no tiny tail)."""
    if n <= 0:
        return []
    parts = math.ceil(n / batch_views)
    size = math.ceil(n / parts)
    return [slice(a, min(a + size, n)) for a in range(0, n, size)]


def machine_summary() -> str:
    """One line naming the CPU features that decide the precision (for logs and benchmarks)."""
    flags = cpu_flags()
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "bf16") if f in flags]
    return f"{platform.machine()} {'/'.join(isa) or 'unknown ISA'}, {torch.get_num_threads()} threads"


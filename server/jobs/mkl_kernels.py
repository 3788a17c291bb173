"""torch's MKL told to use its AVX-512 kernels on AMD CPUs that have them.

MKL (linked into torch's CPU library) chooses its kernels by CPU vendor: on an AMD CPU it
runs generic AVX2 code even where the CPU has AVX-512 (``MKL_VERBOSE`` names "Intel(R)
Architecture processors" either way). On this project's 2-core AMD EPYC machine its
single-thread matrix products ran at 60-110 GFLOP/s that way and at 220-260 GFLOP/s with the
AVX-512 kernels, and the demo's batched restricted LLCs took 15 s instead of 19 s
(bench/RESULTS.md). MKL's environment variables cannot lift the vendor check any more
(``MKL_DEBUG_CPU_TYPE`` was removed in 2020); what does is a library defining MKL's
vendor-check function ``mkl_serv_intel_cpu_true``, loaded into the global symbol scope
before torch is, so that MKL's calls resolve to it. ``make`` builds that library
(``mkl_cpu_true.c``) into the virtual environment when a C compiler is there.

Only an AMD CPU with the AVX-512 subsets of MKL's AVX-512 kernels gets it; elsewhere
nothing changes. Results are the same products to rounding (other kernels sum in another
order). ``settings.mkl_avx512_on_amd = false`` turns it off.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from pathlib import Path

log = logging.getLogger("phaseboard.jobs")

SHIM_PATH = Path(sys.prefix) / "lib" / "phaseboard" / "libmkl_cpu_true.so"
# The AVX-512 subsets of Intel's Skylake-SP, which MKL's AVX-512 kernels assume.
AVX512_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})

ON = "on"  # MKL now dispatches by the CPU's features
OFF = "off (settings.mkl_avx512_on_amd)"
NOT_X86_LINUX = "not an x86-64 Linux machine"
NOT_AMD_AVX512 = "not an AMD CPU with AVX-512"
UNCONCERNED = (OFF, NOT_X86_LINUX, NOT_AMD_AVX512)  # nothing to tell the user
_loaded: list[ctypes.CDLL] = []  # kept referenced: unloading would leave MKL a dangling symbol


def amd_with_avx512(cpuinfo: str) -> bool:
    """Whether ``/proc/cpuinfo``'s first processor is an AMD CPU with MKL's AVX-512 subsets."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    return fields.get("vendor_id") == "AuthenticAMD" and flags >= AVX512_FLAGS


def read_cpuinfo() -> str:
    """This machine's ``/proc/cpuinfo``; empty where there is none."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def mkl_code_path() -> int | None:
    """The kernel family MKL dispatched to in this process (0: generic; 7 was AVX-512 here);
    None where torch's library has no MKL. Imports torch: call it after the choice."""
    import torch

    lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    detect = getattr(lib, "mkl_serv_cpu_detect", None)
    return None if detect is None else int(detect())


def prefer_avx512_kernels(enabled: bool, shim: Path = SHIM_PATH, cpuinfo: str | None = None) -> str:
    """Load the vendor-check library where it helps; returns ``ON`` or why not.

    Call it before anything imports torch: MKL resolves the function once torch's library
    is loaded, and a definition loaded after that one is never seen.
    """
    if _loaded:
        return ON
    if not enabled:
        return OFF
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return NOT_X86_LINUX
    if not amd_with_avx512(read_cpuinfo() if cpuinfo is None else cpuinfo):
        return NOT_AMD_AVX512
    if "torch" in sys.modules:
        return "torch was imported first"
    if not shim.is_file():
        return f"{shim} was not built (no C compiler when `make` installed)"
    try:
        _loaded.append(ctypes.CDLL(str(shim), mode=os.RTLD_GLOBAL))
    except OSError as exc:
        return f"{shim} did not load: {exc}"
    return ON


def describe(outcome: str) -> str | None:
    """A line for the user about ``outcome``; None where the CPU is not concerned."""
    if outcome == ON:
        return "MKL's AVX-512 kernels on this AMD CPU"
    if outcome in UNCONCERNED:
        return None
    return f"MKL's generic AVX2 kernels on this AMD CPU with AVX-512: {outcome}"


def prepare_mkl(enabled: bool) -> str:
    """``prefer_avx512_kernels``, logged: a process's first step before importing torch."""
    outcome = prefer_avx512_kernels(enabled)
    line = describe(outcome)
    if line is not None:
        log.info("%s (server.jobs.mkl_kernels)", line)
    return outcome

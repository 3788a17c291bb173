"""MKL's AVX-512 kernels on AMD CPUs (``server.jobs.mkl_kernels``).

torch's MKL picks generic AVX2 kernels on any non-Intel CPU. Where the CPU is an AMD one
with AVX-512 (this project's CI machine is), a fresh process that loads the vendor-check
library before torch gets MKL's AVX-512 code path, and its products are the same numbers
to float32 rounding. Elsewhere the checks that need such a CPU skip, saying why.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.jobs import mkl_kernels
from server.jobs.mkl_kernels import (
    NOT_AMD_AVX512,
    OFF,
    ON,
    SHIM_PATH,
    amd_with_avx512,
    describe,
    prefer_avx512_kernels,
    read_cpuinfo,
)
from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[3]
AVX512 = "avx512f avx512cd avx512bw avx512dq avx512vl"
AMD_ZEN5 = f"processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 fma {AVX512}\n"
AMD_ZEN3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 fma\n"
INTEL = f"processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 fma {AVX512}\n"


def test_only_an_amd_cpu_with_mkls_avx512_subsets_qualifies() -> None:
    assert amd_with_avx512(AMD_ZEN5)
    assert not amd_with_avx512(AMD_ZEN3)  # AVX2 only: MKL's generic kernels are its best
    assert not amd_with_avx512(INTEL)  # MKL already dispatches by features there
    assert not amd_with_avx512(AMD_ZEN5.replace(" avx512bw", ""))
    assert not amd_with_avx512("")
    # Only the first processor's block is read; a later one cannot make it qualify.
    assert not amd_with_avx512(AMD_ZEN3 + "\n" + AMD_ZEN5)


def test_nothing_is_loaded_where_it_is_off_or_not_wanted(monkeypatch) -> None:
    monkeypatch.setattr(mkl_kernels, "_loaded", [])  # tests/conftest.py loaded it here
    assert prefer_avx512_kernels(False, cpuinfo=AMD_ZEN5) == OFF
    assert prefer_avx512_kernels(True, cpuinfo=INTEL) in (NOT_AMD_AVX512, mkl_kernels.NOT_X86_LINUX)
    assert not mkl_kernels._loaded
    assert describe(OFF) is None and describe(NOT_AMD_AVX512) is None
    assert describe(ON) == "MKL's AVX-512 kernels on this AMD CPU"


def _fresh_process(code: str) -> dict:
    """Run ``code`` in a new interpreter (nothing imported yet); it prints one JSON line."""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


PROBE = """
import json
from pathlib import Path
from server.jobs.mkl_kernels import mkl_code_path, prefer_avx512_kernels
outcome = prefer_avx512_kernels({enabled}, shim=Path({shim!r}))
import torch
torch.manual_seed(0)
a, b = torch.randn(256, 96), torch.randn(96, 160)
x, y = torch.randn(64, 48, 32), torch.randn(64, 32, 40)
err = max(
    ((a @ b).double() - a.double() @ b.double()).abs().max().item(),
    (torch.bmm(x, y).double() - torch.bmm(x.double(), y.double())).abs().max().item(),
)
print(json.dumps({{"outcome": outcome, "path": mkl_code_path(), "err": err}}))
"""


@pytest.fixture
def amd_avx512_cpu() -> None:
    if not amd_with_avx512(read_cpuinfo()):
        pytest.skip("needs an AMD CPU with AVX-512 (MKL picks by vendor only there)")


def test_a_fresh_process_gets_mkls_avx512_path_and_the_same_products(amd_avx512_cpu) -> None:
    if not SHIM_PATH.is_file():
        message = f"{SHIM_PATH} is not built: `make` builds it with the C compiler"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    before = _fresh_process(PROBE.format(enabled=False, shim=str(SHIM_PATH)))
    after = _fresh_process(PROBE.format(enabled=True, shim=str(SHIM_PATH)))
    assert before["outcome"] == OFF and after["outcome"] == ON
    if before["path"] is not None:
        assert before["path"] == 0, "MKL already used a vendor code path on this AMD CPU"
        assert after["path"] > 0, "the library loaded but MKL kept its generic path"
    # float32 products of length-96 and -32 sums: within 1e-4 of float64 either way.
    assert before["err"] < 1e-4 and after["err"] < 1e-4


def test_it_is_too_late_once_torch_is_imported(amd_avx512_cpu) -> None:
    code = PROBE.replace(
        "from server.jobs.mkl_kernels", "import torch\nfrom server.jobs.mkl_kernels"
    ).format(enabled=True, shim=str(SHIM_PATH))
    got = _fresh_process(code)
    assert got["outcome"] == "torch was imported first"
    if got["path"] is not None:
        assert got["path"] == 0


def test_a_missing_library_is_named(amd_avx512_cpu, tmp_path: Path) -> None:
    got = _fresh_process(PROBE.format(enabled=True, shim=str(tmp_path / "absent.so")))
    assert "absent.so was not built" in got["outcome"]
    assert "absent.so was not built" in describe(got["outcome"])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _maps_library(pid: int) -> bool:
    try:
        return SHIM_PATH.name in Path(f"/proc/{pid}/maps").read_text()
    except OSError:  # the process is gone
        return False


@pytest.mark.slow
def test_phaseboard_up_and_its_worker_processes_load_it(amd_avx512_cpu, tmp_path: Path) -> None:
    """The server (threads run jobs in it) and each spawned worker process (which imports
    torch afresh) have the library mapped: every process that samples gets the kernels."""
    if not SHIM_PATH.is_file():
        pytest.skip(f"{SHIM_PATH} is not built")
    from tests.server.live import live_server

    exe = Path(sys.executable).parent / "phaseboard"
    env = {
        "PHASEBOARD_HOME": str(tmp_path / "home"),
        "PHASEBOARD_DATABASE_URL": "",
        "PHASEBOARD_STORAGE_DIR": "",
        "PHASEBOARD_LOCAL_POOL": "processes",
        "PHASEBOARD_LOCAL_WORKERS": "2",
    }
    with live_server(env, argv=[str(exe), "up", "--port", "{port}"]) as server:
        assert _maps_library(server.proc.pid)
        deadline = time.monotonic() + 60
        while True:
            workers = [c for c in _children(server.proc.pid) if _maps_library(c)]
            if len(workers) == 2:
                break
            assert time.monotonic() < deadline, f"children {_children(server.proc.pid)}"
            time.sleep(0.2)

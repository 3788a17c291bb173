"""Benchmark: torch's matrix products with MKL's own kernel choice against its AVX-512 kernels.

On an AMD CPU MKL picks its generic AVX2 kernels by vendor; preloading ``mkl_cpu_true.c``
(built here into a temporary directory; needs a C compiler) makes it pick by features. Each
setting runs in a fresh process, one torch thread, on the shapes of a 1024^3 product and of
the demo's restricted-LLC steps. Prints GFLOP/s (best of 5 rounds) and the ratio, with MKL's
code path number (0: generic).

    .venv/bin/python bench/mkl_avx512/measure.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = [  # (batch, m, k, n)
    (1, 1024, 1024, 1024),
    (16, 1280, 32, 128),  # a frozen MLP layer, 16 checkpoints x 20 rows x 64 examples
    (16, 1280, 128, 32),
    (320, 192, 32, 32),  # a row's own key/value projection: 64 examples x 3 tokens
    (320, 64, 32, 128),  # a row's own MLP (data-subset rows)
]

PROBE = """
import ctypes, json, time
from pathlib import Path
import torch
lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
detect = getattr(lib, "mkl_serv_cpu_detect", None)
torch.set_num_threads(1)
out = {{"path": None if detect is None else int(detect()), "gflops": []}}
for b, m, k, n in {shapes}:
    x, y = torch.randn(b, m, k), torch.randn(b, k, n)
    torch.bmm(x, y)
    reps = max(3, int(2e9 / (2 * b * m * k * n)))
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            torch.bmm(x, y)
        best = min(best, (time.perf_counter() - t) / reps)
    out["gflops"].append(2 * b * m * k * n / best / 1e9)
print(json.dumps(out))
"""


def build(tmp: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("no C compiler: this recipe needs one (apt-get install gcc)")
    lib = tmp / "libmkl_cpu_true.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", lib, HERE / "mkl_cpu_true.c"], check=True)
    return lib


def measure(preload: Path | None) -> dict:
    env = dict(os.environ)
    if preload is not None:
        env["LD_PRELOAD"] = str(preload)
    code = PROBE.format(shapes=SHAPES)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        own, avx512 = measure(None), measure(build(Path(tmp)))
    print(f"MKL's code path: own choice {own['path']}, with the library {avx512['path']}.")
    print("GFLOP/s, one thread:")
    print(f"{'batch x m x k x n':>22}  {'own choice':>10}  {'AVX-512':>8}  ratio")
    for shape, a, b in zip(SHAPES, own["gflops"], avx512["gflops"], strict=True):
        label = " x ".join(map(str, shape))
        print(f"{label:>22}  {a:10.1f}  {b:8.1f}  {b / a:.2f}x")


if __name__ == "__main__":
    main()

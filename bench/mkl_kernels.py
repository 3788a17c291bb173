"""Benchmark: torch's matrix products with MKL's own kernel choice against its AVX-512 kernels.

On an AMD CPU MKL picks its generic AVX2 kernels by vendor; ``server.jobs.mkl_kernels``
loads a library answering MKL's vendor check before torch so that it picks by features.
Each setting runs in a fresh process (the choice is made once torch is loaded), one torch
thread, on the shapes of a 1024^3 product and of the demo's restricted-LLC steps (batched
products of 16 checkpoints' frozen layers and of 320 SGLD rows' own weights). Prints
GFLOP/s (best of 5 rounds) and the ratio, with MKL's code path number (0: generic).

    .venv/bin/python bench/mkl_kernels.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [  # (batch, m, k, n)
    (1, 1024, 1024, 1024),
    (16, 1280, 32, 128),  # a frozen MLP layer, 16 checkpoints x 20 rows x 64 examples
    (16, 1280, 128, 32),
    (320, 192, 32, 32),  # a row's own key/value projection: 64 examples x 3 tokens
    (320, 64, 32, 128),  # a row's own MLP (data-subset rows)
]

PROBE = """
import json, time
from server.jobs.mkl_kernels import mkl_code_path, prefer_avx512_kernels
outcome = prefer_avx512_kernels({enabled})
import torch
torch.set_num_threads(1)
out = {{"outcome": outcome, "path": mkl_code_path(), "gflops": []}}
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


def measure(enabled: bool) -> dict:
    code = PROBE.format(enabled=enabled, shapes=SHAPES)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    own, avx512 = measure(False), measure(True)
    print(f"MKL's own choice: code path {own['path']}; with the library: {avx512['outcome']},")
    print(f"code path {avx512['path']}. GFLOP/s, one thread:")
    print(f"{'batch x m x k x n':>22}  {'own choice':>10}  {'AVX-512':>8}  ratio")
    for shape, a, b in zip(SHAPES, own["gflops"], avx512["gflops"], strict=True):
        label = " x ".join(map(str, shape))
        print(f"{label:>22}  {a:10.1f}  {b:8.1f}  {b / a:.2f}x")


if __name__ == "__main__":
    main()

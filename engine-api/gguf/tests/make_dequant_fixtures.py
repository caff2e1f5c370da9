"""Writes the dequantization fixtures: random blocks of each ggml type and
the f32 values the `gguf` Python package (llama.cpp's own) decodes them to.

    python make_dequant_fixtures.py            # needs: pip install gguf numpy

For every type T: fixtures/dequant/T.bin (the raw blocks) and T.f32 (the
expected values, little-endian f32). Scale fields are set to finite,
realistic values; everything else is random. The seed is fixed, so rerunning
reproduces the files.
"""
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

rng = np.random.default_rng(20261126)
OUT = Path(__file__).parent / "fixtures" / "dequant"
OUT.mkdir(parents=True, exist_ok=True)


def f16(x):
    return np.array(x, dtype=np.float16).tobytes()


def blocks(n, make):
    return b"".join(make() for _ in range(n))


def rand(n):
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def scale():
    return f16(rng.uniform(1e-3, 0.1) * rng.choice([-1, 1]))


makers = {
    Q.Q8_0: lambda: scale() + rand(32),
    Q.Q4_0: lambda: scale() + rand(16),
    Q.Q4_1: lambda: scale() + scale() + rand(16),
    Q.Q4_K: lambda: f16(rng.uniform(1e-4, 1e-2)) + f16(rng.uniform(1e-4, 1e-2)) + rand(12) + rand(128),
    Q.Q6_K: lambda: rand(128) + rand(64) + rand(16) + f16(rng.uniform(1e-4, 1e-2)),
}
# Added later, drawn after the first five so their fixtures stay as they were.
makers_q5 = {
    Q.Q5_0: lambda: scale() + rand(4) + rand(16),
    Q.Q5_1: lambda: scale() + scale() + rand(4) + rand(16),
    Q.Q5_K: lambda: f16(rng.uniform(1e-4, 1e-2)) + f16(rng.uniform(1e-4, 1e-2)) + rand(12) + rand(32) + rand(128),
}
N_BLOCKS = 6


def write_fixtures(makers):
    for qt, make in makers.items():
        raw = blocks(N_BLOCKS, make)
        arr = np.frombuffer(raw, dtype=np.uint8).reshape(N_BLOCKS, -1)
        values = quants.dequantize(arr, qt).astype("<f4").reshape(-1)
        (OUT / f"{qt.name}.bin").write_bytes(raw)
        (OUT / f"{qt.name}.f32").write_bytes(values.tobytes())


write_fixtures(makers)
floats = rng.standard_normal(96).astype(np.float32)
write_fixtures(makers_q5)
(OUT / "F32.bin").write_bytes(floats.astype("<f4").tobytes())
(OUT / "F32.f32").write_bytes(floats.astype("<f4").tobytes())
half = floats.astype("<f2")
(OUT / "F16.bin").write_bytes(half.tobytes())
(OUT / "F16.f32").write_bytes(half.astype("<f4").tobytes())
bf = (floats.view(np.uint32) >> 16).astype("<u2")  # truncation, as bytes on disk
(OUT / "BF16.bin").write_bytes(bf.tobytes())
(OUT / "BF16.f32").write_bytes(quants.dequantize(np.frombuffer(bf.tobytes(), np.uint8).reshape(-1, 2), Q.BF16).astype("<f4").tobytes())
print("wrote", sorted(p.name for p in OUT.iterdir()))

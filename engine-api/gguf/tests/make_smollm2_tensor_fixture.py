"""Checks of real tensors: what the `gguf` package decodes from SmolLM2's
Q4_1 file (first values, values at fixed positions, sum and sum of squares).

    python make_smollm2_tensor_fixture.py PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf
"""
import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf import quants

reader = GGUFReader(sys.argv[1])
wanted = ["token_embd.weight", "blk.0.ffn_down.weight", "blk.0.attn_q.weight", "blk.29.ffn_gate.weight", "output_norm.weight"]
out = {}
for t in reader.tensors:
    if t.name not in wanted:
        continue
    v = quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)
    positions = [int(i) for i in np.linspace(0, v.size - 1, 16)]
    out[t.name] = {
        "type": t.tensor_type.name,
        "elements": int(v.size),
        "first": [float(x) for x in v[:8]],
        "positions": positions,
        "values": [float(v[i]) for i in positions],
        "sum": float(v.sum()),
        "sum_sq": float((v * v).sum()),
    }
path = Path(__file__).parent / "fixtures" / "smollm2_tensors.json"
path.write_text(json.dumps(out, indent=1) + "\n")
print("wrote", path, sorted(out))

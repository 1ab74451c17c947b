#!/usr/bin/env python3
"""GPTQ golden fixtures, computed with numpy from the spec alone (../shared/specs/gptq.md).

Default mode writes
  fixtures/gptq/layers.safetensors   random GPTQ layers in every layout (2/3/4/8 bits, no group
                                     or 32, act-order g_idx, v1 and v2 zeros, sym and asym),
                                     packed here the way AutoGPTQ's pack() loops do it
  fixtures/gptq/golden.safetensors   each layer's weight [N, K] in float32 from the formula
                                     w[j, i] = scales[g_idx[i], j] * (q[i, j] - z[g_idx[i], j])
The Rust test (formats::gptq golden) reads both and must reproduce the weights bit for bit.

--check OUT --source SRC reads a GPTQ checkpoint directory (e.g. one meditron's round-to-nearest
writer made from the fp16 model SRC), dequantizes every layer with the same formula and checks
that each weight is within half a quantization step of the source (clamped codes excepted).

Usage: .venv/bin/python tools/gptq_golden.py [--check OUT --source SRC]
"""
import argparse
import json
import os
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pack_rows(codes, bits):
    """codes [K, N] (ints < 2**bits) -> int32 [K*bits/32, N], packing along K.

    Written as AutoGPTQ's loop is: 2/4/8 bits put 32/bits rows in a word; 3 bits walk 32 rows
    into 3 words, with rows 10 and 21 split across word boundaries."""
    codes = codes.astype(np.uint64)
    k, n = codes.shape
    out = np.zeros((k * bits // 32, n), dtype=np.uint64)
    i = row = 0
    if bits in (2, 4, 8):
        while row < out.shape[0]:
            for j in range(32 // bits):
                out[row] |= codes[i + j] << np.uint64(bits * j)
            i += 32 // bits
            row += 1
    else:
        while row < out.shape[0]:
            for j in range(10):
                out[row] |= codes[i + j] << np.uint64(3 * j)
            i += 10
            out[row] |= codes[i] << np.uint64(30)
            row += 1
            out[row] |= (codes[i] >> np.uint64(2)) & np.uint64(1)
            i += 1
            for j in range(10):
                out[row] |= codes[i + j] << np.uint64(3 * j + 1)
            i += 10
            out[row] |= codes[i] << np.uint64(31)
            row += 1
            out[row] |= (codes[i] >> np.uint64(1)) & np.uint64(3)
            i += 1
            for j in range(10):
                out[row] |= codes[i + j] << np.uint64(3 * j + 2)
            i += 10
            row += 1
    return (out & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.int32)


def unpack_rows(words, bits, k):
    """The inverse: int32 [K*bits/32, N] -> codes [K, N], reading the words as one
    little-endian bit stream per column."""
    w = words.view(np.uint32).astype(np.uint64)
    codes = np.zeros((k, w.shape[1]), dtype=np.int64)
    for e in range(k):
        bit = e * bits
        lo = w[bit // 32] >> np.uint64(bit % 32)
        if bit % 32 + bits > 32:
            lo |= w[bit // 32 + 1] << np.uint64(32 - bit % 32)
        codes[e] = (lo & np.uint64((1 << bits) - 1)).astype(np.int64)
    return codes


def dequantize(qweight, qzeros, scales, g_idx, bits, v1):
    k = g_idx.shape[0]
    q = unpack_rows(qweight, bits, k)                      # [K, N]
    z = unpack_rows(qzeros.T.copy(), bits, scales.shape[1]).T  # [G, N]
    if v1:
        z = z + 1
    g = g_idx.astype(np.int64)
    w = scales[g].astype(np.float32) * (q - z[g]).astype(np.float32)
    return np.ascontiguousarray(w.T)                        # [N, K]


def make_fixtures():
    rng = np.random.default_rng(20261126)
    k, n = 64, 32
    tensors, golden, layouts = {}, {}, {}
    for bits in (2, 3, 4, 8):
        for gs, act, v1, sym in ((-1, False, True, True), (32, True, False, False),
                                 (32, False, False, True), (32, True, True, True)):
            name = f"b{bits}_g{gs if gs > 0 else 'none'}_{'act' if act else 'seq'}_{'v1' if v1 else 'v2'}_{'sym' if sym else 'asym'}"
            groups = 1 if gs < 0 else k // gs
            maxq = 2 ** bits - 1
            codes = rng.integers(0, maxq + 1, size=(k, n))
            if sym:
                zeros = np.full((groups, n), (maxq + 1) // 2)
            else:
                zeros = rng.integers(0 if not v1 else 1, maxq + 1, size=(groups, n))
            scales = (rng.random((groups, n)) * 0.05 + 1e-3).astype(np.float16)
            if gs < 0:
                g_idx = np.zeros(k, dtype=np.int32)
            elif act:
                order = rng.permutation(k)  # quantization order: rank r -> column order[r]
                g_idx = np.empty(k, dtype=np.int32)
                g_idx[order] = np.arange(k) // gs
            else:
                g_idx = (np.arange(k) // gs).astype(np.int32)
            stored = zeros - 1 if v1 else zeros
            tensors[f"{name}.qweight"] = pack_rows(codes, bits)
            tensors[f"{name}.qzeros"] = pack_rows(stored.T, bits).T.copy()
            tensors[f"{name}.scales"] = scales
            tensors[f"{name}.g_idx"] = g_idx
            # The golden weights straight from the unpacked integers, not from the packed words.
            g = g_idx.astype(np.int64)
            w = scales[g].astype(np.float32) * (codes - zeros[g]).astype(np.float32)
            golden[f"{name}.weight"] = np.ascontiguousarray(w.T)
            assert np.array_equal(dequantize(tensors[f"{name}.qweight"], tensors[f"{name}.qzeros"],
                                             scales, g_idx, bits, v1), golden[f"{name}.weight"])
            layouts[name] = {"bits": bits, "group_size": gs, "desc_act": act, "sym": sym,
                             "checkpoint_format": "gptq" if v1 else "gptq_v2", "k": k, "n": n}
    out = os.path.join(ROOT, "fixtures", "gptq")
    os.makedirs(out, exist_ok=True)
    save_file(tensors, os.path.join(out, "layers.safetensors"),
              metadata={"format": "pt", "layouts": json.dumps(layouts, sort_keys=True)})
    save_file(golden, os.path.join(out, "golden.safetensors"), metadata={"format": "pt"})
    print(f"wrote {len(layouts)} layers to {out}")


def check(out_dir, src_dir):
    def load_dir(d):
        t = {}
        for f in sorted(os.listdir(d)):
            if f.endswith(".safetensors"):
                t.update(load_file(os.path.join(d, f)))
        return t
    with open(os.path.join(out_dir, "config.json")) as f:
        q = json.load(f)["quantization_config"]
    bits, v1 = q["bits"], q.get("checkpoint_format", q.get("format", "gptq")) == "gptq"
    qt, src = load_dir(out_dir), load_dir(src_dir)
    layers = sorted(n[: -len(".qweight")] for n in qt if n.endswith(".qweight"))
    worst = 0.0
    for p in layers:
        w = dequantize(qt[p + ".qweight"], qt[p + ".qzeros"], qt[p + ".scales"], qt[p + ".g_idx"], bits, v1)
        ref = src[p + ".weight"].astype(np.float32)
        assert w.shape == ref.shape, (p, w.shape, ref.shape)
        step = qt[p + ".scales"].astype(np.float32)[qt[p + ".g_idx"].astype(np.int64)].T  # [N, K]
        codes = unpack_rows(qt[p + ".qweight"], bits, w.shape[1]).T
        inside = (codes > 0) & (codes < 2 ** bits - 1)
        err = np.abs(w - ref) / step
        worst = max(worst, float(err[inside].max()))
        if err[inside].max() > 0.5 + 1e-3:
            sys.exit(f"{p}: a weight is {err[inside].max():.3f} steps from the source")
    print(f"{len(layers)} layers: every unclamped weight within {worst:.4f} steps of the source")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", help="a GPTQ checkpoint directory to verify")
    ap.add_argument("--source", help="the float model directory it was quantized from")
    a = ap.parse_args()
    if a.check:
        check(a.check, a.source)
    else:
        make_fixtures()

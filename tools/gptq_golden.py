#!/usr/bin/env python3
"""GPTQ golden fixtures, computed with numpy from the spec alone (../shared/specs/gptq.md).

Default mode writes
  fixtures/gptq/layers.safetensors   random GPTQ layers in every layout (2/3/4/8 bits, no group
                                     or 32, act-order g_idx, v1 and v2 zeros, sym and asym),
                                     packed here the way AutoGPTQ's pack() loops do it
  fixtures/gptq/golden.safetensors   each layer's weight [N, K] in float32 from the formula
                                     w[j, i] = scales[g_idx[i], j] * (q[i, j] - z[g_idx[i], j])
The Rust test (formats::gptq golden) reads both and must reproduce the weights bit for bit.

--check OUT --source SRC reads a GPTQ checkpoint directory that `meditron quantize` made from the
fp16 model SRC and checks what AutoGPTQ-style loaders rely on: config.json's quantization_config
equal to quantize_config.json, safetensors metadata format=pt, every projection's qweight/qzeros/
scales/g_idx with the dtypes and shapes QuantLinear allocates, g_idx consistent with desc_act
(full groups in quantization order) or i // group_size, symmetric zeros stored as 2^(b-1) (-1 in
v1), fp16 embeddings and norms. It then dequantizes every layer with the formula: a
round-to-nearest file (`--method rtn`) must be within half a step of the source (clamped codes
excepted); a GPTQ file, whose error compensation moves weights by more, within one step on average.

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
    """What an AutoGPTQ-style loader relies on, then the weights against the float source."""
    from safetensors import safe_open

    def load_dir(d):
        t, meta = {}, {}
        for f in sorted(os.listdir(d)):
            if f.endswith(".safetensors"):
                t.update(load_file(os.path.join(d, f)))
                with safe_open(os.path.join(d, f), "np") as h:
                    meta.update(h.metadata() or {})
        return t, meta
    with open(os.path.join(out_dir, "config.json")) as f:
        cfg = json.load(f)
    q = cfg["quantization_config"]
    with open(os.path.join(out_dir, "quantize_config.json")) as f:
        qc = json.load(f)
    for key in ("bits", "group_size", "desc_act", "sym", "static_groups", "checkpoint_format"):
        assert q.get(key) == qc.get(key), f"config.json and quantize_config.json differ on {key}"
    assert q.get("quant_method") == "gptq", "quant_method must be gptq"
    bits, gs, act = q["bits"], q["group_size"], q["desc_act"]
    v1 = q.get("checkpoint_format", q.get("format", "gptq")) == "gptq"
    static = q.get("static_groups", False)
    qt, meta = load_dir(out_dir)
    src, _ = load_dir(src_dir)
    assert meta.get("format") == "pt", "safetensors metadata must say format=pt (transformers)"
    rtn = meta.get("gptq_method") == "rtn"
    # `--rotate` files hold the same model in a rotated basis: nothing to compare weight by
    # weight with the source, only the layout.
    rotated = meta.get("gptq_rotation", "none") != "none"
    for name in ["model.embed_tokens.weight", "model.norm.weight"] + (
            [] if cfg.get("tie_word_embeddings") else ["lm_head.weight"]):
        assert qt[name].dtype == np.float16, f"{name} must be fp16"
    layers = sorted(n[: -len(".qweight")] for n in qt if n.endswith(".qweight"))
    assert len(layers) == 7 * cfg["num_hidden_layers"], f"{len(layers)} quantized modules"
    worst, dev, count = 0.0, 0.0, 0
    for p in layers:
        qw, qz, sc, gi = (qt[p + s] for s in (".qweight", ".qzeros", ".scales", ".g_idx"))
        ref = src[p + ".weight"].astype(np.float32)
        n, k = ref.shape
        groups = 1 if gs == -1 else -(-k // gs)
        # The shapes and dtypes AutoGPTQ's QuantLinear allocates before loading the state dict.
        assert qw.dtype == np.int32 and qw.shape == (k * bits // 32, n), (p, qw.dtype, qw.shape)
        assert qz.dtype == np.int32 and qz.shape == (groups, n * bits // 32), (p, qz.shape)
        assert sc.dtype == np.float16 and sc.shape == (groups, n), (p, sc.dtype, sc.shape)
        assert gi.dtype == np.int32 and gi.shape == (k,), (p, gi.dtype, gi.shape)
        assert np.isfinite(sc.astype(np.float32)).all() and (sc.astype(np.float32) > 0).all(), p
        g = gi.astype(np.int64)
        if gs == -1:
            assert (g == 0).all(), f"{p}: g_idx must be 0 without groups"
        elif not act or static:
            assert (g == np.arange(k) // gs).all(), f"{p}: g_idx must be i // group_size"
        else:  # act-order: consecutive runs of the quantization order, so full groups
            counts = np.bincount(g, minlength=groups)
            assert (counts[:-1] == gs).all() and counts[-1] == k - gs * (groups - 1), p
        if q["sym"]:
            z = unpack_rows(qz.T.copy(), bits, n).T
            want = 2 ** (bits - 1) - (1 if v1 else 0)
            assert (z == want).all(), f"{p}: symmetric zeros must all be stored as {want}"
        w = dequantize(qw, qz, sc, gi, bits, v1)
        assert w.shape == ref.shape, (p, w.shape, ref.shape)
        if rotated:
            continue
        step = sc.astype(np.float32)[g].T  # [N, K]
        codes = unpack_rows(qw, bits, k).T
        inside = (codes > 0) & (codes < 2 ** bits - 1)
        err = np.abs(w - ref) / step
        worst = max(worst, float(err[inside].max()))
        dev += float(err.sum())
        count += err.size
        if rtn and err[inside].max() > 0.5 + 1e-3:
            sys.exit(f"{p}: a weight is {err[inside].max():.3f} steps from the source")
    if rotated:
        print(f"{len(layers)} layers (rotated: {meta['gptq_rotation']}): loader layout OK; "
              "weights not compared with the unrotated source")
        return
    mean = dev / count
    if rtn:
        print(f"{len(layers)} layers (round-to-nearest): loader layout OK; every unclamped weight "
              f"within {worst:.4f} steps of the source (mean {mean:.3f})")
    else:
        # GPTQ moves weights by its error compensation, so there is no half-step bound; a
        # mis-packed or mis-ordered tensor shows as a mean distance of several steps.
        if mean > 1.0:
            sys.exit(f"weights are {mean:.3f} steps from the source on average: mis-packed?")
        print(f"{len(layers)} layers (GPTQ): loader layout OK; weights {mean:.3f} steps from the "
              f"source on average (largest {worst:.2f}, error compensation)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", help="a GPTQ checkpoint directory to verify")
    ap.add_argument("--source", help="the float model directory it was quantized from")
    a = ap.parse_args()
    if a.check:
        check(a.check, a.source)
    else:
        make_fixtures()

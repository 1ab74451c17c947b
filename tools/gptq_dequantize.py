#!/usr/bin/env python3
"""Dequantize a GPTQ checkpoint (AutoGPTQ layout, v1 or v2 zeros, 2/3/4/8 bits, any g_idx) into
an fp16 Hugging Face directory, with numpy only, written from the format description in
../shared/specs/gptq.md and independent of the Rust reader.

Uses: an outside check of what `meditron quantize` writes (the packing, zero convention and
g_idx), and perplexity of GPTQ files through any fp16 loader
(`meditron perplexity --model OUT`, transformers).

usage: tools/gptq_dequantize.py GPTQ_DIR OUT_DIR
"""
import json
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import load_file, save_file


def unpack(words, count, bits):
    """words: [rows, P] int32, each row a little-endian bit stream; returns [rows, count] codes."""
    w = np.ascontiguousarray(words.astype("<i4")).view(np.uint8)  # [rows, 4P]
    b = np.unpackbits(w, axis=1, bitorder="little")[:, : count * bits]
    b = b.reshape(words.shape[0], count, bits).astype(np.int32)
    return (b << np.arange(bits, dtype=np.int32)).sum(axis=2)


def dequantize(t, prefix, bits, v1):
    qweight, qzeros = t[prefix + ".qweight"], t[prefix + ".qzeros"]
    scales, g_idx = t[prefix + ".scales"].astype(np.float32), t[prefix + ".g_idx"].astype(np.int64)
    k = g_idx.shape[0]
    n = qweight.shape[1]
    codes = unpack(qweight.T, k, bits)  # [n, k]: the stream of each output column
    zeros = unpack(qzeros, n, bits) + (1 if v1 else 0)  # [groups, n]
    s = scales[g_idx].T  # [n, k]
    z = zeros[g_idx].T
    return (s * (codes - z)).astype(np.float16)


def main():
    src, out = sys.argv[1], sys.argv[2]
    cfg = json.load(open(os.path.join(src, "config.json")))
    q = cfg.pop("quantization_config")
    bits = q["bits"]
    fmt = q.get("checkpoint_format", q.get("format", "gptq"))
    v1 = fmt == "gptq"
    index = os.path.join(src, "model.safetensors.index.json")
    files = (sorted(set(json.load(open(index))["weight_map"].values()))
             if os.path.exists(index) else ["model.safetensors"])
    t = {}
    for f in files:
        t.update(load_file(os.path.join(src, f)))
    result = {}
    for name in list(t):
        if name.endswith(".qweight"):
            p = name[: -len(".qweight")]
            result[p + ".weight"] = dequantize(t, p, bits, v1)
        elif not name.endswith((".qzeros", ".scales", ".g_idx")):
            result[name] = t[name].astype(np.float16)
    os.makedirs(out, exist_ok=True)
    save_file(result, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    cfg["torch_dtype"] = "float16"
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
    for f in os.listdir(src):
        if f.startswith(("tokenizer", "special_tokens", "added_tokens", "generation_config", "chat_template")):
            shutil.copy(os.path.join(src, f), out)
    print(f"{len(files)} file(s), {sum(n.endswith('.qweight') for n in t)} quantized layers, "
          f"{bits}-bit {fmt} -> {out}")


if __name__ == "__main__":
    main()

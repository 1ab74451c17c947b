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
# --no-build-isolation with no build backend installed stops pip after the download, before it
# tries to build anything; the sdist is left in pip's unpack directory or the -d directory.
pip download --no-deps --no-binary :all: --no-build-isolation -d "$work" "llama-cpp-python==$version" >/dev/null 2>&1 || true
sdist="$(ls "$work"/llama_cpp_python-*.tar.gz 2>/dev/null || ls -t /tmp/pip-unpack-*/llama_cpp_python-"$version".tar.gz 2>/dev/null | head -1)"
if [ -z "$sdist" ]; then
  echo "could not download llama-cpp-python==$version's source distribution" >&2
  exit 1
fi
mkdir -p "$dest"
tar -xzf "$sdist" -C "$work" --wildcards '*/vendor/llama.cpp/models/ggml-vocab-*'
cp "$work"/llama_cpp_python-*/vendor/llama.cpp/models/ggml-vocab-* "$dest"/
ls "$dest"

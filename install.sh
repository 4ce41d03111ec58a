#!/usr/bin/env bash
# Install Waystation into ./.venv from nothing: `bash install.sh` for use, `bash install.sh --dev`
# for the test and lint tools as well. Needs python3 (>= 3.11) with venv.
#
# WAYSTATION_LLAMA_BACKEND picks what llama.cpp is compiled for (README: "Building for a GPU"):
#   cpu    (default) a portable CPU build
#   cuda   NVIDIA GPUs; needs the CUDA toolkit (nvcc) on PATH
#   metal  Apple GPUs (macOS)
# Set, it rebuilds llama-cpp-python even when it is installed already: pip would otherwise keep
# the build it has (or reuse a cached wheel of another backend). CMAKE_ARGS, when set, replaces
# the flags chosen here.
# `bash install.sh --cmake-args` prints the flags it would build with, and installs nothing.
set -euo pipefail
cd "$(dirname "$0")"

extras=""
print_only=""
case "${1:-}" in
  --dev) extras="[dev,bench]" ;;
  --cmake-args) print_only=1 ;;
  "") ;;
  *) echo "usage: bash install.sh [--dev | --cmake-args]" >&2; exit 2 ;;
esac

backend="${WAYSTATION_LLAMA_BACKEND:-cpu}"
rebuild="${WAYSTATION_LLAMA_BACKEND:+1}"
case "$backend" in
  cpu)
    # A native build (-march=native) trusts every CPU feature the processor reports; on VMs that
    # report AMX without enabling it, that build crashes in decode. This portable x86-64 build
    # (AVX2/FMA/F16C) runs anywhere those exist and was measured correct.
    flags=""
    if [[ "$(uname -m)" == "x86_64" ]]; then
      flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    fi
    ;;
  cuda)
    flags="-DGGML_CUDA=on"
    ;;
  metal)
    if [[ "$(uname -s)" != "Darwin" ]]; then
      echo "error: WAYSTATION_LLAMA_BACKEND=metal builds for Apple GPUs, on macOS only" >&2
      exit 1
    fi
    flags="-DGGML_METAL=on"
    ;;
  *)
    echo "error: WAYSTATION_LLAMA_BACKEND must be cpu, cuda or metal (got '$backend')" >&2
    exit 1
    ;;
esac
flags="${CMAKE_ARGS:-$flags}"
if [[ -n "$print_only" ]]; then
  echo "$flags"
  exit 0
fi
if [[ "$backend" == "cuda" ]] && ! command -v nvcc >/dev/null; then
  echo "error: WAYSTATION_LLAMA_BACKEND=cuda needs the CUDA toolkit: nvcc is not on PATH" >&2
  exit 1
fi
# An empty CMAKE_ARGS is left unset: llama.cpp's own defaults (a native build) apply.
if [[ -n "$flags" ]]; then
  export CMAKE_ARGS="$flags"
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "error: Waystation needs Python 3.11 or newer (found $(python3 --version))" >&2; exit 1; }
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [[ -n "$rebuild" ]]; then
  # First, so that installing waystation below finds the pinned version there and keeps it. The
  # version is the one pyproject.toml pins: the one Waystation was tested with.
  pinned=$(sed -n 's/^ *"llama-cpp-python==\([^"]*\)",*$/\1/p' pyproject.toml)
  [[ -n "$pinned" ]] || { echo "error: no llama-cpp-python==VERSION pin in pyproject.toml" >&2; exit 1; }
  echo "building llama-cpp-python ${pinned} for ${backend} (CMAKE_ARGS=${CMAKE_ARGS:-}); this takes a while ..."
  .venv/bin/python -m pip install --quiet --force-reinstall --no-deps --no-cache-dir \
    "llama-cpp-python==${pinned}"
fi
echo "installing waystation${extras} into .venv (compiling llama.cpp takes a few minutes the first time) ..."
.venv/bin/python -m pip install --quiet -e ".${extras}"
echo "installed: $(.venv/bin/waystation --version 2>/dev/null || echo waystation) (llama.cpp: ${backend})"

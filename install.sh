#!/usr/bin/env bash
# Install Waystation into ./.venv from nothing: `bash install.sh` for use, `bash install.sh --dev`
# for the test and lint tools as well. Needs python3 (>= 3.11) with venv.
set -euo pipefail
cd "$(dirname "$0")"

extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev,bench]"

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "error: Waystation needs Python 3.11 or newer (found $(python3 --version))" >&2; exit 1; }
# llama.cpp is compiled here. A native build (-march=native) trusts every CPU feature the
# processor reports; on VMs that report AMX without enabling it, that build crashes in decode.
# This portable x86-64 build (AVX2/FMA/F16C) runs anywhere those exist and was measured correct.
if [[ "$(uname -m)" == "x86_64" ]]; then
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON}"
fi
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
echo "installing waystation${extras} into .venv (compiling llama.cpp takes a few minutes the first time) ..."
.venv/bin/python -m pip install --quiet -e ".${extras}"
echo "installed: $(.venv/bin/waystation --version 2>/dev/null || echo waystation)"

#!/usr/bin/env bash
# Install Waystation into ./.venv from nothing: `bash install.sh` for use, `bash install.sh --dev`
# for the test and lint tools as well. Needs python3 (>= 3.11) with venv.
set -euo pipefail
cd "$(dirname "$0")"

extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev,bench]"

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "error: Waystation needs Python 3.11 or newer (found $(python3 --version))" >&2; exit 1; }
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
echo "installing waystation${extras} into .venv ..."
.venv/bin/python -m pip install --quiet -e ".${extras}"
echo "installed: $(.venv/bin/waystation --version 2>/dev/null || echo waystation)"

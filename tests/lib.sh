# lib.sh: helpers for the integration tests (sourced). Each test gets the sovtrain binary as $1.
set -u
SOV=$(realpath "$1")
TESTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tmp=$(mktemp -d /tmp/sovtrain-test-XXXXXX)
cleanup() {
    # a test may have mounted a small tmpfs under $tmp (full-disk checks): unmount before removing
    grep -o " $tmp/[^ ]*" /proc/mounts 2>/dev/null | while read -r m; do umount "$m" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT
failures=0
# The CPU suites compare runs bit for bit across world sizes; on a machine with GPUs, --device auto would put a
# 1-rank run on the GPU and a 2-rank run on the CPU. GPU tests ask for --device cuda explicitly.
export SOVTRAIN_DEVICE=cpu

fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}

# expect_error CODE NEEDLE CMD...: CMD must exit with CODE and print NEEDLE (on stdout or stderr).
expect_error() {
    local want=$1 needle=$2
    shift 2
    local out rc
    out=$("$@" 2>&1)
    rc=$?
    if [ "$rc" -ne "$want" ]; then
        fail "$* exited $rc, expected $want; output: $out"
    elif ! grep -qF -- "$needle" <<<"$out"; then
        fail "$* did not say \"$needle\"; output: $out"
    else
        echo "ok: $* -> exit $rc: $(grep -F -- "$needle" <<<"$out" | head -n 1)"
    fi
}

# losses METRICS STEP: "step loss" (the loss as exact hex) of every step after STEP in a metrics.jsonl, for
# bit-exact comparisons of runs.
losses() { python3 -c "
import json, sys
for l in open(sys.argv[1]):
    e = json.loads(l)
    if e['event'] == 'step' and e['step'] > int(sys.argv[2]): print(e['step'], e['loss'].hex())" "$1" "$2"; }

# launch ARGS...: `sovtrain launch ARGS...`. Under the sanitizer build, leak checking is off inside MPI jobs:
# Open MPI unloads its plugins at MPI_Finalize, so LeakSanitizer sees their deliberate at-exit allocations as
# "<unknown module>" frames that no suppression can match. Single-process runs and unit tests keep it on.
launch() {
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" "$SOV" launch "$@"
}

# Fashion-MNIST from Debian's dataset-fashion-mnist (installed by scripts/setup.sh).
DATA=/usr/share/datasets/fashion-mnist
need_data() {
    if [ ! -f "$DATA/train-images-idx3-ubyte.gz" ]; then
        echo "SKIP: $DATA missing (run scripts/setup.sh)"
        exit 77
    fi
}

# need_gpu: skip (exit 77) unless the driver lists a GPU and this build of sovtrain can use it.
need_gpu() {
    local line
    line=$("$SOV" version 2>/dev/null | grep '^GPUs:')
    case "$line" in
    "GPUs: 0"* | "GPUs: none"* | "") echo "SKIP: no usable GPU (${line:-sovtrain version printed no GPUs line})"; exit 77 ;;
    esac
}

# The PyTorch test venv (PyPI's torch, made by scripts/setup.sh).
TORCH_VENV=${SOVTRAIN_TORCH_VENV:-$HOME/.local/share/sovtrain/torch-2.15.0}

# need_torch: skip (exit 77) unless the test venv's Python imports torch; $TORCH_PY is that Python.
need_torch() {
    TORCH_PY=$TORCH_VENV/bin/python
    if ! "$TORCH_PY" -c "import torch, numpy" >/dev/null 2>&1; then
        echo "SKIP: no PyTorch test venv at $TORCH_VENV (scripts/setup.sh makes it; it needs PyPI and ~6 GB of disk)"
        exit 77
    fi
}

# install_python BUILD: installs libsovtrain from BUILD into $tmp/prefix and the sovtrain Python package into
# $tmp/site (pip install ./python, with the venv's pip), the way a user does; the package finds the library
# through pkg-config.
install_python() {
    cmake --install "$1" --prefix "$tmp/prefix" >/dev/null || { echo "FAIL: cmake --install $1"; exit 1; }
    "$TORCH_VENV/bin/pip" install -q --no-deps --no-build-isolation --target "$tmp/site" "$TESTS/../python" \
        >"$tmp/pip.log" 2>&1 || { echo "FAIL: pip install ./python: $(cat "$tmp/pip.log")"; exit 1; }
    local pc
    pc=$(dirname "$(find "$tmp/prefix" -name sovtrain.pc | head -n 1)")
    export PKG_CONFIG_PATH="$pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    export PYTHONPATH="$tmp/site"
    unset SOVTRAIN_LIB
}

finish() {
    if [ "$failures" -ne 0 ]; then
        echo "$failures check(s) failed"
        exit 1
    fi
    echo "all checks passed"
    exit 0
}

#!/usr/bin/env bash
# Where the driver shows GPUs, the CUDA build of sovtrain sees the same number; elsewhere this test skips.
. "$(dirname "$0")/lib.sh"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >"$tmp/gpus" 2>/dev/null || [ ! -s "$tmp/gpus" ]; then
    echo "SKIP: no GPU visible (nvidia-smi lists none)"
    exit 77
fi
want=$(grep -c '^GPU ' "$tmp/gpus")
line=$("$SOV" version | grep '^GPUs:')
[ "$line" = "${line#GPUs: $want (NCCL}" ] && fail "nvidia-smi lists $want GPUs, sovtrain says: $line"
finish

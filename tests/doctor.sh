#!/usr/bin/env bash
# sovtrain doctor: the preflight report, and its exit status when something required is missing.
. "$(dirname "$0")/lib.sh"
out=$("$SOV" doctor --ckpt-dir "$tmp/ck" 2>&1) || fail "doctor failed on a usable node: $out"
for want in "RDMA (libibverbs):" "locked memory:" "/dev/shm:" "checkpoint directory $tmp/ck:" "write + fsync of 64 MiB" \
    "suggested NCCL settings:" "GPUs:"; do
    grep -qF -- "$want" <<<"$out" || fail "doctor's report lacks \"$want\": $out"
done
echo "$out"
if [ ! -d /sys/class/infiniband ] || [ -z "$(ls /sys/class/infiniband 2>/dev/null)" ]; then
    expect_error 1 "FAIL: --require-rdma: no active RDMA port" "$SOV" doctor --ckpt-dir "$tmp/ck" --require-rdma
    grep -q "no RDMA devices" <<<"$out" || fail "doctor did not say plainly that there is no RDMA device"
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
    expect_error 1 "FAIL: --require-gpu" "$SOV" doctor --ckpt-dir "$tmp/ck" --require-gpu
fi
expect_error 1 "checkpoint directory /proc/sovtrain-doctor" "$SOV" doctor --ckpt-dir /proc/sovtrain-doctor
expect_error 2 "usage: sovtrain doctor" "$SOV" doctor --bogus
finish

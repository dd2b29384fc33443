#!/usr/bin/env bash
# OpenBLAS's kernels: where Debian's OpenBLAS does not know the CPU and falls back to its Prescott kernels,
# `sovtrain train` restarts itself with OPENBLAS_CORETYPE naming kernels the CPU runs, says so, and records them in
# its metrics; a value the user set is kept, and so are kernels OpenBLAS chose itself.
. "$(dirname "$0")/lib.sh"
need_data

version=$("$SOV" version) || fail "sovtrain version failed"
line=$(grep '^BLAS kernels: ' <<<"$version") || fail "sovtrain version printed no 'BLAS kernels:' line: $version"
echo "$line"
start_kernels() { python3 -c "
import json, sys
print([e for e in map(json.loads, open(sys.argv[1])) if e['event'] == 'start'][0]['blas_kernels'])" "$1"; }
T=(--hidden 16 --batch 32 --steps 2 --threads 1 --eval-every 0)

"$SOV" train "${T[@]}" --run-dir "$tmp/auto" >"$tmp/auto.log" 2>&1 || fail "train: $(cat "$tmp/auto.log")"
used=$(start_kernels "$tmp/auto/metrics.jsonl")
switch=$(sed -n 's/.*switch to \([A-Za-z0-9]*\) .*/\1/p' <<<"$line")
if [ -n "$switch" ]; then
    [ "$used" = "$switch" ] || fail "version said train switches to $switch; the job used $used"
    grep -q "OpenBLAS does not know this CPU and chose its Prescott kernels; sovtrain set OPENBLAS_CORETYPE=$switch" \
        "$tmp/auto.log" || fail "the job did not say it chose the kernels: $(cat "$tmp/auto.log")"
    echo "ok: OpenBLAS fell back to Prescott here; the job ran on $used and said why"
else
    [ "$used" = "${line#BLAS kernels: }" ] || fail "version said ${line#BLAS kernels: }; the job used $used"
    grep -q "sovtrain set OPENBLAS_CORETYPE" "$tmp/auto.log" && fail "the job replaced kernels OpenBLAS chose itself"
    echo "ok: OpenBLAS chose $used itself, and the job kept it"
fi

# The user's choice is kept, whatever OpenBLAS would pick: Prescott runs everywhere on x86-64.
if [ "$(uname -m)" = x86_64 ]; then
    OPENBLAS_CORETYPE=Prescott "$SOV" train "${T[@]}" --run-dir "$tmp/user" >"$tmp/user.log" 2>&1 ||
        fail "train with OPENBLAS_CORETYPE=Prescott: $(cat "$tmp/user.log")"
    used=$(start_kernels "$tmp/user/metrics.jsonl")
    [ "$used" = "Prescott" ] || fail "OPENBLAS_CORETYPE=Prescott was not kept: the job used $used"
    grep -q "sovtrain set OPENBLAS_CORETYPE" "$tmp/user.log" && fail "the job overrode the user's OPENBLAS_CORETYPE"
    echo "ok: OPENBLAS_CORETYPE=Prescott kept"
fi
finish

#!/usr/bin/env bash
# examples/c, a training program of a user's own, as a user builds and runs it: libsovtrain installed into a
# temporary prefix, the program built out of tree with pkg-config alone, run by the installed `sovtrain launch
# -np 2 --max-restarts 2` with checkpoints. kill -9 of a rank mid-run: the launcher restarts the job, which resumes
# from its latest checkpoint, and the final weights are bitwise those of an uninterrupted run.
# usage: example_c.sh BUILD_DIR [CFLAGS]   (CFLAGS: a sanitizer build's library needs its programs built alike)
set -u
build=$(realpath "$1")
user_flags=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d /tmp/sovtrain-example-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
[ -f /usr/share/games/fortunes/fortunes ] || { echo "SKIP: no fortunes text (apt-get install fortunes)"; exit 77; }

cmake --install "$build" --prefix "$tmp/prefix" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; exit 1; }
export PKG_CONFIG_PATH=$(dirname "$(find "$tmp/prefix" -name sovtrain.pc | head -n 1)")
cp -r "$here/../examples/c" "$tmp/src"
make -C "$tmp/src" CFLAGS="-O2 -g $user_flags" >"$tmp/make.log" 2>&1 || { cat "$tmp/make.log"; exit 1; }
echo "built with: $(grep -m1 -o 'cc .*bigram' "$tmp/make.log")"
SOV=$tmp/prefix/bin/sovtrain
launch() { ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" "$SOV" launch "$@"; }
ARGS=(--steps 6000 --ckpt-every 1000)

# the reference: uninterrupted
launch -np 2 --max-restarts 2 -- "$tmp/src/bigram" "${ARGS[@]}" --ckpt-dir "$tmp/ref" --out "$tmp/ref.bin" \
    >"$tmp/ref.log" 2>&1 || fail "uninterrupted run: $(tail -5 "$tmp/ref.log")"
grep -q "step 6000 loss" "$tmp/ref.log" || fail "no loss at step 6000: $(tail -3 "$tmp/ref.log")"

# kill -9 of rank 1 once the step-2000 checkpoint is committed
launch -np 2 --max-restarts 2 -- "$tmp/src/bigram" "${ARGS[@]}" --ckpt-dir "$tmp/k" --out "$tmp/k.bin" \
    >"$tmp/k.log" 2>&1 &
job=$!
for _ in $(seq 1200); do
    [ -e "$tmp/k/step-2000/manifest.json" ] && break
    sleep 0.05
done
victim=""
for p in $(pgrep -f -- "bigram .*--ckpt-dir $tmp/k "); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1" && victim=$p
done
[ -n "$victim" ] && kill -9 "$victim" || fail "could not find rank 1 (the job may have finished first)"
wait "$job" || fail "the job did not recover: $(tail -20 "$tmp/k.log")"
grep -q "rank 1 .*killed by signal 9" "$tmp/k.log" || fail "the failure was not named: $(grep launch "$tmp/k.log")"
grep -q "bigram: resumed from $tmp/k/step-" "$tmp/k.log" || fail "did not resume: $(tail -5 "$tmp/k.log")"
cmp -s "$tmp/ref.bin" "$tmp/k.bin" || fail "final weights differ from the uninterrupted run's"
[ $failures -eq 0 ] && echo "ok: kill -9 of rank 1, $(grep -o 'resumed from [^ ]* (step [0-9]*)' "$tmp/k.log" |
    sed 's|from .*/|from |'), $(grep -o 'summary: .*' "$tmp/k.log"); weights bitwise identical"
exit $((failures > 0))

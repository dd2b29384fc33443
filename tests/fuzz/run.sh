#!/bin/sh
# run.sh [SECONDS]: builds the libFuzzer targets fuzz_chunk, fuzz_manifest and fuzz_keys (clang, ASan + UBSan) in a temporary
# directory and runs each for SECONDS (default 20), starting from corpus/<target> and, when present, the known
# reproducers in repro/<target>. Exits 0 when nothing was found, 1 on a crash, leak, UB or build failure (the
# log and artifacts are kept and named), 77 (skip) when clang or its libFuzzer runtime is missing. CC=... picks
# another clang.
set -u
secs=${1:-20}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cc=${CC:-clang}
command -v "$cc" >/dev/null 2>&1 || { echo "fuzz: skipped: $cc not found"; exit 77; }
work=$(mktemp -d "${TMPDIR:-/tmp}/sovtrain-fuzz.XXXXXX") || exit 1
echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { (void)d; (void)n; return 0; }' >"$work/probe.c"
if ! "$cc" -fsanitize=fuzzer,address,undefined "$work/probe.c" -o "$work/probe" >/dev/null 2>&1; then
    rm -rf "$work"
    echo "fuzz: skipped: $cc cannot link -fsanitize=fuzzer,address,undefined (no libFuzzer runtime)"
    exit 77
fi
flags="-I$root/base -I$root/base/include -I$root/checkpoint -I$root/checkpoint/include -I$root/runtime/include -D_GNU_SOURCE -std=c11 -g -O1"
flags="$flags -fsanitize=fuzzer,address,undefined"
lib="$root/base/status.c $root/base/log.c $root/base/util.c $root/base/dtype.c $root/checkpoint/codec.c $root/checkpoint/bitpack.c $root/checkpoint/checksum.c $root/checkpoint/fsio.c $root/checkpoint/chunk_reader.c $root/checkpoint/reader.c"
lib="$lib $root/checkpoint/safetensors.c $root/checkpoint/catalog.c $root/checkpoint/crypto.c $root/checkpoint/keys.c $root/checkpoint/signing.c"
status=0
for t in chunk manifest keys; do
    # shellcheck disable=SC2086 # word splitting of flags and lib is intended
    if ! "$cc" $flags $lib "$here/fuzz_$t.c" -o "$work/fuzz_$t" -lzstd -lxxhash -ljansson -lcrypto -lm; then
        echo "fuzz_$t: BUILD FAILED"; status=1; continue
    fi
    mkdir "$work/corpus-$t"
    dirs="$work/corpus-$t $here/corpus/$t"
    [ -d "$here/repro/$t" ] && dirs="$dirs $here/repro/$t"
    extra=""
    [ -f "$here/$t.dict" ] && extra="-dict=$here/$t.dict"
    # shellcheck disable=SC2086
    TMPDIR="$work" UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 "$work/fuzz_$t" -max_total_time="$secs" \
        -artifact_prefix="$work/$t-" $extra $dirs >"$work/$t.log" 2>&1
    rc=$?
    if [ $rc -ne 0 ] || grep -q 'runtime error:\|ERROR: [A-Za-z]*Sanitizer' "$work/$t.log"; then
        tail -n 60 "$work/$t.log"
        echo "fuzz_$t: FINDING (exit $rc); log $work/$t.log, artifacts $work/$t-*"; status=1
    else
        echo "fuzz_$t: ok: $(grep -E '^#[0-9]+[[:space:]]+DONE' "$work/$t.log" | tail -n 1)"
    fi
done
[ $status -eq 0 ] && rm -rf "$work"
exit $status

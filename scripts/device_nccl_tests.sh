#!/usr/bin/env bash
# device_nccl_tests.sh [--dry-run] OUTFILE
#
# On the GPU machine, from the repo root, after `source scripts/device_env.sh`: builds NVIDIA's nccl-tests
# (the peer for our NCCL allreduce) from the bundle's source (.dev/nccl-tests, see scripts/device_bundle.sh),
# only the all_reduce_perf binary and only for Hopper (sm_90), then runs it on one GPU:
#   all_reduce_perf -b 4K -e 256M -f 4 -g 1 -w 5 -n 20
# and writes its output to OUTFILE (the build's log goes to OUTFILE.build.log).
#
# NCCL is taken where the environment finds libnccl.so.2 (LD_LIBRARY_PATH, e.g. the pip package
# nvidia-nccl-cu13's nvidia/nccl/lib, then ldconfig); its headers from the include/ folder beside that lib,
# else $CUDA_HOME/include, else the bundle's copy (.dev/nccl-include). The pip package ships libnccl.so.2 but no
# libnccl.so for the linker, so a small NCCL_HOME of symlinks is made in a temp folder.
#
# --dry-run: print the make commands (make -n) and the run line; build and run nothing.
# Settings (environment): SOV_DEV_DIR (bundle, default REPO/.dev), NCCL_TESTS_GENCODE (default sm_90 only),
# NCCL_TESTS_JOBS (default 16), CUDA_HOME (default /usr/local/cuda).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bundle=${SOV_DEV_DIR:-$repo/.dev}
gencode=${NCCL_TESTS_GENCODE:--gencode=arch=compute_90,code=sm_90}
jobs=${NCCL_TESTS_JOBS:-16}
run_args=(-b 4K -e 256M -f 4 -g 1 -w 5 -n 20)

log() { echo "device_nccl_tests: $*" >&2; }
die() { log "error: $*"; exit 1; }

# find_nccl_lib_dir: the folder of the libnccl.so.2 the dynamic loader would use.
find_nccl_lib_dir() {
    local d path
    local IFS=:
    for d in ${LD_LIBRARY_PATH:-}; do
        if [ -e "$d/libnccl.so.2" ]; then
            echo "$d"
            return 0
        fi
    done
    path=$(ldconfig -p 2>/dev/null | awk '$1 == "libnccl.so.2" { print $NF; exit }')
    [ -n "$path" ] && dirname "$path"
    return 0
}

# find_nccl_include LIBDIR: a folder with nccl.h, preferring the one that came with LIBDIR's library.
find_nccl_include() {
    local lib=$1 d
    for d in "$lib/../include" "$CUDA_HOME/include" "$bundle/nccl-include"; do
        if [ -f "$d/nccl.h" ]; then
            (cd "$d" && pwd)
            return 0
        fi
    done
    return 1
}

# nccl_header_version INCLUDE: "2.28.9" from nccl.h.
nccl_header_version() {
    awk '/^#define NCCL_(MAJOR|MINOR|PATCH) / { v = v (v ? "." : "") $3 } END { print v }' "$1/nccl.h"
}

# make_nccl_home LIBDIR INCLUDE: a temp NCCL_HOME with include/ and lib/libnccl.so{,.2} as symlinks; prints it.
make_nccl_home() {
    local lib=$1 inc=$2 home
    home=$(mktemp -d /tmp/nccl-home-XXXXXX)
    mkdir "$home/lib"
    ln -s "$inc" "$home/include"
    ln -s "$lib/libnccl.so.2" "$home/lib/libnccl.so.2"
    ln -s "$lib/libnccl.so.2" "$home/lib/libnccl.so"
    echo "$home"
}

main() {
    local dry=0 out src build lib inc home
    if [ "${1:-}" = --dry-run ]; then
        dry=1
        shift
    fi
    [ $# -eq 1 ] || { echo "usage: $0 [--dry-run] OUTFILE" >&2; exit 2; }
    out=$1
    src=$bundle/nccl-tests
    build=$src/build
    [ -f "$src/src/Makefile" ] || die "$src/src/Makefile missing: bundle nccl-tests with scripts/device_bundle.sh"

    # The environment (LD_LIBRARY_PATH with CUDA and pip NVIDIA libraries), without installing again.
    # shellcheck source=scripts/device_env.sh
    source "$repo/scripts/device_env.sh" --no-install --quiet
    [ -x "$CUDA_HOME/bin/nvcc" ] || die "$CUDA_HOME/bin/nvcc not found"

    lib=$(find_nccl_lib_dir)
    [ -n "$lib" ] || die "libnccl.so.2 not found (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
    inc=$(find_nccl_include "$lib") || die "nccl.h not found"
    home=$(make_nccl_home "$lib" "$inc")
    log "NCCL library $lib/libnccl.so.2, headers $inc (version $(nccl_header_version "$inc")), NCCL_HOME $home"

    # Only the all_reduce_perf target of src/Makefile (it depends on the os/ library and verifiable.o).
    local -a make_cmd=(make -C "$src/src" -j"$jobs" BUILDDIR="$build" CUDA_HOME="$CUDA_HOME"
        NCCL_HOME="$home" NVCC_GENCODE="$gencode" "$build/all_reduce_perf")
    if [ "$dry" = 1 ]; then
        "${make_cmd[@]}" -n
        echo "would run: $build/all_reduce_perf ${run_args[*]} > $out"
        rm -rf "$home"
        return 0
    fi

    mkdir -p "$(dirname "$out")"
    log "building all_reduce_perf (log: $out.build.log)"
    if ! "${make_cmd[@]}" >"$out.build.log" 2>&1; then
        tail -n 40 "$out.build.log" >&2
        die "nccl-tests build failed"
    fi
    log "running all_reduce_perf ${run_args[*]}"
    {
        echo "# nccl-tests $(cat "$src/COMMIT" 2>/dev/null || echo '?'), NCCL headers $(nccl_header_version "$inc"), library $lib/libnccl.so.2"
        "$build/all_reduce_perf" "${run_args[@]}"
    } 2>&1 | tee "$out"
    rm -rf "$home"
}

main "$@"

#!/usr/bin/env bash
# device_env.sh: prepare a GPU machine (Ubuntu-like, CUDA toolkit, no network, no Open MPI) to run sovtrain
# binaries built on Debian 12, from the bundle that scripts/device_bundle.sh made (default: .dev in the repo).
#
# Usage, as root, from the repo root on the GPU machine:
#   source scripts/device_env.sh              install the bundle into /, set the environment, print a summary
#   source scripts/device_env.sh --no-install --quiet   only set the environment (bundle already installed)
#   bash scripts/device_env.sh                install into / only (the environment is lost on exit)
#   bash scripts/device_env.sh --root DIR     install into DIR instead of / (a test root; no ldconfig)
#   bash scripts/device_env.sh --dry-run      unpack only and count what would be installed and what is kept
#
# Installing never replaces a file that exists: the .debs are unpacked with dpkg -x into a staging folder
# (/tmp/devroot), then copied into / with tar --skip-old-files (existing files and symlinks are kept) and
# --keep-directory-symlink (Debian 12 packages ship /lib/...; on a merged-/usr system /lib is a symlink to
# usr/lib and must stay one; `cp -an` fails there: "cannot overwrite non-directory '/lib' with directory").
# Then the Debian alternatives links (mpirun, libopenblas.so.0) listed in links.txt are created where absent,
# ldconfig runs, and Fashion-MNIST goes to its default path /usr/share/datasets/fashion-mnist.
#
# The environment (exported into the sourcing shell): LD_LIBRARY_PATH with the CUDA toolkit's libraries and
# the pip NVIDIA packages' (libcudart.so.13, libcublas.so.13, libcublasLt.so.13, libnccl.so.2), PATH with
# $CUDA_HOME/bin, CUDA_HOME, and for Open MPI run as root without ssh: OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM) and
# OMPI_MCA_plm=^rsh (Open MPI 4 refuses to start even a local job when neither ssh nor rsh exists).
#
# Settings (environment): SOV_DEV_DIR (the bundle; default REPO/.dev), SOV_DEV_STAGE (default /tmp/devroot),
# SOV_DEV_PYTHON (a python with the nvidia pip packages; default /opt/torch/.venv/bin/python3, then python3),
# CUDA_HOME (default /usr/local/cuda).
#
# The installing part runs as a separate `bash` process with `set -euo pipefail`, so that sourcing this file
# does not leave those options set in the caller's shell; the functions are prefixed _sovdev_.

_sovdev_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

_sovdev_log() { echo "device_env: $*" >&2; }

# _sovdev_unpack_debs BUNDLE STAGE: every BUNDLE/debs/*.deb unpacked into a fresh STAGE (dpkg -x; with ar + tar
# when dpkg is missing). No maintainer script runs.
_sovdev_unpack_debs() {
    local bundle=$1 stage=$2 deb data
    rm -rf "$stage"
    mkdir -p "$stage"
    chmod 755 "$stage" # its "." entry is extracted onto /: never a private mode (tar keeps existing dirs anyway)
    for deb in "$bundle"/debs/*.deb; do
        [ -f "$deb" ] || { _sovdev_log "no .deb files in $bundle/debs"; return 1; }
        if command -v dpkg >/dev/null; then
            dpkg -x "$deb" "$stage"
        else
            data=$(ar t "$deb" | grep '^data\.tar')
            ar p "$deb" "$data" | tar -x -a -f - -C "$stage" 2>/dev/null ||
                ar p "$deb" "$data" | tar -x --use-compress-program=unxz -f - -C "$stage"
        fi
    done
}

# _sovdev_report_existing STAGE ROOT: lists on stdout the staged files and symlinks that already exist under
# ROOT (they will be kept, not replaced), and prints counts on stderr.
_sovdev_report_existing() {
    local stage=$1 root=$2 rel total=0 kept=0
    while IFS= read -r rel; do
        total=$((total + 1))
        if [ -e "$root/$rel" ] || [ -L "$root/$rel" ]; then
            kept=$((kept + 1))
            echo "$rel"
        fi
    done < <(cd "$stage" && find . \( -type f -o -type l \) | sed 's|^\./||' | sort)
    _sovdev_log "$total files in the bundle, $kept already present under $root (kept as they are)"
}

# _sovdev_copy_no_overwrite STAGE ROOT: copies STAGE into ROOT keeping every existing file, symlink, directory
# (and directory symlink such as /lib -> usr/lib).
_sovdev_copy_no_overwrite() {
    local stage=$1 root=$2
    mkdir -p "$root"
    (cd "$stage" && tar -cf - .) | tar -C "$root" -xpf - --skip-old-files --keep-directory-symlink
}

# _sovdev_make_links BUNDLE ROOT: the alternatives links from BUNDLE/links.txt ("LINK TARGET"), where LINK is
# absent under ROOT.
_sovdev_make_links() {
    local bundle=$1 root=$2 link target
    [ -f "$bundle/links.txt" ] || return 0
    while read -r link target; do
        [ -n "$link" ] || continue
        if [ -e "$root$link" ] || [ -L "$root$link" ]; then
            continue
        fi
        mkdir -p "$(dirname "$root$link")"
        ln -s "$target" "$root$link"
    done <"$bundle/links.txt"
}

# _sovdev_install_data BUNDLE ROOT: Fashion-MNIST where sovtrain and the tests look by default.
_sovdev_install_data() {
    local bundle=$1 root=$2 dest=$2/usr/share/datasets/fashion-mnist
    [ -d "$bundle/data/fashion-mnist" ] || { _sovdev_log "no Fashion-MNIST in the bundle"; return 0; }
    mkdir -p "$dest"
    cp -n "$bundle"/data/fashion-mnist/*.gz "$dest/"
}

# _sovdev_link_build_root ROOT: the build's CTest files name the source folder it was configured in by its
# absolute path (e.g. /work/main); when the repo sits elsewhere here, make that path a symlink to it.
_sovdev_link_build_root() {
    local root=$1 cache=$_sovdev_repo/build/CMakeCache.txt src
    [ -f "$cache" ] || return 0
    src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$cache")
    [ -n "$src" ] || return 0
    if [ -e "$root$src" ] || [ -L "$root$src" ]; then
        return 0
    fi
    mkdir -p "$(dirname "$root$src")"
    ln -s "$_sovdev_repo" "$root$src"
    _sovdev_log "linked $root$src -> $_sovdev_repo (the build's configured source folder)"
}

# _sovdev_install BUNDLE STAGE ROOT DRY_RUN: the whole install (run in a `set -euo pipefail` subshell).
_sovdev_install() {
    local bundle=$1 stage=$2 root=$3 dry=$4 existing
    [ -d "$bundle/debs" ] || { _sovdev_log "$bundle/debs missing: run scripts/device_bundle.sh first"; return 1; }
    _sovdev_unpack_debs "$bundle" "$stage"
    existing=$stage.existing
    _sovdev_report_existing "$stage" "$root" >"$existing"
    # Shared libraries the machine already has in some version are worth knowing about (they win).
    local nlibs
    nlibs=$(grep -c '\.so' "$existing" || true)
    if [ "$nlibs" -gt 0 ]; then
        _sovdev_log "$nlibs shared objects kept from the machine, e.g.:" \
            "$(grep '\.so' "$existing" | xargs -n1 basename | sort -u | head -n 20 | tr '\n' ' ')"
    fi
    if [ "$dry" = 1 ]; then
        _sovdev_log "dry run: staged in $stage; nothing copied (list of kept files: $existing)"
        return 0
    fi
    _sovdev_copy_no_overwrite "$stage" "$root"
    _sovdev_make_links "$bundle" "$root"
    _sovdev_install_data "$bundle" "$root"
    if [ "$root" = / ]; then
        ldconfig
        _sovdev_link_build_root ""
    fi
    _sovdev_log "installed into $root"
}

# _sovdev_nvidia_site_dirs: the folders of the `nvidia` pip namespace package (CUDA 13 wheels put their
# libraries in nvidia/cu13/lib, NCCL's in nvidia/nccl/lib).
_sovdev_nvidia_site_dirs() {
    local py
    for py in ${SOV_DEV_PYTHON:-} /opt/torch/.venv/bin/python3 python3; do
        command -v "$py" >/dev/null 2>&1 || continue
        if "$py" -c 'import nvidia; print("\n".join(nvidia.__path__))' 2>/dev/null; then
            return 0
        fi
    done
    ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia 2>/dev/null || true
}

# _sovdev_cuda_lib_dirs: library folders for LD_LIBRARY_PATH, the toolkit's first (the build here used CUDA
# 13.0, as does the toolkit there), then the pip packages' (NCCL lives only there).
_sovdev_cuda_lib_dirs() {
    local cuda=$1 d n
    for d in "$cuda/lib64" "$cuda/lib" "$cuda/targets/x86_64-linux/lib"; do
        [ -d "$d" ] && echo "$d"
    done
    while read -r n; do
        [ -n "$n" ] || continue
        [ -d "$n/cu13/lib" ] && echo "$n/cu13/lib"
        [ -d "$n/nccl/lib" ] && echo "$n/nccl/lib"
        for d in "$n"/*/lib; do
            [ -d "$d" ] && echo "$d"
        done
    done < <(_sovdev_nvidia_site_dirs)
    return 0
}

# _sovdev_setup_env: exports into the current shell.
_sovdev_setup_env() {
    local cuda=${CUDA_HOME:-/usr/local/cuda} dirs d key
    export CUDA_HOME=$cuda
    dirs=""
    local -A seen=()
    while read -r d; do
        # one entry per real folder (lib64 is usually a symlink to targets/x86_64-linux/lib)
        key=$(readlink -f "$d")
        [ -z "${seen[$key]:-}" ] || continue
        seen[$key]=1
        dirs=${dirs:+$dirs:}$d
    done < <(_sovdev_cuda_lib_dirs "$cuda")
    export LD_LIBRARY_PATH=$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    case ":$PATH:" in *":$cuda/bin:"*) ;; *) [ -d "$cuda/bin" ] && export PATH=$PATH:$cuda/bin ;; esac
    if [ "$(id -u)" -eq 0 ]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
    # PMIx (under mpirun) crashes in pmix_home_directory when HOME is unset and the user has no passwd entry.
    if [ -z "${HOME:-}" ]; then
        export HOME=/root
    fi
    if ! command -v ssh >/dev/null && ! command -v rsh >/dev/null; then
        export OMPI_MCA_plm='^rsh'
    fi
}

# _sovdev_find_lib NAME: where the dynamic loader would find NAME (LD_LIBRARY_PATH first, then ldconfig).
_sovdev_find_lib() {
    local name=$1 d
    local IFS=:
    for d in $LD_LIBRARY_PATH; do
        if [ -e "$d/$name" ]; then
            echo "$d/$name"
            return 0
        fi
    done
    ldconfig -p 2>/dev/null | awk -v n="$name" '$1 == n { print $NF; exit }'
}

# _sovdev_summary: what the machine has, and whether mpirun and our binary can start.
_sovdev_summary() {
    local lib path sov=$_sovdev_repo/build/sovtrain
    echo "== GPUs"
    nvidia-smi -L 2>&1 || echo "nvidia-smi failed"
    echo "== libraries (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"
    for lib in libcuda.so.1 libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2 libmpi.so.40 libopenblas.so.0; do
        path=$(_sovdev_find_lib "$lib")
        printf '  %-18s %s\n' "$lib" "${path:-MISSING}"
    done
    echo "== Open MPI"
    mpirun --version 2>&1 | head -n 1 || echo "mpirun not found"
    if timeout 60 mpirun --allow-run-as-root --oversubscribe -np 2 hostname >/tmp/devroot.mpirun 2>&1; then
        echo "  mpirun -np 2 hostname: ok ($(sort -u /tmp/devroot.mpirun | tr '\n' ' '))"
    else
        echo "  mpirun -np 2 hostname FAILED:"
        tail -n 20 /tmp/devroot.mpirun
    fi
    if [ -x "$sov" ]; then
        echo "== $sov"
        if ldd "$sov" | grep 'not found'; then
            echo "  (libraries missing, see above)"
        else
            echo "  all libraries found"
        fi
    fi
}

# _sovdev_install_main ARGS...: the program (`bash scripts/device_env.sh [--root DIR] [--dry-run]`), with
# set -euo pipefail in a process of its own: a subshell would not do, since bash ignores set -e inside
# anything that runs left of && or || (as in `source scripts/device_env.sh && ...`).
_sovdev_install_main() {
    local root=/ dry=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --root) root=$2; shift 2 ;;
            --dry-run) dry=1; shift ;;
            *) _sovdev_log "unknown option $1"; return 2 ;;
        esac
    done
    _sovdev_install "${SOV_DEV_DIR:-$_sovdev_repo/.dev}" "${SOV_DEV_STAGE:-/tmp/devroot}" "$root" "$dry"
}

# _sovdev_source_main ARGS...: sourced: install (as a separate process), then the environment and summary.
_sovdev_source_main() {
    local install=1 summary=1
    while [ $# -gt 0 ]; do
        case "$1" in
            --no-install) install=0; shift ;;
            --quiet) summary=0; shift ;;
            *) _sovdev_log "unknown option $1 (--root and --dry-run are for: bash $0)"; return 2 ;;
        esac
    done
    if [ "$install" = 1 ]; then
        bash "$_sovdev_repo/scripts/device_env.sh" || { _sovdev_log "install failed"; return 1; }
    fi
    _sovdev_setup_env
    if [ "$summary" = 1 ]; then
        _sovdev_summary
    fi
    return 0
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    # Sourced. Note: `source FILE` without arguments passes the caller's own positional parameters.
    _sovdev_source_main "$@"
else
    set -euo pipefail
    _sovdev_install_main "$@"
fi

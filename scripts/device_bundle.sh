#!/usr/bin/env bash
# device_bundle.sh BUILD_DIR OUT_DIR
#
# Run HERE (Debian 12). Packs what a GPU machine with another distribution (Ubuntu-like, CUDA toolkit, no
# network, no Open MPI) needs to run the binaries in BUILD_DIR and `mpirun`, so that the bundle can travel with
# the working tree (as an ignored, carried folder, e.g. .dev/) and scripts/device_env.sh can install it there:
#
#   OUT_DIR/debs/           Debian runtime packages: the libraries the executables in BUILD_DIR, BUILD_DIR/tests
#                           and BUILD_DIR/bench link to, Open MPI (openmpi-bin, openmpi-common, libopenmpi3) and
#                           what its plugins (and PMIx's) link to. Without libc6, libgcc-s1, libstdc++6, zlib1g,
#                           libzstd1 (the other machine has newer ones) and without CUDA/NCCL (it has its own).
#   OUT_DIR/links.txt       "LINK TARGET" lines: the Debian alternatives (e.g. /usr/bin/mpirun,
#                           /usr/lib/x86_64-linux-gnu/libopenblas.so.0) that maintainer scripts would have made,
#                           since unpacking a .deb with dpkg -x runs no scripts.
#   OUT_DIR/packages.txt    "NAME VERSION" of each bundled .deb, for the record.
#   OUT_DIR/data/fashion-mnist/   Debian's dataset-fashion-mnist files (*.gz).
#   OUT_DIR/nccl-tests/     NVIDIA's nccl-tests source (peer benchmark), from $NCCL_TESTS_SRC: a bare git
#                           directory (exported with git archive) or a plain source tree. Skipped when unset.
#   OUT_DIR/nccl-include/   nccl.h (+ nccl_device.h, nccl_device/) from this machine's CUDA, a fallback for
#                           building nccl-tests where the NCCL pip package has no headers.
#
# Environment: NCCL_TESTS_SRC (see above), CUDA_HOME (default /usr/local/cuda).
# Needs apt-get download (network) for packages that are not in /var/cache/apt/archives.
set -euo pipefail

CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
FASHION_MNIST_DIR=/usr/share/datasets/fashion-mnist

# Packages never bundled: the base C/C++ runtime and compression libraries the other machine has in newer
# versions (an older copy would never be installed over them anyway, see device_env.sh, but why carry it).
EXCLUDED_PACKAGES=(libc6 libgcc-s1 libstdc++6 zlib1g libzstd1)
# Packages always bundled: Open MPI itself (mpirun, orted, plugins, help texts).
REQUIRED_PACKAGES=(openmpi-bin openmpi-common libopenmpi3)

log() { echo "device_bundle: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    echo "usage: $0 BUILD_DIR OUT_DIR" >&2
    exit 2
}

# is_elf FILE: true when FILE is a regular ELF file.
is_elf() {
    [ -f "$1" ] && [ "$(head -c 4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]
}

# is_excluded PKG: true when PKG is in EXCLUDED_PACKAGES.
is_excluded() {
    local p
    for p in "${EXCLUDED_PACKAGES[@]}"; do
        [ "$p" = "$1" ] && return 0
    done
    return 1
}

# is_cuda_path PATH: libraries that come from the CUDA toolkit / NCCL, which the GPU machine provides itself.
is_cuda_path() {
    case "$1" in
        /usr/local/cuda* | /usr/local/lib/libcudart* | /usr/local/lib/libnccl* | /usr/local/lib/libcublas*) return 0 ;;
        */libcuda.so* | */libcudart.so* | */libnccl.so* | */libcublas*.so* | */libnvidia-*) return 0 ;;
    esac
    return 1
}

# list_build_executables BUILD_DIR: the ELF executables sovtrain's tests and benchmarks run.
list_build_executables() {
    local dir=$1 f
    for f in "$dir"/* "$dir"/tests/* "$dir"/bench/*; do
        if [ -x "$f" ] && is_elf "$f"; then
            echo "$f"
        fi
    done
}

# list_mpi_objects: Open MPI's programs and every shared object (plugins included) of Open MPI and PMIx,
# which mpirun and MPI_Init load with dlopen, so ldd of the executables alone would not see their needs.
list_mpi_objects() {
    local f
    echo /usr/bin/mpirun.openmpi
    echo /usr/bin/orted
    for f in $(dpkg -L libopenmpi3 libpmix2 2>/dev/null | grep '\.so\(\.[0-9.]*\)\?$' || true); do
        if [ -f "$f" ] && [ ! -L "$f" ]; then
            echo "$f"
        fi
    done
}

# resolved_libs FILE...: the paths ldd resolves the FILEs' libraries to (one per line, unsorted). Libraries
# that ldd cannot find are reported on stderr; they are a problem only when not provided by the GPU machine.
resolved_libs() {
    local f
    for f in "$@"; do
        # (ldd fails on static executables: that only means they need no library)
        { ldd "$f" 2>/dev/null || true; } | while read -r name arrow path _; do
            if [ "$arrow" = "=>" ] && [ "$path" = "not" ]; then
                is_cuda_path "$name" || log "warning: $f: $name not found by ldd"
            elif [ "$arrow" = "=>" ] && [ -n "$path" ]; then
                echo "$path"
            fi
        done
    done
}

# owner_package PATH: the Debian package that owns PATH, or nothing. /lib and /usr/lib are the same folder
# on a merged-/usr system but dpkg's database records whichever the package shipped, so try both spellings
# of PATH and of its resolved (symlink-free) path.
owner_package() {
    local path=$1 real candidate out
    real=$(realpath -e "$path" 2>/dev/null || echo "$path")
    for candidate in "$path" "${path#/usr}" "/usr$path" "$real" "${real#/usr}" "/usr$real"; do
        if out=$(dpkg -S "$candidate" 2>/dev/null); then
            # "libfoo1:amd64: /path" -> libfoo1
            echo "${out%%: *}" | head -n 1 | sed 's/:[a-z0-9]*$//'
            return 0
        fi
    done
}

# packages_for_libs: reads library paths on stdin, prints the owning packages (deduplicated), minus the
# excluded ones and CUDA/NCCL. Unowned non-CUDA paths are reported, except libsovtrain itself, which travels with
# the build directory (the executables find it there by their $ORIGIN run path).
packages_for_libs() {
    local path pkg
    sort -u | while read -r path; do
        if is_cuda_path "$path"; then
            continue
        fi
        case "$path" in */libsovtrain.so*) continue ;; esac
        pkg=$(owner_package "$path")
        if [ -z "$pkg" ]; then
            log "warning: $path belongs to no Debian package; not bundled"
        elif ! is_excluded "$pkg"; then
            echo "$pkg"
        fi
    done | sort -u
}

# resolve_packages BUILD_DIR: the bundle's package list.
resolve_packages() {
    local build=$1
    local -a objects
    mapfile -t objects < <(list_build_executables "$build"; list_mpi_objects)
    [ "${#objects[@]}" -gt 0 ] || die "no executables found"
    log "inspecting ${#objects[@]} executables and shared objects with ldd"
    {
        resolved_libs "${objects[@]}" | packages_for_libs
        printf '%s\n' "${REQUIRED_PACKAGES[@]}"
    } | sort -u
}

# deb_filename PKG: the file name apt gives PKG's installed version (epoch colon escaped as %3a).
deb_filename() {
    local pkg=$1 ver arch
    ver=$(dpkg-query -W -f='${Version}' "$pkg")
    arch=$(dpkg-query -W -f='${Architecture}' "$pkg")
    echo "${pkg}_${ver//:/%3a}_${arch}.deb"
}

# fetch_debs DEST PKG...: the installed version of every PKG as a .deb in DEST, from apt's cache when there,
# else downloaded with apt-get download (pinned to the installed version, so the libraries match what the
# binaries were tested with here).
fetch_debs() {
    local dest=$1 pkg file ver tmp
    shift
    mkdir -p "$dest"
    tmp=$(mktemp -d)
    # As root, apt downloads as user _apt, which cannot write into a private temp dir: download as root.
    local -a apt_opts=(-q)
    [ "$(id -u)" -ne 0 ] || apt_opts+=(-o APT::Sandbox::User=root)
    for pkg in "$@"; do
        file=$(deb_filename "$pkg")
        if [ -f "/var/cache/apt/archives/$file" ]; then
            cp "/var/cache/apt/archives/$file" "$dest/"
        else
            ver=$(dpkg-query -W -f='${Version}' "$pkg")
            # The installed version may be gone from the archive (superseded by a point release): then take
            # the current one, which has the same sonames.
            if ! (cd "$tmp" && apt-get download "${apt_opts[@]}" "$pkg=$ver" >/dev/null 2>&1); then
                log "warning: $pkg=$ver is not downloadable; taking apt's current version"
                (cd "$tmp" && apt-get download "${apt_opts[@]}" "$pkg" >/dev/null) ||
                    die "apt-get download $pkg failed (network? apt-get update?)"
            fi
            mv "$tmp"/*.deb "$dest/"
        fi
    done
    rmdir "$tmp"
}

# write_packages_list FILE DEBS_DIR: "NAME VERSION" of each .deb in DEBS_DIR.
write_packages_list() {
    local file=$1 deb
    for deb in "$2"/*.deb; do
        echo "$(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)"
    done >"$file"
}

# write_alternative_links FILE PKG...: "LINK TARGET" for each runtime symlink in /usr/bin and the multiarch
# library folder that goes through /etc/alternatives (the links Debian's maintainer scripts create with
# update-alternatives, e.g. /usr/bin/mpirun and libopenblas.so.0) to a file shipped by one of the PKGs. TARGET
# is the alternative's own target (one level). Development links (lib*.so) and the MPI compiler wrappers are
# left out: without headers they would only mislead a build on the other machine.
write_alternative_links() {
    local file=$1 link alt target owned
    shift
    owned=$(mktemp)
    dpkg -L "$@" 2>/dev/null | sort -u >"$owned"
    : >"$file"
    while read -r link; do
        alt=$(readlink "$link")                  # /etc/alternatives/NAME
        target=$(readlink "$alt") || continue   # the selected file
        case "$link" in *.so) continue ;; esac
        case "$(realpath -e "$target" 2>/dev/null)" in */opal_wrapper) continue ;; esac
        [ -e "$target" ] || continue
        if grep -qxF -- "$target" "$owned" || grep -qxF -- "${target#/usr}" "$owned"; then
            echo "$link $target" >>"$file"
        fi
    done < <(find /usr/bin /usr/lib/x86_64-linux-gnu -maxdepth 1 -type l -lname '/etc/alternatives/*' | sort)
    rm -f "$owned"
}

# copy_data OUT: Fashion-MNIST, the demo's and the integration tests' dataset.
copy_data() {
    local out=$1
    if ! ls "$FASHION_MNIST_DIR"/*.gz >/dev/null 2>&1; then
        log "warning: $FASHION_MNIST_DIR/*.gz missing; no data bundled (scripts/setup.sh installs it)"
        return 0
    fi
    mkdir -p "$out/data/fashion-mnist"
    cp "$FASHION_MNIST_DIR"/*.gz "$out/data/fashion-mnist/"
}

# copy_nccl_tests OUT: nccl-tests' source from $NCCL_TESTS_SRC (bare git dir, or a source tree).
copy_nccl_tests() {
    local out=$1 src=${NCCL_TESTS_SRC:-}
    if [ -z "$src" ] || [ ! -d "$src" ]; then
        log "warning: NCCL_TESTS_SRC unset or missing; nccl-tests not bundled"
        return 0
    fi
    mkdir -p "$out/nccl-tests"
    if git --git-dir="$src" rev-parse --verify -q HEAD >/dev/null 2>&1; then
        git --git-dir="$src" archive HEAD | tar -x -C "$out/nccl-tests"
        git --git-dir="$src" rev-parse HEAD >"$out/nccl-tests/COMMIT"
    else
        cp -a "$src"/. "$out/nccl-tests/"
    fi
}

# copy_nccl_include OUT: NCCL's headers from this machine's CUDA, for nccl-tests where pip's NCCL has none.
copy_nccl_include() {
    local out=$1 inc=$CUDA_HOME/include
    if [ ! -f "$inc/nccl.h" ]; then
        log "warning: $inc/nccl.h missing; no fallback NCCL headers bundled"
        return 0
    fi
    mkdir -p "$out/nccl-include"
    cp "$inc/nccl.h" "$out/nccl-include/"
    [ -f "$inc/nccl_device.h" ] && cp "$inc/nccl_device.h" "$out/nccl-include/"
    [ -d "$inc/nccl_device" ] && cp -a "$inc/nccl_device" "$out/nccl-include/"
    return 0
}

main() {
    [ $# -eq 2 ] || usage
    local build=$1 out=$2
    local -a packages
    [ -x "$build/sovtrain" ] || die "$build/sovtrain not found: build first"
    command -v dpkg >/dev/null || die "dpkg not found: this script runs on Debian"

    # Start from an empty bundle so that no stale .deb travels.
    rm -rf "$out"
    mkdir -p "$out"

    mapfile -t packages < <(resolve_packages "$build")
    log "packages (${#packages[@]}): ${packages[*]}"
    fetch_debs "$out/debs" "${packages[@]}"
    write_packages_list "$out/packages.txt" "$out/debs"
    write_alternative_links "$out/links.txt" "${packages[@]}"
    copy_data "$out"
    copy_nccl_tests "$out"
    copy_nccl_include "$out"

    log "debs: $(du -sh "$out/debs" | cut -f1), alternatives: $(wc -l <"$out/links.txt") links"
    du -sh "$out"/* >&2
    log "total: $(du -sh "$out" | cut -f1) in $out"
}

main "$@"

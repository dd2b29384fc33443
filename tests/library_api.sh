#!/usr/bin/env bash
# library_api.sh BUILD_DIR [CFLAGS]: libsovtrain as users see it, from an installation into a temporary prefix.
# CFLAGS are added to the users' programs: a sanitizer build's library needs programs built with its sanitizer.
#  1. every public header compiles alone, as C11 and as C++17, with nothing but the installed include directory;
#  2. libsovtrain.so exports exactly the functions the public headers declare SOV_API, and has a SONAME;
#  3. a program built with `pkg-config --cflags --libs sovtrain` alone links and runs, and so does one built with
#     CMake's find_package(sovtrain); the installed `sovtrain` command finds its library.
set -u
build=$(realpath "$1")
user_flags=${2:-}
tmp=$(mktemp -d /tmp/sovtrain-libapi-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" >"$tmp/install.log" 2>&1 || { cat "$tmp/install.log"; echo "FAIL: install"; exit 1; }
libdir=$(find "$prefix" -name libsovtrain.so -printf '%h\n' | head -n 1)
[ -n "$libdir" ] || { echo "FAIL: no libsovtrain.so under $prefix"; exit 1; }
headers=$(cd "$prefix/include" && ls sovtrain/*.h)
echo "installed: $(echo $headers) in $prefix/include; libraries in $libdir: $(cd "$libdir" && ls libsovtrain*)"

# 1. each header alone
for h in $headers; do
    printf '#include <%s>\n' "$h" >"$tmp/one.c"
    cp "$tmp/one.c" "$tmp/one.cpp"
    gcc -std=c11 -Wall -Wextra -Werror -pedantic -fsyntax-only -I"$prefix/include" "$tmp/one.c" 2>"$tmp/err" ||
        fail "$h does not compile alone as C11: $(cat "$tmp/err")"
    g++ -std=c++17 -Wall -Wextra -Werror -pedantic -fsyntax-only -I"$prefix/include" "$tmp/one.cpp" 2>"$tmp/err" ||
        fail "$h does not compile alone as C++17: $(cat "$tmp/err")"
done
echo "headers: each compiled alone as C11 and C++17"

# 2. exported symbols == declared API
(cd "$prefix/include" && cat $headers) | grep -v '^#' | tr '\n' ' ' | grep -oE 'SOV_API[^;{(]*\(' |
    sed -E 's/\($//; s/.*[^A-Za-z0-9_]([A-Za-z_][A-Za-z0-9_]*)$/\1/' | sort -u >"$tmp/declared"
nm -D --defined-only "$libdir/libsovtrain.so" | awk '$2 ~ /^[TtWiDdBbRr]$/ {print $3}' | sed 's/@.*//' | sort -u >"$tmp/exported"
if ! diff "$tmp/declared" "$tmp/exported" >"$tmp/diff"; then
    fail "exported symbols differ from the public API (< declared only, > exported only): $(cat "$tmp/diff")"
else
    echo "exports: the $(wc -l <"$tmp/declared") functions declared SOV_API, nothing else"
fi
[ "$(wc -l <"$tmp/declared")" -gt 50 ] || fail "only $(wc -l <"$tmp/declared") declarations found: the parser broke"
soname=$(readelf -d "$libdir/libsovtrain.so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
case "$soname" in
libsovtrain.so.[0-9]*) echo "soname: $soname" ;;
*) fail "libsovtrain.so has SONAME \"$soname\"" ;;
esac
[ -f "$libdir/libsovtrain.a" ] || fail "no static library libsovtrain.a"

# 3. a program of a user's own, through pkg-config alone, then through find_package
cat >"$tmp/user.c" <<'C'
#include <sovtrain/ckpt.h>
#include <sovtrain/comm.h>
#include <sovtrain/sov.h>
#include <stdio.h>
int main(void) {
    sov_world w;
    if (sov_world_from_env(&w) != SOV_OK) {
        fprintf(stderr, "%s\n", sov_last_error());
        return 1;
    }
    printf("sovtrain %s: rank %d of %d; %s is %zu bytes\n", sov_version(), w.rank, w.size, sov_dtype_name(SOV_BF16),
           sov_dtype_size(SOV_BF16));
    return 0;
}
C
export PKG_CONFIG_PATH=$libdir/pkgconfig
# shellcheck disable=SC2046 # pkg-config's output is a list of flags
if gcc -std=c11 -Wall -Werror $user_flags "$tmp/user.c" -o "$tmp/user" $(pkg-config --cflags --libs sovtrain) 2>"$tmp/err"; then
    out=$(LD_LIBRARY_PATH=$libdir "$tmp/user" 2>&1)
    grep -q "^sovtrain .*: rank 0 of 1; bf16 is 2 bytes" <<<"$out" && echo "pkg-config: $out" ||
        fail "the pkg-config-built program printed: $out"
else
    fail "a program built with pkg-config alone: $(cat "$tmp/err")"
fi
mkdir -p "$tmp/cm"
cp "$tmp/user.c" "$tmp/cm/"
cat >"$tmp/cm/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.25)
project(user C)
find_package(sovtrain REQUIRED)
add_executable(user user.c)
target_link_libraries(user PRIVATE sovtrain::sovtrain)
CM
if cmake -S "$tmp/cm" -B "$tmp/cm/b" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_FLAGS="$user_flags" >"$tmp/err" 2>&1 &&
    cmake --build "$tmp/cm/b" >>"$tmp/err" 2>&1; then
    out=$("$tmp/cm/b/user" 2>&1)
    grep -q "rank 0 of 1" <<<"$out" && echo "find_package: $out" || fail "the find_package-built program printed: $out"
else
    fail "find_package(sovtrain): $(tail -n 20 "$tmp/err")"
fi
out=$("$prefix/bin/sovtrain" version 2>&1) && grep -q "^sovtrain " <<<"$out" ||
    fail "the installed sovtrain command: $out"
used=$(ldd "$prefix/bin/sovtrain" | sed -n 's/.*libsovtrain\.so[.0-9]* => \([^ ]*\) .*/\1/p')
[ -n "$used" ] && [ "$(realpath "$(dirname "$used")")" = "$(realpath "$libdir")" ] ||
    fail "the installed sovtrain command uses \"$used\", not the library in $libdir"

[ $failures -eq 0 ] && echo "library_api: all checks passed"
exit $((failures > 0))

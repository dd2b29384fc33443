# swift/lib.sh: a real OpenStack Swift (Debian's python3-swift) on 127.0.0.1 for the tests of the Swift and S3
# checkpoint stores. Source it after tests/lib.sh (it needs $tmp and lib.sh's EXIT trap):
#     . "$(dirname "$0")/lib.sh"; . "$(dirname "$0")/swift/lib.sh"; swift_start
# swift_start exits 77 (skip) when python3-swift is not installed.

# Debian's swift package is for the system Python, which a pyenv or venv python first on PATH is not.
SWIFT_PYTHON=${SWIFT_PYTHON:-/usr/bin/python3}
SWIFT_SERVER=$TESTS/swift/server.py
SWIFT_DIR=$tmp/swift

# swift_start: starts the proxy, account, container and object servers under $SWIFT_DIR and exports the
# variables of $SWIFT_DIR/env (SWIFT_PROXY_PORT, ST_AUTH, ST_USER, ST_KEY, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_REGION). The servers stop when the test exits: through the EXIT trap, or by themselves
# (--owner) when the test is killed outright.
swift_start() {
    local out rc
    out=$("$SWIFT_PYTHON" "$SWIFT_SERVER" start "$SWIFT_DIR" --owner $$ 2>&1)
    rc=$?
    if [ "$rc" -eq 77 ]; then
        echo "SKIP: $out"
        exit 77
    fi
    # registered before the check below: a failed start may leave servers that stop must end
    swift_on_exit
    if [ "$rc" -ne 0 ]; then
        echo "FAIL: swift_start: $out"
        exit 1
    fi
    echo "$out"
    set -a
    . "$SWIFT_DIR/env"
    set +a
}

# swift_stop: stops the servers swift_start started (SIGTERM, SIGKILL after 5 s); harmless when none runs.
swift_stop() {
    [ -f "$SWIFT_DIR/pids" ] || return 0
    "$SWIFT_PYTHON" "$SWIFT_SERVER" stop "$SWIFT_DIR"
}

# swift_kill SERVER: stops one of proxy, account, container, object (fault tests).
swift_kill() {
    "$SWIFT_PYTHON" "$SWIFT_SERVER" kill "$SWIFT_DIR" "$1"
}

# swift_on_exit: adds swift_stop in front of the EXIT trap already set (lib.sh's cleanup, which removes $tmp and
# with it the pids file that swift_stop reads), keeping that trap. Once only: swift_start may run again after a
# swift_stop.
swift_on_exit() {
    [ -z "${swift_prev_exit_trap+set}" ] || return 0
    local t
    # `trap -p EXIT` prints the trap as a quoted command line: trap -- 'CMD' EXIT
    eval "t=($(trap -p EXIT))"
    swift_prev_exit_trap=${t[2]:-}
    trap 'swift_stop >/dev/null; eval "$swift_prev_exit_trap"' EXIT
}

#!/usr/bin/env bash
# Several "hosts" on one machine: two network namespaces joined by veth pairs to a bridge (addresses of the
# test's own subnet; nothing leaves the machine), and mpirun starting its daemons in them through an rsh agent
# that runs each command in the namespace named by its host. A training job across the two hosts (hier
# collectives: shm inside a host, MPI over the veth between them) matches the 1-rank weights; a rank killed on
# one host is restarted from the latest checkpoint and the result is bitwise identical. Skips where namespaces
# cannot be made (not root, no iproute2).
. "$(dirname "$0")/lib.sh"
need_data
[ "$(id -u)" -eq 0 ] && command -v ip >/dev/null || { echo "SKIP: needs root and iproute2 for network namespaces"; exit 77; }
tag="sv$$"
net=10.253.$(($$ % 200 + 20))
br="${tag}br"
teardown() {
    for h in 1 2; do ip netns del "${tag}h$h" 2>/dev/null; ip link del "${tag}v$h" 2>/dev/null; done
    ip link del "$br" 2>/dev/null
    cleanup
}
trap teardown EXIT
ip link add "$br" type bridge && ip addr add "$net.254/24" dev "$br" && ip link set "$br" up \
    || { echo "SKIP: cannot create a bridge here"; exit 77; }
for h in 1 2; do
    ns="${tag}h$h"
    ip netns add "$ns" || { echo "SKIP: cannot create network namespaces here"; exit 77; }
    ip link add "${tag}v$h" type veth peer name eth0 netns "$ns"
    ip link set "${tag}v$h" master "$br" up
    ip -n "$ns" addr add "$net.$h/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
done
# wait until the links are up and the bridge forwards (a fresh bridge port is not forwarding at once)
for _ in $(seq 100); do
    ready=1
    for h in 1 2; do
        [ "$(cat "/sys/class/net/${tag}v$h/brport/state" 2>/dev/null)" = 3 ] || ready=0
        ip -n "${tag}h$h" link show eth0 | grep -q "LOWER_UP" || ready=0
    done
    [ $ready = 1 ] && break
    sleep 0.1
done
[ $ready = 1 ] || { echo "SKIP: the namespace links never came up"; exit 77; }
# the remote-start agent: "agent HOST CMD..." runs CMD inside HOST's namespace
# Each "host" gets its own temporary directory, as real hosts have their own /tmp: two orteds sharing one race on
# Open MPI's session directory (mkdir: File exists) and on hwloc's topology file (a segfault in
# hwloc_shmem_topology_write), which made about one start in ten fail or hang.
cat >"$tmp/agent" <<AGENT
#!/bin/sh
host=\$1; shift
h=\${host##*.}
mkdir -p "$tmp/host\$h"
export OMPI_MCA_orte_tmpdir_base="$tmp/host\$h"
exec ip netns exec "${tag}h\$h" sh -c "\$*"
AGENT
chmod +x "$tmp/agent"
mca=(--mca plm_rsh_agent "$tmp/agent" --mca oob_tcp_if_include "$net.0/24" --mca btl_tcp_if_include "$net.0/24"
     --mca btl self,tcp --mca plm_rsh_no_tree_spawn 1 --mca routed direct)
hosts="$net.1:1,$net.2:1"

# which host each rank ran on, as Open MPI sees it
out=$(launch -np 2 -H "$hosts" "${mca[@]}" --max-restarts 0 -- sh -c 'echo "rank $RANK on $(ip -4 -o addr show eth0 | awk "{print \$4}")"' 2>&1) \
    || fail "a job across the namespaces failed: $out"
if grep -q "rank 0 on $net.1/24" <<<"$out" && grep -q "rank 1 on $net.2/24" <<<"$out"; then
    echo "ok: one rank per namespace host: $(grep -o 'rank [01] on [0-9./]*' <<<"$out" | tr '\n' ' ')"
else
    fail "ranks not one per host: $out"
fi

C=(--hidden 32 --batch 32 --steps 1000 --warmup-steps 10 --log-every 1 --threads 1 --eval-every 0 --ckpt-every 250)
"$SOV" train "${C[@]}" --run-dir "$tmp/one" --dump-params "$tmp/p1" >/dev/null 2>&1 || fail "1-rank reference run"
launch -np 2 -H "$hosts" "${mca[@]}" -- sovtrain train "${C[@]}" --run-dir "$tmp/two" --dump-params "$tmp/p2" \
    >"$tmp/two.log" 2>&1 || fail "2-host job failed: $(tail -20 "$tmp/two.log")"
grep -q "2 ranks (hier comm)" "$tmp/two.log" || fail "2 hosts did not pick the hier backend: $(grep sovtrain "$tmp/two.log")"
python3 - "$tmp/p1" "$tmp/p2" <<'PY' || fail "2-host weights differ from the 1-rank weights"
import array, sys
a, b = (array.array("f", open(p, "rb").read()) for p in sys.argv[1:3])
d = max(abs(x - y) for x, y in zip(a, b))
print(f"2 hosts vs 1 rank: max |dw| = {d:.2g}")
assert d < 1e-5
PY

# kill rank 1 on host 2 after the step-250 checkpoint: restart, and the same weights as the uninterrupted 2-host run
launch -np 2 -H "$hosts" "${mca[@]}" -- sovtrain train "${C[@]}" --run-dir "$tmp/k" --dump-params "$tmp/pk" \
    >"$tmp/k.log" 2>&1 &
job=$!
for _ in $(seq 600); do [ -e "$tmp/k/checkpoints/step-250/manifest.json" ] && break; sleep 0.05; done
victim=""
for p in $(ip netns pids "${tag}h2"); do
    grep -q "train" "/proc/$p/cmdline" 2>/dev/null && ! grep -q "orted" "/proc/$p/cmdline" && victim=$p
done
[ -n "$victim" ] && kill -9 "$victim" || fail "no rank found in host 2's namespace to kill"
wait "$job" || fail "the restarted 2-host job failed: $(tail -20 "$tmp/k.log")"
grep -q "restart 1 of 3" "$tmp/k.log" || fail "no restart: $(grep launch "$tmp/k.log")"
cmp -s "$tmp/p2" "$tmp/pk" || fail "after a rank was killed on host 2 and the job restarted, the weights differ"
echo "ok: rank killed on host 2 -> $(grep -o 'summary: .*' "$tmp/k.log" | head -1)"; grep "attempt [0-9] failed" "$tmp/k.log"
finish

#!/usr/bin/env bash
# `sovtrain launch` runs real mpirun jobs: the command line it builds, rank-tagged output, exit status, hostfiles,
# and SIGTERM, SIGUSR1 and a process-group SIGINT passed on to the job as SIGUSR1.
. "$(dirname "$0")/lib.sh"

# --dry-run prints the mpirun line; "sovtrain" resolves to this binary.
line=$(launch -np 2 --dry-run -- sovtrain train --steps 3)
grep -q -- "-np 2 " <<<"$line" || fail "dry run lacks -np 2: $line"
grep -q -- "--tag-output" <<<"$line" || fail "dry run lacks --tag-output: $line"
grep -qF -- "--mca pml ob1 --mca btl self,vader,tcp" <<<"$line" || fail "dry run lacks MPI's TCP defaults: $line"
grep -q -- "$SOV _rank $SOV train --steps 3\$" <<<"$line" || fail "dry run does not run $SOV: $line"
line=$(launch -np 2 -H localhost:2 --mca btl self,vader -x FOO=bar --dry-run -- echo 'a b')
grep -qF -- "-H localhost:2" <<<"$line" || fail "dry run lacks -H: $line"
grep -qF -- "--mca btl self,vader" <<<"$line" || fail "dry run lacks --mca: $line"
[ "$(grep -o -- "--mca btl" <<<"$line" | wc -l)" -eq 1 ] || fail "the user's --mca btl did not replace the default: $line"
grep -qF -- "-x FOO=bar" <<<"$line" || fail "dry run lacks -x: $line"
grep -qF -- "echo 'a b'" <<<"$line" || fail "dry run does not quote arguments: $line"
echo "ok: dry run: $line"

# --nproc-per-node G: -np is G x hosts, mapped G per host; a larger -np is refused before anything starts.
line=$(launch --nproc-per-node 2 -H localhost:2,127.0.0.1:2 --dry-run -- true)
grep -qF -- "-np 4 " <<<"$line" && grep -qF -- "--map-by ppr:2:node" <<<"$line" \
    || fail "--nproc-per-node 2 on 2 hosts: $line"
expect_error 2 "-np 5 exceeds --nproc-per-node 2 x 2 hosts = 4 ranks" \
    "$SOV" launch -np 5 --nproc-per-node 2 -H localhost:4,127.0.0.1:4 -- true
out=$(launch --nproc-per-node 2 -- sh -c 'echo "local $LOCAL_RANK of $LOCAL_WORLD_SIZE, world $WORLD_SIZE"' 2>&1)
grep -q "\[rank 1\] local 1 of 2, world 2" <<<"$out" || fail "--nproc-per-node 2 on this host: $out"
echo "ok: --nproc-per-node: $line"

# Output is tagged per rank, stdout and stderr each to their own stream.
launch -np 2 -- sh -c 'echo "out $OMPI_COMM_WORLD_RANK"; echo "err $OMPI_COMM_WORLD_RANK" >&2' \
    >"$tmp/out" 2>"$tmp/err"
for r in 0 1; do
    grep -qx "\[rank $r\] out $r" "$tmp/out" || fail "stdout lacks '[rank $r] out $r': $(cat "$tmp/out")"
    grep -qx "\[rank $r\] err $r" "$tmp/err" || fail "stderr lacks '[rank $r] err $r': $(cat "$tmp/err")"
done
echo "ok: tagged output"

# A line written in pieces (mpirun tags each piece it reads, not lines) comes out whole, once, under its rank; a
# last line without a newline too. The ranks write at once: their pieces interleave.
launch -np 3 -- sh -c 'printf "a%s-" "$OMPI_COMM_WORLD_RANK"; printf "b%s\n" "$OMPI_COMM_WORLD_RANK"
                       printf "c%s-" "$OMPI_COMM_WORLD_RANK"; printf "d%s" "$OMPI_COMM_WORLD_RANK"' >"$tmp/pieces"
for r in 0 1 2; do
    grep -qx "\[rank $r\] a$r-b$r" "$tmp/pieces" && grep -qx "\[rank $r\] c$r-d$r" "$tmp/pieces" ||
        fail "rank $r's lines in pieces: $(cat "$tmp/pieces")"
done
[ "$(wc -l <"$tmp/pieces")" -eq 6 ] && ! grep -q "<stdout>" "$tmp/pieces" || fail "lines in pieces: $(cat "$tmp/pieces")"
echo "ok: lines written in pieces come out whole under their rank"

# --log-dir: each rank's lines also go to its own file.
launch -np 2 --log-dir "$tmp/logs" -- sh -c 'echo "hello $OMPI_COMM_WORLD_RANK"' >/dev/null 2>&1
for r in 0 1; do
    grep -qx "hello $r" "$tmp/logs/rank-$r.log" || fail "--log-dir: rank-$r.log: $(cat "$tmp/logs/rank-$r.log" 2>&1)"
done
echo "ok: per-rank log files"

# --preflight: sovtrain doctor on every host before the job.
out=$(launch -np 2 --preflight -- sh -c 'echo "job rank $OMPI_COMM_WORLD_RANK"' 2>&1) || fail "--preflight: $out"
grep -q "RDMA (libibverbs)" <<<"$out" && grep -q "job rank 1" <<<"$out" || fail "--preflight: $out"
echo "ok: --preflight ran doctor, then the job"

# The job's exit status is the launcher's.
launch -np 2 --max-restarts 0 -- sh -c 'exit $((OMPI_COMM_WORLD_RANK * 3))' >/dev/null 2>&1
rc=$?
[ "$rc" -eq 3 ] || fail "a job whose rank 1 exits 3 made the launcher exit $rc"
launch -np 2 -- true || fail "a job of 'true' failed"
echo "ok: exit status"

# Hostfile and -H placement on this host.
printf '# this machine\nlocalhost slots=2\n' >"$tmp/hosts"
out=$(launch -np 2 --hostfile "$tmp/hosts" -- sh -c 'echo "size $OMPI_COMM_WORLD_SIZE"' 2>&1)
[ "$(grep -c '] size 2' <<<"$out")" -eq 2 ] || fail "hostfile job: $out"
out=$(launch -np 2 -H localhost:2 -- sh -c 'echo "size $OMPI_COMM_WORLD_SIZE"' 2>&1)
[ "$(grep -c '] size 2' <<<"$out")" -eq 2 ] || fail "-H job: $out"
echo "ok: hostfile and -H"

# Inside a Kubeflow MPI Operator launcher pod: no flags, the hostfile from OMPI_MCA_orte_default_hostfile
out=$(OMPI_MCA_orte_default_hostfile="$tmp/hosts" launch -- sh -c 'echo "size $OMPI_COMM_WORLD_SIZE"' 2>&1)
[ "$(grep -c '] size 2' <<<"$out")" -eq 2 ] && grep -q "using the hostfile $tmp/hosts" <<<"$out" \
    || fail "MPI Operator hostfile: $out"
echo "ok: OMPI_MCA_orte_default_hostfile picked up: 2 ranks"

# SIGTERM, SIGUSR1 (Slurm's usual preemption warning) and SIGINT to the launcher's whole process group (Ctrl-C,
# salloc -K, scancel) all reach the ranks as SIGUSR1 (mpirun forwards SIGUSR1 and would kill on SIGTERM; it runs
# in its own process group, so the group signal reaches only the launcher): each rank records the signal it got,
# then exits 0, and so does the launcher.
cat >"$tmp/rank.sh" <<SH
trap 'echo USR1 > "$tmp/term.\$OMPI_COMM_WORLD_RANK"; exit 0' USR1
trap 'echo TERM > "$tmp/term.\$OMPI_COMM_WORLD_RANK"; exit 0' TERM
touch "$tmp/up.\$OMPI_COMM_WORLD_RANK"
while :; do sleep 0.1; done
SH
for how in TERM USR1 group-INT; do
    rm -f "$tmp"/up.* "$tmp"/term.*
    # (not through the launch function: $! must be the launcher itself; setsid makes it a process group leader)
    ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" setsid "$SOV" launch -np 2 -- bash "$tmp/rank.sh" \
        >"$tmp/sig.out" 2>&1 &
    launcher=$!
    for _ in $(seq 300); do [ -e "$tmp/up.0" ] && [ -e "$tmp/up.1" ] && break; sleep 0.1; done
    [ -e "$tmp/up.0" ] && [ -e "$tmp/up.1" ] || fail "$how: ranks did not start within 30 s"
    case $how in
    group-INT) kill -INT -- "-$launcher" ;;
    *) kill "-$how" "$launcher" ;;
    esac
    wait "$launcher"
    rc=$?
    for r in 0 1; do
        [ "$(cat "$tmp/term.$r" 2>/dev/null)" = USR1 ] || fail "$how: rank $r did not get SIGUSR1: $(cat "$tmp/sig.out")"
    done
    [ "$rc" -eq 0 ] || fail "$how: the launcher exited $rc: $(cat "$tmp/sig.out")"
    echo "ok: $how to the launcher -> SIGUSR1 on every rank, exit $rc"
done

finish

#!/usr/bin/env bash
# `sovtrain launch` inside a real Slurm allocation: a private one-node cluster (munged, slurmctld, slurmd, all under
# $tmp, on ports of their own) runs the jobs. Inside `salloc -n 2`, with no -np and no -H, the launcher takes its
# placement from SLURM_NTASKS/SLURM_JOB_NODELIST; the ranks get torchrun's variables; Slurm's own scancel stops a
# job with a checkpoint and exit 0, and --resume latest continues from it; -np beyond the allocation is refused
# before anything starts. Needs root (the daemons run as SlurmUser=root) and Debian's slurmctld, slurmd,
# slurm-client and munge (scripts/setup.sh).
. "$(dirname "$0")/lib.sh"

if [ "$(id -u)" -ne 0 ]; then
    echo "SKIP: needs root (the private Slurm cluster runs its daemons as root)"
    exit 77
fi
for b in munged slurmctld slurmd salloc sbatch sinfo squeue scontrol scancel; do
    if ! command -v "$b" >/dev/null; then
        echo "SKIP: $b missing (scripts/setup.sh installs slurmctld slurmd slurm-client munge)"
        exit 77
    fi
done
if [ "$(nproc)" -lt 2 ]; then
    echo "SKIP: the one-node cluster has CPUs=2 and this machine has $(nproc)"
    exit 77
fi
need_data

# Nothing of an outer Slurm job or MPI Operator pod may leak in: the allocations below are the only ones.
for v in $(compgen -e | grep -E '^(SLURM_|SALLOC_|SBATCH_|SRUN_)'); do unset "$v"; done
unset OMPI_MCA_orte_default_hostfile

S=$tmp/slurm
node=$(hostname -s)

# --- teardown (before lib.sh's cleanup): jobs, then stragglers of ours, then the daemons, each by its pid
stop_pid() { # PID: SIGTERM, up to 10 s to exit, then SIGKILL
    local p=$1
    kill -TERM "$p" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
    for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
}
teardown() {
    if [ -f "$S/slurmctld.pid" ]; then
        for j in $(squeue -h -o %i 2>/dev/null); do scancel "$j" 2>/dev/null; done
        for _ in $(seq 100); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.1; done
    fi
    for p in $(pgrep -f -- "--run-dir $tmp/"); do stop_pid "$p"; done
    for d in slurmd slurmctld munged; do
        [ -f "$S/$d.pid" ] && stop_pid "$(cat "$S/$d.pid")"
    done
}
trap 'teardown; cleanup' EXIT
trap 'exit 130' INT # so that an interrupted run stops its daemons too
trap 'exit 143' TERM

# --- the cluster. munged insists that everyone can reach its socket's directory: $tmp is mode 700 otherwise.
chmod 711 "$tmp"
mkdir -m 755 "$S"
mkdir -m 700 "$S/state" "$S/spool"
head -c 1024 /dev/urandom >"$S/munge.key"
chmod 600 "$S/munge.key"
munged --socket="$S/munge.sock" --key-file="$S/munge.key" --pid-file="$S/munged.pid" --seed-file="$S/munged.seed" \
    --log-file="$S/munged.log" || { fail "munged did not start: $(tail -3 "$S/munged.log")"; finish; }

# Ports from this test's pid (below the ephemeral range), moved on while something else holds them.
ports_free() {
    python3 -c "
import socket, sys
for p in sys.argv[1:]:
    s = socket.socket()
    try:
        s.bind(('', int(p)))
    except OSError:
        sys.exit(1)
    finally:
        s.close()" "$@"
}
port=$((10000 + ($$ % 10000) * 2))
for _ in $(seq 50); do ports_free "$port" $((port + 1)) && break; port=$((port + 2)); done

: >"$S/plugstack.conf"
cat >"$S/slurm.conf" <<EOF
ClusterName=sovtrain-test
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$S/munge.sock
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
SlurmctldLogFile=$S/slurmctld.log
SlurmdLogFile=$S/slurmd.log
PlugStackConfig=$S/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=30
NodeName=$node NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=10 State=UP
EOF
export SLURM_CONF=$S/slurm.conf
slurmctld -c -f "$SLURM_CONF" || { fail "slurmctld did not start: $(tail -5 "$S/slurmctld.log")"; finish; }
slurmd -f "$SLURM_CONF" || { fail "slurmd did not start: $(tail -5 "$S/slurmd.log")"; finish; }
state=""
for _ in $(seq 300); do
    state=$(sinfo -h -N -n "$node" -o %T 2>/dev/null)
    [ "$state" = idle ] && break
    sleep 0.1
done
if [ "$state" != idle ]; then
    fail "node $node is not idle after 30 s (state \"$state\"): $(scontrol show node "$node" 2>&1 | grep -E 'State|Reason')
$(tail -5 "$S/slurmctld.log" "$S/slurmd.log")"
    finish
fi
echo "ok: one-node cluster up: node $node idle, slurmctld on port $port"

# Every allocation gives up rather than wait on a broken cluster; leak checking is off inside MPI jobs (see launch
# in lib.sh). salloc runs its command here, outside any job step, with SLURM_NTASKS and SLURM_JOB_NODELIST set.
asan="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
alloc() { ASAN_OPTIONS="$asan" salloc --immediate=30 --time=5 "$@"; }

last_step() { # RUN_DIR: the last step metrics.jsonl shows (0 before any); one light process, as the load may be high
    [ -f "$1/metrics.jsonl" ] || { echo 0; return; }
    awk -F'"step":' '/"event":"step"/ { split($2, a, ","); s = a[1] } END { print s + 0 }' "$1/metrics.jsonl"
}

# --- a. no flags: 2 ranks from SLURM_NTASKS, a tiny MLP trains; --dry-run shows the mpirun line it would use
T=(--hidden 32 --batch 32 --steps 20 --threads 1 --eval-every 0)
alloc -n 2 "$SOV" launch -- sovtrain train "${T[@]}" --run-dir "$tmp/a" >"$tmp/a.log" 2>&1 || fail "a: the job failed: $(tail -5 "$tmp/a.log")"
grep -q "sovtrain launch: inside the Slurm allocation of $node: 2 ranks (SLURM_NTASKS)" "$tmp/a.log" \
    || fail "a: the launcher did not adopt the allocation: $(grep -v '\] step' "$tmp/a.log")"
grep -q '^\[rank 0\] done: 20 steps .*parameters identical on all 2 ranks' "$tmp/a.log" \
    && grep -q '"world_size":2' "$tmp/a/metrics.jsonl" || fail "a: not a 2-rank run: $(tail -5 "$tmp/a.log")"
echo "ok: salloc -n 2 sovtrain launch (no -np, no -H): $(grep -o 'inside the Slurm allocation.*' "$tmp/a.log"); trained: $(grep -o 'done: 20 steps.*ranks' "$tmp/a.log")"
line=$(alloc -n 2 "$SOV" launch --dry-run -- sovtrain train "${T[@]}" 2>/dev/null)
grep -q -- "^mpirun -np 2 " <<<"$line" || fail "a: dry run lacks -np 2: $line"
grep -qE -- " (-H|--hostfile|--oversubscribe) " <<<"$line" && fail "a: dry run overrides Slurm's placement: $line"
echo "ok: dry run inside the allocation: $line"

# --- b. torchrun's variables inside the allocation
# (MASTER_ADDR is the allocation's first node, where rank 0 runs)
out=$(alloc -n 2 "$SOV" launch -- sh -c 'echo "RANK=$RANK WORLD_SIZE=$WORLD_SIZE LOCAL_RANK=$LOCAL_RANK MASTER_ADDR=$MASTER_ADDR"' 2>&1)
for r in 0 1; do
    grep -qx "\[rank $r\] RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=$node" <<<"$out" || fail "b: rank $r's variables: $out"
done
echo "ok: torchrun variables: $(grep '^\[rank' <<<"$out" | sort | tr '\n' ' ')"

# --- c. preemption through Slurm. What Slurm 22.05 delivers, as tried on this cluster (KillWait=30):
#  * salloc: its command runs outside any job step, so `scancel -s USR1 JOB` and `scancel -f -s USR1 JOB` reach
#    nothing, and `scancel -b` refuses ("Job script not specified"). A plain `scancel JOB` revokes the allocation;
#    only with `salloc -K`/`--kill-command` does salloc then signal its command (SIGTERM when not interactive) -
#    with killpg, so mpirun (in the launcher's process group) gets the SIGTERM too: the ranks still save a
#    checkpoint, but mpirun aborts the job and the launcher exits 1.
#  * sbatch, batch script `exec sovtrain launch ...`: `scancel --batch --signal=TERM JOB` signals the batch
#    script's process alone, i.e. the launcher, which passes SIGUSR1 through mpirun to the ranks: checkpoint,
#    exit 0 (JobState=COMPLETED ExitCode=0:0). `scancel --batch --signal=USR1` reaches the launcher alone too, but
#    the launcher does not handle SIGUSR1: it dies and leaves mpirun and the ranks behind. A plain `scancel JOB`
#    sends SIGCONT+SIGTERM to every process of the batch step (launcher, mpirun, ranks), SIGKILL after KillWait:
#    a checkpoint, but exit 1, as above (Slurm documents the same signals for a time limit and a preemption).
# This checks the path that works as designed: scancel --batch --signal=TERM on an sbatch job, twice: the job runs
# until it is stopped (whatever the load on this machine), then again with --resume latest, which must continue
# from the first stop's checkpoint.
C=(--hidden 64 --batch 32 --steps 1000000 --warmup-steps 10 --log-every 10 --threads 1 --eval-every 0
    --ckpt-every 1000000 --run-dir "$tmp/c")
# preempt LOG STEP [ARGS...]: `sovtrain launch -- sovtrain train C... ARGS` as the sbatch job's script; once
# metrics.jsonl passes STEP, scancel --batch --signal=TERM. The job must end COMPLETED, exit 0, after a checkpoint
# on the SIGUSR1 the launcher sent the ranks; sets $stopped to that step (empty when it did not).
preempt() {
    local log=$1 min=$2 job state="" exitcode deadline start
    shift 2
    stopped=""
    printf '#!/bin/bash\nexec %s\n' "$(printf '%q ' "$SOV" launch --grace 60 -- sovtrain train "${C[@]}" "$@")" \
        >"$log.sbatch"
    job=$(ASAN_OPTIONS="$asan" sbatch --parsable -n 2 --time=5 -J sovtrain-preempt -o "$log" "$log.sbatch")
    [ -n "$job" ] || { fail "c: sbatch failed"; return; }
    deadline=$((SECONDS + 60))
    until [ "$(last_step "$tmp/c")" -ge "$min" ] || [ "$SECONDS" -ge "$deadline" ]; do sleep 0.05; done
    [ "$(last_step "$tmp/c")" -ge "$min" ] || { fail "c: job $job did not reach step $min in 60 s: $(tail -5 "$log" 2>&1)"; return; }
    start=$SECONDS
    scancel --batch --signal=TERM "$job" || { fail "c: scancel --batch --signal=TERM $job failed"; return; }
    deadline=$((SECONDS + 90))
    while [ "$SECONDS" -lt "$deadline" ]; do
        state=$(scontrol show job -o "$job" | grep -o 'JobState=[A-Z_]*')
        case $state in *PENDING | *RUNNING | *COMPLETING | *SUSPENDED) sleep 0.1 ;; *) break ;; esac
    done
    exitcode=$(scontrol show job -o "$job" | grep -o ' ExitCode=[0-9:]*' | cut -d= -f2)
    [ "$state" = JobState=COMPLETED ] && [ "$exitcode" = 0:0 ] \
        || fail "c: job $job after scancel --batch --signal=TERM: $state ExitCode=$exitcode: $(grep -v '\] step' "$log")"
    stopped=$(sed -n 's/.*stopping at step \([0-9]*\) on SIGUSR1.*/\1/p' "$log" | tail -n 1)
    [ -n "$stopped" ] || { fail "c: job $job saved no checkpoint at a stop on SIGUSR1: $(grep -v '\] step' "$log")"; return; }
    echo "ok: scancel --batch --signal=TERM (job $job${1:+, $*}) -> the launcher's SIGUSR1 to the ranks: checkpoint at step $stopped, $state ExitCode=$exitcode in $((SECONDS - start)) s"
}
preempt "$tmp/c1.log" 300
if [ -n "$stopped" ]; then
    first=$stopped
    preempt "$tmp/c2.log" $((first + 300)) --resume latest
    if grep -q "resume: continuing from $tmp/c/checkpoints/step-$first (step $first of 1000000)" "$tmp/c2.log" &&
        [ -n "$stopped" ] && [ "$stopped" -gt "$first" ]; then
        echo "ok: --resume latest continued from step $first (stopped again at step $stopped)"
    else
        fail "c: --resume latest did not continue from step $first: $(grep -v '\] step' "$tmp/c2.log")"
    fi
fi

# --- d. -np beyond the allocation: refused before anything starts (mpirun itself would refuse too, but the
# launcher used to add --oversubscribe for -np above this host's cores and so oversubscribed the allocation)
expect_error 2 "-np 4 exceeds the 2 tasks of the Slurm allocation of $node" \
    alloc -n 2 "$SOV" launch -np 4 -- sh -c "touch $tmp/d.started"
[ -e "$tmp/d.started" ] && fail "d: ranks started despite -np 4 in an allocation of 2"

finish

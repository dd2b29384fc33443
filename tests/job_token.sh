#!/usr/bin/env bash
# Jobs that let no one in (docs/security.md): a 3-rank tcp job started without mpirun, with its secret in
# SOVTRAIN_JOB_TOKEN_FILE. While ranks 0 and 1 wait for rank 2, processes without the secret, and with a wrong one,
# connect to the rendezvous port and to rank 1's ring port and send a well-formed hello and garbage: each is
# refused and named (its address) in the log, and the job's final weights equal those of an undisturbed run. A
# job without a secret says so once; a secret file others can read is refused; `sovtrain launch` gives its ranks
# a secret of their own.
. "$(dirname "$0")/lib.sh"
need_data
C=(--hidden 64,32 --steps 30 --batch 48 --lr 2e-3 --warmup-steps 5 --log-every 10 --threads 1 --eval-every 0
   --comm tcp)
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
secret=$tmp/secret
openssl rand -hex 32 >"$secret" && chmod 600 "$secret"
INTRUDER=("$TESTS/fixtures/intruder.py")

# pod RANK PORT NAME ARGS...: one rank of a 3-rank job, in the background; its pid in $!
pod() {
    local rank=$1 port=$2 name=$3
    shift 3
    env -u OMPI_COMM_WORLD_RANK RANK="$rank" WORLD_SIZE=3 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 \
        MASTER_PORT="$port" SOVTRAIN_JOB_TOKEN_FILE="$secret" "$SOV" train "${C[@]}" --run-dir "$tmp/$name$rank" \
        "$@" >"$tmp/$name$rank.log" 2>&1 &
}

# --- undisturbed
port=$(free_port)
pids=()
for r in 0 1 2; do pod $r "$port" calm --dump-params "$tmp/calm.params"; pids+=($!); done
for p in "${pids[@]}"; do wait "$p" || fail "undisturbed job: $(cat "$tmp"/calm*.log)"; done
grep -q "has no secret" "$tmp/calm0.log" && fail "a job with a secret warned that it has none"

# --- disturbed: ranks 0 and 1 wait at the rendezvous for rank 2 while four intruders try
port=$(free_port)
pod 0 "$port" busy --dump-params "$tmp/busy.params"
p0=$!
pod 1 "$port" busy
p1=$!
ring=
for _ in $(seq 300); do # rank 1's ring listener: its only listening port
    ring=$(ss -ltnpH 2>/dev/null | grep "pid=$p1," | awk '{print $4}' | sed 's/.*://' | head -n 1)
    [ -n "$ring" ] && break
    sleep 0.1
done
[ -n "$ring" ] || fail "rank 1's ring port never appeared"
ipids=()
for how in "" "$(openssl rand -hex 32)"; do
    /usr/bin/python3 "${INTRUDER[@]}" rendezvous 127.0.0.1 "$port" $how >"$tmp/in-rdv${how:+-wrong}.log" 2>&1 &
    ipids+=($!)
    /usr/bin/python3 "${INTRUDER[@]}" ring 127.0.0.1 "$ring" $how >"$tmp/in-ring${how:+-wrong}.log" 2>&1 &
    ipids+=($!)
done
for _ in $(seq 300); do [ "$(grep -c "refused: rank 0: rendezvous: a connection from 127.0.0.1:[0-9]*:" "$tmp/busy0.log")" -ge 2 ] && break; sleep 0.1; done
pod 2 "$port" busy
p2=$!
for p in $p0 $p1 $p2; do wait "$p" || fail "the disturbed job: $(tail -5 "$tmp"/busy*.log)"; done
for p in "${ipids[@]}"; do wait "$p" || fail "an intruder was let in: $(cat "$tmp"/in-*.log)"; done
refused0=$(grep -c "refused: rank 0: rendezvous: a connection from 127.0.0.1:[0-9]*: it did not prove" "$tmp/busy0.log")
refused1=$(grep -c "refused: rank 1: tcp: a connection from 127.0.0.1:[0-9]*: it did not prove" "$tmp/busy1.log")
[ "$refused0" = 2 ] && [ "$refused1" = 2 ] ||
    fail "refusals: $refused0 at the rendezvous, $refused1 on the ring, expected 2 and 2: $(cat "$tmp"/busy*.log)"
grep -h "refused" "$tmp"/busy0.log "$tmp"/busy1.log | sed 's/^/  /'
cmp -s "$tmp/calm.params" "$tmp/busy.params" && echo "ok: refused 4 intruders (2 with a wrong secret); the weights equal an undisturbed run's" ||
    fail "the disturbed job's weights differ from the undisturbed one's"

# --- a rank with a wrong secret cannot join; one without a secret is told so
port=$(free_port)
pod 0 "$port" wrong --comm-timeout 4
q0=$!
env -u OMPI_COMM_WORLD_RANK RANK=1 WORLD_SIZE=3 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 \
    MASTER_PORT="$port" SOVTRAIN_JOB_TOKEN=another-secret-of-enough-length "$SOV" train "${C[@]}" --comm-timeout 4 \
    --run-dir "$tmp/wrong1" >"$tmp/wrong1.log" 2>&1 && fail "a rank with a wrong secret joined"
grep -q "refused: the other side holds another secret" "$tmp/wrong1.log" || fail "wrong secret: $(cat "$tmp/wrong1.log")"
wait $q0
grep -q "refused: rank 0: rendezvous: a connection from 127.0.0.1:[0-9]*: it did not prove" "$tmp/wrong0.log" ||
    fail "rank 0 did not name the rank with the wrong secret: $(cat "$tmp/wrong0.log")"
port=$(free_port)
env -u OMPI_COMM_WORLD_RANK RANK=0 WORLD_SIZE=2 LOCAL_RANK=0 LOCAL_WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 \
    MASTER_PORT="$port" "$SOV" train "${C[@]}" --comm-timeout 2 --run-dir "$tmp/none0" >"$tmp/none0.log" 2>&1
[ "$(grep -c "this job has no secret" "$tmp/none0.log")" = 1 ] || fail "no warning, or more than one: $(cat "$tmp/none0.log")"
chmod 644 "$secret"
expect_error 1 "is accessible to group or others" env RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT="$port" \
    SOVTRAIN_JOB_TOKEN_FILE="$secret" "$SOV" train "${C[@]}" --run-dir "$tmp/bad"
chmod 600 "$secret"

# --- sovtrain launch gives its ranks a secret of its own (forwarded by name, never on a command line)
launch -np 2 -- sh -c 'printf "%s\n" "${#SOVTRAIN_JOB_TOKEN}"' >"$tmp/launch.log" 2>&1 || fail "launch: $(cat "$tmp/launch.log")"
[ "$(grep -c ' 64$' "$tmp/launch.log")" = 2 ] || fail "the ranks did not get a 64-digit secret: $(cat "$tmp/launch.log")"
"$SOV" launch --dry-run -np 2 -- true | grep -q "SOVTRAIN_JOB_TOKEN=" && fail "the secret is on mpirun's command line"
finish

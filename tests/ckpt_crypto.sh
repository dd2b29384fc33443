#!/usr/bin/env bash
# Encrypted checkpoints (docs/security.md): round trips of a general state at 1-3 ranks, a training job resumed
# bit-exactly with a key file and with a key command (run once per save, on rank 0, and once per resume), no copy
# of a known marker in any file, and each attack on the stored state detected with a clear error and no crash:
# a wrong, missing or damaged key, chunks moved, swapped between files or checkpoints, cut off, a manifest edited
# and resealed, and every single-byte corruption.
# usage: ckpt_crypto.sh SOVTRAIN CKPT_STATE_CHECK CKPT_CORRUPT
. "$(dirname "$0")/lib.sh"
need_data
CHECK=$(realpath "$2")
CORRUPT=$(realpath "$3")
key=$tmp/key other=$tmp/other kek=$tmp/kms-kek calls=$tmp/kms-calls t=$tmp/t
openssl rand -out "$key" 32 && openssl rand -hex 32 >"$other" && openssl rand -hex 32 >"$kek" || fail "openssl rand"
chmod 600 "$key" "$other"
KEYCMD="/usr/bin/python3 $TESTS/fixtures/key_command.py $kek $calls"

# --- round trips: saved by 1, 2 and 3 ranks, loaded by 1 to 3, bitwise
for saved in 1 2 3; do
    dir=$tmp/state-$saved
    launch -np "$saved" -- "$CHECK" save "$dir" --key "$key" >"$tmp/log" 2>&1 || fail "save at $saved: $(cat "$tmp/log")"
    for loading in 1 2 3; do
        launch -np "$loading" -- "$CHECK" load "$dir/step-1" --key "$key" >"$tmp/log" 2>&1 ||
            fail "saved by $saved, loaded by $loading: $(cat "$tmp/log")"
    done
    "$SOV" ckpt verify "$dir" --ckpt-key-file "$key" | grep -q "authenticated, decrypted" || fail "verify of state-$saved"
    echo "ok: an encrypted state of 1100 tensors saved by $saved ranks loads bitwise at 1, 2 and 3 ranks"
done

# --- a training job resumes bit-exactly, with a key file and with a key command
C=(--hidden 32,16 --batch 64 --steps 40 --warmup-steps 5 --log-every 1 --threads 1 --eval-every 0)
for how in file command; do
    if [ $how = file ]; then K=(--ckpt-key-file "$key"); else K=(--ckpt-key-command "$KEYCMD"); fi
    : >"$calls"
    launch -np 2 -- sovtrain train "${C[@]}" "${K[@]}" --run-dir "$tmp/$how-a" --ckpt-every 20 --keep 5 \
        --dump-params "$tmp/$how-pa" >"$tmp/log" 2>&1 || fail "$how: the uninterrupted run: $(cat "$tmp/log")"
    wraps=$(grep -c '^wrap' "$calls")
    launch -np 2 -- sovtrain train "${C[@]}" "${K[@]}" --run-dir "$tmp/$how-b" \
        --resume "$tmp/$how-a/checkpoints/step-20" --dump-params "$tmp/$how-pb" >"$tmp/log" 2>&1 ||
        fail "$how: the resumed run: $(cat "$tmp/log")"
    grep -q "resume: continuing from .*step-20 (step 20 of 40)" "$tmp/log" || fail "$how: no resume line: $(cat "$tmp/log")"
    cmp -s "$tmp/$how-pa" "$tmp/$how-pb" || fail "$how: the resumed weights differ from the uninterrupted run's"
    if [ $how = command ]; then
        unwraps=$(grep -c '^unwrap' "$calls")
        [ "$wraps" = 2 ] && [ "$unwraps" = 1 ] ||
            fail "the key command ran $wraps times for 2 saves and $unwraps times for one resume at 2 ranks"
        echo "ok: the key command wrapped once per save ($wraps saves) and unwrapped once for a 2-rank resume"
    fi
    echo "ok: encrypted with a key $how, a 2-rank job resumes bit-exactly"
done
ck=$tmp/file-a/checkpoints/step-20

# --- rotating the key rewraps the data key of every checkpoint under a directory; the data files stay as they were
cp -r "$tmp/file-a/checkpoints" "$tmp/rot"
new=$tmp/new-key
openssl rand -out "$new" 32 && chmod 600 "$new"
sha256sum "$tmp"/rot/step-*/rank-*.bin >"$tmp/before.sum"
"$SOV" ckpt rekey "$tmp/rot" --ckpt-key-file "$key" --new-key-file "$new" >"$tmp/rekey.log" 2>&1 ||
    fail "rekey: $(cat "$tmp/rekey.log")"
[ "$(grep -c ": rekeyed" "$tmp/rekey.log")" = 2 ] || fail "rekey did not rotate both checkpoints: $(cat "$tmp/rekey.log")"
sha256sum -c --quiet "$tmp/before.sum" || fail "rekey changed a data file"
"$SOV" ckpt verify "$tmp/rot/step-40" --ckpt-key-file "$new" | grep -q "authenticated, decrypted" ||
    fail "the rekeyed checkpoint does not verify with the new key"
expect_error 1 "wrong key" "$SOV" ckpt verify "$tmp/rot/step-40" --ckpt-key-file "$key"
launch -np 2 -- sovtrain train "${C[@]}" --ckpt-key-file "$new" --run-dir "$tmp/rot-run" --resume "$tmp/rot/step-20" \
    --dump-params "$tmp/rot-p" >"$tmp/log" 2>&1 && cmp -s "$tmp/rot-p" "$tmp/file-pa" &&
    echo "ok: rekeyed to a new key (data files untouched), the old key refused, a resume with the new one bit-exact" ||
    fail "resume after rekey: $(tail -5 "$tmp/log")"

# --- errors that name the key
expect_error 1 "is encrypted with key id local:" "$SOV" train "${C[@]}" --run-dir "$tmp/nokey" --resume "$ck"
expect_error 1 "not with the key file $other" "$SOV" train "${C[@]}" --run-dir "$tmp/wrong" --resume "$ck" \
    --ckpt-key-file "$other"
expect_error 1 "give its key to read it" "$SOV" ckpt export "$ck" --format safetensors -o "$tmp/x.safetensors"
"$SOV" ckpt export "$ck" --ckpt-key-file "$key" --format safetensors -o "$tmp/x.safetensors" >/dev/null ||
    fail "export with the key"
chmod 640 "$other"
expect_error 1 "accessible to group or others (mode 640)" "$SOV" ckpt verify "$ck" --ckpt-key-file "$other"
chmod 600 "$other"
expect_error 1 "KMS is unreachable" "$SOV" ckpt verify "$tmp/command-a/checkpoints" \
    --ckpt-key-command "$KEYCMD fail"
expect_error 1 "its reply is not a JSON object" "$SOV" ckpt verify "$tmp/command-a/checkpoints" \
    --ckpt-key-command "$KEYCMD garbage"
expect_error 1 "refused: permission denied" "$SOV" ckpt verify "$tmp/command-a/checkpoints" \
    --ckpt-key-command "$KEYCMD refuse"
expect_error 1 "base64 of 32 bytes" "$SOV" ckpt verify "$tmp/command-a/checkpoints" --ckpt-key-command "$KEYCMD short"
expect_error 1 "wrapped by a key command, not by the key file" "$SOV" ckpt verify "$tmp/command-a/checkpoints" \
    --ckpt-key-file "$key"

# --- attacks on the stored bytes: each on a fresh copy of one checkpoint of random bytes at 2 ranks, in which
# every chunk of both files has the same size; the copy $tmp/twin is the same state saved again (another data key)
launch -np 2 -- "$CHECK" save "$tmp/noise" --noise --key "$key" >"$tmp/log" 2>&1 || fail "noise: $(cat "$tmp/log")"
launch -np 2 -- "$CHECK" save "$tmp/twin" --noise --key "$key" >/dev/null 2>&1 || fail "noise twin"
attack() { # NAME NEEDLE SETUP...: SETUP damages $t; verify with the key must fail naming NEEDLE
    local name=$1 needle=$2
    shift 2
    rm -rf "$t" && cp -r "$tmp/noise/step-1" "$t" && "$@"
    expect_error 1 "$needle" "$SOV" ckpt verify "$t" --ckpt-key-file "$key"
}
swap_files() { mv "$t/rank-0.bin" "$t/x" && mv "$t/rank-1.bin" "$t/rank-0.bin" && mv "$t/x" "$t/rank-1.bin"; }
attack "files swapped" "does not authenticate" swap_files
attack "a file from another checkpoint" "does not authenticate" cp "$tmp/twin/step-1/rank-1.bin" "$t/rank-1.bin"
attack "chunks moved in a file" "chunks were moved, swapped or cut off" /usr/bin/python3 "$TESTS/ckpt_tamper.py" swap-chunks "$t"
attack "a file cut short" "the manifest says" truncate -s -4096 "$t/rank-1.bin"
attack "the last chunk cut off, manifest resealed" "does not match its MAC" \
    /usr/bin/python3 "$TESTS/ckpt_tamper.py" drop-chunk "$t"
attack "a tensor renamed, manifest resealed" "does not match its MAC" \
    /usr/bin/python3 "$TESTS/ckpt_tamper.py" rename "$t"
attack "the wrapped key damaged, manifest resealed" "the wrapped key is damaged" \
    /usr/bin/python3 "$TESTS/ckpt_tamper.py" wrapped-key "$t"
# without the key, the stored bytes still verify after the swaps (they are intact), and damage does not
rm -rf "$t" && cp -r "$tmp/noise/step-1" "$t" && swap_files
"$SOV" ckpt verify "$t" | grep -q "the stored bytes verified" || fail "verify without the key: $("$SOV" ckpt verify "$t" 2>&1)"
printf '\x01' | dd of="$t/rank-1.bin" bs=1 seek=5000 conv=notrunc status=none
expect_error 1 "the stored bytes are damaged" "$SOV" ckpt verify "$t"

# --- no copy of the state's bytes: a marker of 16 of them is in a plain checkpoint (the search works) and in no
# file of an encrypted one, nor is its hex text (the metadata holds it)
launch -np 2 -- "$CHECK" save "$tmp/plain" --noise >"$tmp/plain.log" 2>&1 || fail "plain noise"
marker=$(grep -o "marker [0-9a-f]*" "$tmp/log" | cut -d' ' -f2)
/usr/bin/python3 - "$marker" "$tmp/plain/step-1" "$tmp/noise/step-1" <<'PY' || fail "marker search"
import os, sys
marker, plain, sealed = bytes.fromhex(sys.argv[1]), sys.argv[2], sys.argv[3]
def found(d, needle):
    return [f for f in sorted(os.listdir(d)) if needle in open(os.path.join(d, f), "rb").read()]
assert len(marker) == 16 and found(plain, marker), "the marker is not in the plain checkpoint: the search is broken"
hits = found(sealed, marker) + found(sealed, sys.argv[1].encode())
assert not hits, f"the marker is in {hits}"
print(f"ok: marker {sys.argv[1]} found in {found(plain, marker)} of the plain checkpoint, in no file of the encrypted one")
PY

# --- every single-byte corruption of an encrypted checkpoint is detected with the key
launch -np 2 -- "$CHECK" save "$tmp/small" --small --key "$key" >/dev/null 2>&1 || fail "small state"
"$CORRUPT" "$tmp/small/step-1" "$key" || fail "a corruption of an encrypted checkpoint went undetected"
finish

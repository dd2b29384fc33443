#!/usr/bin/env bash
# Signed checkpoints (docs/security.md) in the OpenSSF model signing format, checked by the independent tool:
#  - a 2-rank training job with --ckpt-sign-key (plain, and encrypted too) writes model.sig into each checkpoint;
#    PyPI's `model_signing verify key` accepts it with no network, and rejects it after any one byte of any file
#    changes;
#  - `sovtrain ckpt verify --public-key` accepts a signature that `model_signing sign key` made over the same
#    directory, and refuses a wrong key, an unsigned checkpoint, an added or a changed file, naming it;
#  - --require-signed on resume refuses an unsigned or tampered checkpoint, naming the file, and resumes from a
#    signed one bit-exactly.
# The keys are made by openssl here.
# usage: ckpt_sign.sh SOVTRAIN
. "$(dirname "$0")/lib.sh"
need_data
MS=${SOVTRAIN_TOOLS:-$HOME/.local/share/sovtrain/tools}/bin/model_signing
if [ ! -x "$MS" ]; then
    echo "SKIP: $MS missing (scripts/setup.sh installs PyPI's model-signing, the independent verifier)"
    exit 77
fi
offline=()
unshare -n true 2>/dev/null && offline=(unshare -n) # the independent checks run with no network at all
sk=$tmp/sign.pem pk=$tmp/sign.pub other=$tmp/other.pub
openssl ecparam -name prime256v1 -genkey -noout -out "$sk" 2>/dev/null && chmod 600 "$sk" &&
    openssl ec -in "$sk" -pubout -out "$pk" 2>/dev/null || fail "openssl: the signing key"
openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null | openssl ec -pubout -out "$other" 2>/dev/null
key=$tmp/key
openssl rand -out "$key" 32 && chmod 600 "$key"

ms_verify() { "${offline[@]}" "$MS" verify key "$1" --signature "$1/model.sig" --public_key "$2" >"$tmp/ms.log" 2>&1; }

C=(--hidden 32,16 --batch 64 --steps 40 --warmup-steps 5 --log-every 1 --threads 1 --eval-every 0)
launch -np 2 -- sovtrain train "${C[@]}" --run-dir "$tmp/a" --ckpt-every 20 --keep 5 --ckpt-sign-key "$sk" \
    --dump-params "$tmp/pa" >"$tmp/log" 2>&1 || fail "the signed run: $(cat "$tmp/log")"
launch -np 2 -- sovtrain train "${C[@]}" --run-dir "$tmp/e" --ckpt-every 20 --ckpt-sign-key "$sk" \
    --ckpt-key-file "$key" >"$tmp/log" 2>&1 || fail "the signed, encrypted run: $(cat "$tmp/log")"
for ck in "$tmp/a/checkpoints/step-20" "$tmp/a/checkpoints/step-40" "$tmp/e/checkpoints/step-40"; do
    if ms_verify "$ck" "$pk"; then
        echo "ok: model_signing verify key accepts $(basename "$(dirname "$(dirname "$ck")")")/$(basename "$ck"): $(tail -n 1 "$tmp/ms.log")"
    else
        fail "model_signing rejects $ck: $(cat "$tmp/ms.log")"
    fi
done

expect_error 1 "is signed: rotating its key would break the signature" "$SOV" ckpt rekey "$tmp/e/checkpoints/step-40" \
    --ckpt-key-file "$key" --new-key-file "$key"

# any one byte of any file changed: the independent tool rejects it, and sovtrain names the file
ck=$tmp/a/checkpoints/step-40
for f in manifest.json rank-0.bin rank-1.bin model.sig; do
    size=$(stat -c %s "$ck/$f")
    at=$((size / 2))
    cp "$ck/$f" "$tmp/orig"
    printf '\x5a' | dd of="$ck/$f" bs=1 seek=$at conv=notrunc status=none
    cmp -s "$ck/$f" "$tmp/orig" && printf '\x5b' | dd of="$ck/$f" bs=1 seek=$at conv=notrunc status=none
    if ms_verify "$ck" "$pk"; then
        fail "model_signing accepted $f with byte $at changed"
    else
        echo "ok: model_signing rejects the checkpoint with byte $at of $f changed"
    fi
    [ "$f" = model.sig ] || expect_error 1 "$ck/$f: its SHA-256 does not match the signature" \
        "$SOV" ckpt verify "$ck" --public-key "$pk"
    cp "$tmp/orig" "$ck/$f"
done
ms_verify "$ck" "$pk" || fail "the restored checkpoint no longer verifies: $(cat "$tmp/ms.log")"

# a signature made by model_signing itself, over the same directory: sovtrain accepts it
cp -r "$ck" "$tmp/theirs" && rm "$tmp/theirs/model.sig"
"${offline[@]}" "$MS" sign key --private_key "$sk" --signature "$tmp/theirs/model.sig" "$tmp/theirs" >"$tmp/ms.log" 2>&1 ||
    fail "model_signing sign key: $(cat "$tmp/ms.log")"
"$SOV" ckpt verify "$tmp/theirs" --public-key "$pk" | grep -q "signed by $pk: the signature and every file" &&
    echo "ok: sovtrain ckpt verify --public-key accepts model_signing's own signature" ||
    fail "sovtrain ckpt verify of model_signing's signature: $("$SOV" ckpt verify "$tmp/theirs" --public-key "$pk" 2>&1)"
expect_error 1 "signed by another key" "$SOV" ckpt verify "$ck" --public-key "$other"
echo extra >"$tmp/theirs/notes.txt"
expect_error 1 "notes.txt: not listed in the signature" "$SOV" ckpt verify "$tmp/theirs" --public-key "$pk"

# --require-signed: an unsigned checkpoint is refused, a tampered one named, a signed one resumes bit-exactly
launch -np 2 -- sovtrain train "${C[@]}" --run-dir "$tmp/u" --ckpt-every 20 >"$tmp/log" 2>&1 || fail "unsigned run"
expect_error 1 "is not signed" "$SOV" train "${C[@]}" --run-dir "$tmp/r1" --resume "$tmp/u/checkpoints/step-20" \
    --require-signed "$pk"
expect_error 1 "is not signed" "$SOV" ckpt export "$tmp/u/checkpoints" --public-key "$pk" --format safetensors \
    -o "$tmp/x.safetensors"
cp -r "$tmp/a/checkpoints/step-20" "$tmp/tampered"
printf '\x01' | dd of="$tmp/tampered/rank-1.bin" bs=1 seek=100 conv=notrunc status=none
expect_error 1 "tampered/rank-1.bin: its SHA-256 does not match the signature" "$SOV" train "${C[@]}" \
    --run-dir "$tmp/r2" --resume "$tmp/tampered" --require-signed "$pk"
launch -np 2 -- sovtrain train "${C[@]}" --run-dir "$tmp/b" --resume "$tmp/a/checkpoints/step-20" \
    --require-signed "$pk" --dump-params "$tmp/pb" >"$tmp/log" 2>&1 || fail "the signed resume: $(cat "$tmp/log")"
cmp -s "$tmp/pa" "$tmp/pb" && echo "ok: --require-signed resumes a signed checkpoint bit-exactly" ||
    fail "the resumed weights differ"
finish

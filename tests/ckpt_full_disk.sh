#!/usr/bin/env bash
# A full disk (a small tmpfs) during a save: a clear error, training goes on or stops per --on-ckpt-error, and the
# previous checkpoint stays intact and latest. Needs to mount a tmpfs (root); skips (77) where it cannot.
. "$(dirname "$0")/lib.sh"
need_data

mkdir -p "$tmp/full"
if ! mount -t tmpfs -o size=400k tmpfs "$tmp/full" 2>/dev/null; then
    echo "SKIP: cannot mount a tmpfs under $tmp (not root?): the full-disk checks need one"
    exit 77
fi
F=(--hidden 32,16 --batch 64 --warmup-steps 5 --log-every 20 --threads 1 --eval-every 0 --ckpt-dir "$tmp/full"
   --ckpt-every 20 --keep 5)

launch -np 2 --max-restarts 0 -- sovtrain train "${F[@]}" --steps 60 --on-ckpt-error continue --run-dir "$tmp/fc" \
    >"$tmp/fc.log" 2>&1 && fail "full disk, continue: the final save cannot fit, yet the job succeeded"
grep -q "training goes on" "$tmp/fc.log" && grep -q "No space left on device" "$tmp/fc.log" &&
    grep -q "step     60/60" "$tmp/fc.log" || fail "full disk, continue: $(cat "$tmp/fc.log")"
[ "$(cat "$tmp/full/latest")" = "step-20" ] && "$SOV" ckpt verify "$tmp/full/step-20" >/dev/null ||
    fail "full disk, continue: step-20 is no longer the intact latest"
echo "ok: full disk, --on-ckpt-error continue: trained to step 60, step-20 intact and latest"

rm -rf "${tmp:?}/full/"*
launch -np 2 --max-restarts 0 -- sovtrain train "${F[@]}" --steps 200 --run-dir "$tmp/fs" >"$tmp/fs.log" 2>&1 &&
    fail "full disk, stop: the job went on"
grep -q "No space left on device" "$tmp/fs.log" || fail "full disk, stop: no clear error: $(cat "$tmp/fs.log")"
grep -q "step    100/200" "$tmp/fs.log" && fail "full disk, stop: training went on past the failed save"
[ "$(cat "$tmp/full/latest")" = "step-20" ] && "$SOV" ckpt verify "$tmp/full/step-20" >/dev/null ||
    fail "full disk, stop: step-20 is no longer the intact latest"
echo "ok: full disk, stop (the default): stopped at the failed save, step-20 intact and latest"
umount "$tmp/full"
finish

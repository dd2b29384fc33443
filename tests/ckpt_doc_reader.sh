#!/usr/bin/env bash
# The checkpoint format document is enough to read a checkpoint: tests/ckpt_doc_reader.py, written from
# docs/checkpoint-format.md alone, decodes a real 2-rank checkpoint (codings 0 to 3) and its tensors, agrees
# with `sovtrain ckpt export`, reads the format-3 checkpoint kept in tests/fixtures as its export had it, and
# rejects a flipped padding byte, as `sovtrain ckpt verify` does; padded files declared as version 2 break that
# version's layout, and version 6 is called unsupported.
# usage: ckpt_doc_reader.sh SOVTRAIN
. "$(dirname "$0")/lib.sh"
need_data
PY=/usr/bin/python3
if ! "$PY" -c "import zstandard, xxhash, numpy" 2>/dev/null; then
    echo "SKIP: $PY lacks zstandard, xxhash or numpy (Debian: python3-zstandard python3-xxhash python3-numpy)"
    exit 77
fi
READER=$TESTS/ckpt_doc_reader.py

# (a) a short 2-rank AdamW run that saves at its end
launch -np 2 -- "$SOV" train --hidden 1024 --batch 64 --steps 4 --threads 1 --eval-every 0 --run-dir "$tmp/run" \
    --ckpt-every 4 >"$tmp/train.log" 2>&1 || fail "training: $(cat "$tmp/train.log")"
ck=$tmp/run/checkpoints/$(cat "$tmp/run/checkpoints/latest" 2>/dev/null)
[ -f "$ck/manifest.json" ] || { fail "no checkpoint: $(ls -R "$tmp/run")"; finish; }

# (b) the reader decodes every buffer and tensor; the checkpoint uses every plane coding; the model's tensors, end
# to end, are the parameters whose hash the trainer printed
mkdir -p "$tmp/dump"
"$PY" "$READER" "$ck" --dump "$tmp/dump" >"$tmp/reader.json" 2>"$tmp/reader.err" \
    || fail "the reader refused a good checkpoint: $(cat "$tmp/reader.err")"
"$PY" - "$tmp/reader.json" "$tmp/train.log" "$tmp/dump" <<'PY' || fail "reader output: $(cat "$tmp/reader.json")"
import json, re, sys, xxhash
r = json.load(open(sys.argv[1]))
assert r["ok"] is True and r["format_version"] == 4, r
assert all(r["codings"][k] >= 1 for k in ("0", "1", "2", "3")), f"not every coding used: {r['codings']}"
assert set(r["buffers"]) == {"replicated.f32"}, r["buffers"]
assert r["order"][-2:] == ["adamw.m", "adamw.v"] and len(r["order"]) == 6, r["order"]
m = re.search(r"parameters identical on all 2 ranks \(xxh3 ([0-9a-f]{16})\)", open(sys.argv[2]).read())
assert m, "the trainer did not print its parameters' hash"
params = b"".join(open(f"{sys.argv[3]}/{n}.bin", "rb").read() for n in r["order"][:-2])
assert m.group(1) == "%016x" % xxhash.xxh3_64_intdigest(params), "params differ from the trainer's"
print(f"ok: reader: {r['chunks']} chunks, plane codings {r['codings']}, {len(r['order'])} tensors, "
      f"params xxh3 {m.group(1)}")
PY

# (c) sovtrain's safetensors export holds every tensor, each equal to the reader's; and the format-3 checkpoint
# kept in tests/fixtures reads, as section 5 says, as the tensors its own export (of the sovtrain of then) holds
"$SOV" ckpt export "$ck" --format safetensors -o "$tmp/p.safetensors" >"$tmp/export.log" 2>&1 \
    || fail "export: $(cat "$tmp/export.log")"
mkdir -p "$tmp/dump3"
"$PY" "$READER" "$TESTS/fixtures/ckpt-v3/step-6" --dump "$tmp/dump3" >/dev/null 2>"$tmp/reader3.err" \
    || fail "the reader refused the format-3 fixture: $(cat "$tmp/reader3.err")"
"$PY" - "$tmp/p.safetensors" "$tmp/dump" "$TESTS/fixtures/ckpt-v3/step-6.safetensors" "$tmp/dump3" <<'PY' ||
import json, os, struct, sys
def load(path):
    st = open(path, "rb").read()
    (L,) = struct.unpack_from("<Q", st)
    hdr = json.loads(st[8:8 + L])
    return {k: st[8 + L + v["data_offsets"][0]:8 + L + v["data_offsets"][1]] for k, v in hdr.items()
            if k != "__metadata__"}
for export, dump in ((sys.argv[1], sys.argv[2]), (sys.argv[3], sys.argv[4])):
    tensors = load(export)
    for name, data in tensors.items():
        assert data == open(os.path.join(dump, name + ".bin"), "rb").read(), f"{export}: {name} differs"
    print(f"ok: {os.path.basename(export)}: its {len(tensors)} tensors are the reader's")
PY
    fail "export and reader disagree"

# (d) one flipped padding byte: the reader names the padding, verify fails too
mkdir -p "$tmp/bad" && cp -r "$ck" "$tmp/bad/" && bad=$tmp/bad/$(basename "$ck")
where=$("$PY" - "$bad" <<'PY'
import json, sys
m = json.load(open(sys.argv[1] + "/manifest.json"))
for f in m["files"]:
    cs = sorted(f["chunks"], key=lambda c: c["file_offset"])
    for a, b in zip(cs, cs[1:]):
        end = a["file_offset"] + a["bytes"]
        if b["file_offset"] > end:
            pos = (end + b["file_offset"]) // 2
            p = f"{sys.argv[1]}/{f['file']}"
            d = bytearray(open(p, "rb").read())
            assert d[pos] == 0
            d[pos] = 0x20
            open(p, "wb").write(d)
            print(f"{f['file']} byte {pos}")
            sys.exit(0)
sys.exit(1)
PY
) || fail "no padding between two chunks in $(cat "$ck/manifest.json")"
out=$("$PY" "$READER" "$bad" 2>&1)
rc=$?
if [ "$rc" -ne 1 ] || ! grep -qi "padding" <<<"$out" || grep -q Traceback <<<"$out"; then
    fail "reader on a flipped padding byte ($where): exit $rc: $out"
else
    echo "ok: flipped padding ($where): reader exit 1: $out"
fi
vout=$("$SOV" ckpt verify "$bad" 2>&1) && fail "verify passed a flipped padding byte: $vout"
echo "ok: verify rejects it too: $vout"

# (e) the per-version layout rule: the same (padded) files declared as format_version 2 break its layout
declare_version() { # declare_version VERSION CHECKPOINT: rewrites format_version and reseals the manifest
    "$PY" - "$2/manifest.json" "$1" <<'PY'
import re, sys, xxhash
p, v = sys.argv[1], sys.argv[2].encode()
t = open(p, "rb").read()
t = re.sub(rb'"format_version": [0-9]+', b'"format_version": ' + v, t)
t = re.sub(rb'("manifest_xxh3"[ :]*")[0-9a-f]{16}"', rb'\g<1>0000000000000000"', t)
h = b"%016x" % xxhash.xxh3_64_intdigest(t)
open(p, "wb").write(re.sub(rb'("manifest_xxh3"[ :]*")0{16}"', rb"\g<1>" + h + b'"', t))
PY
}
mkdir -p "$tmp/v2" && cp -r "$ck" "$tmp/v2/" && v2=$tmp/v2/$(basename "$ck")
declare_version 2 "$v2"
out=$("$PY" "$READER" "$v2" 2>&1)
rc=$?
[ "$rc" -eq 1 ] && grep -q "layout" <<<"$out" || fail "reader on version-2 with padding: exit $rc: $out"
"$SOV" ckpt verify "$v2" >/dev/null 2>&1 && fail "verify passed version-2 files with padding"
echo "ok: declared version 2: reader exit $rc: $out"

# (f) a version this sovtrain does not read is called unsupported, not damaged
declare_version 6 "$v2"
vout=$("$SOV" ckpt verify "$v2" 2>&1) && fail "verify passed format_version 6"
grep -q "UNSUPPORTED: .*reads versions 1 to 5" <<<"$vout" || fail "verify on format_version 6: $vout"
echo "ok: declared version 6: $vout"
finish

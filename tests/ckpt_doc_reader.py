#!/usr/bin/python3
"""Independent reader of sovtrain checkpoints, written from docs/checkpoint-format.md alone (no C source).

usage: ckpt_doc_reader.py CHECKPOINT_DIR [--dump DIR]

CHECKPOINT_DIR is a step-<N> directory. The reader checks the manifest (seal, format, version, fields, the layout
of every data file, the coverage rule, the tensors and their shards), then decodes every chunk of every file with
all of the checks of section 4.1, every buffer in full, and every tensor from its shards (section 2.1; versions 1-3
as section 5 says). On success it prints one JSON line and exits 0: per buffer and per tensor its dtype, size and
the XXH3-64 of its bytes. On a failed check it prints one line "FILE: [chunk at byte OFF: ]CHECK" to stderr and
exits 1. "codings" in the JSON line counts planes per coding. --dump writes each tensor's bytes to DIR/NAME.bin
(NAME percent-encoded where it holds a "/").
Needs the Debian modules zstandard, xxhash and numpy (/usr/bin/python3).
"""
import argparse
import json
import os
import re
import struct
import sys
from urllib.parse import quote

import numpy as np
import xxhash
import zstandard

MAGIC = 0x4B484353
HDR = struct.Struct("<IBBBBQQQQ8B8I24xQ")  # 112 bytes
SIZES = {"f32": 4, "bf16": 2, "f16": 2, "f64": 8, "i64": 8, "i32": 4, "i16": 2, "i8": 1, "u8": 1, "bool": 1}
OLD_DTYPES = ("f32", "bf16")  # versions 1-3
UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


class Bad(Exception):
    def __init__(self, file, msg, off=None):
        super().__init__(f"{file}: " + (f"chunk at byte {off}: " if off is not None else "") + msg)


def need(cond, msg):
    if not cond:
        raise ValueError(msg)


def xxh3(b):
    return xxhash.xxh3_64_intdigest(bytes(b))


def is_int(v, lo=None, hi=None):
    return type(v) is int and (lo is None or v >= lo) and (hi is None or v <= hi)


def check_seal(raw):
    """Section 2.2, on the raw bytes."""
    i = raw.rfind(b'"manifest_xxh3"')
    need(i >= 0, 'seal: no "manifest_xxh3"')
    j = i + 15
    while raw[j:j + 1] in (b" ", b":"):
        j += 1
    m = re.compile(rb'"([0-9a-f]{16})"').match(raw, j)
    need(m, "seal: malformed manifest_xxh3 value")
    zeroed = raw[:m.start(1)] + b"0" * 16 + raw[m.end(1):]
    need("%016x" % xxh3(zeroed) == m.group(1).decode(), "seal: manifest_xxh3 does not match the manifest's bytes")


def load_manifest(ckpt):
    """Section 2: the seal, then every field a reader checks, the layout of each file and the coverage rule."""
    path = os.path.join(ckpt, "manifest.json")
    try:
        need(os.path.getsize(path) <= 64 << 20, "manifest over 64 MiB")
        raw = open(path, "rb").read()
    except OSError as e:
        raise ValueError(f"cannot read: {e.strerror}")
    check_seal(raw)
    m = json.loads(raw.decode("utf-8"))  # ValueError (UnicodeDecodeError, JSONDecodeError) when not JSON
    need(isinstance(m, dict), "not a JSON object")
    need(m.get("format") == "sovtrain-checkpoint", f"unsupported format {m.get('format')!r}")
    need(is_int(m.get("format_version")) and m["format_version"] in (1, 2, 3, 4),
         f"unsupported format_version {m.get('format_version')!r}")
    dm = re.fullmatch(r"step-(\d+)", os.path.basename(os.path.realpath(ckpt)))
    need(is_int(m.get("step"), 0) and not (dm and int(dm.group(1)) != m["step"]),
         f"step {m.get('step')!r} is not >= 0 or differs from the directory's step-<N>")
    cb = m.get("chunk_bytes")
    need(is_int(cb, 4, 256 << 20) and cb % 4 == 0, f"chunk_bytes {cb!r} is not a multiple of 4 in 4 .. 256 MiB")
    bufs = m.get("buffers")
    need(isinstance(bufs, list), "buffers is not an array")
    for b in bufs:
        need(isinstance(b, dict) and isinstance(b.get("name"), str) and b.get("dtype") in SIZES
             and (m["format_version"] >= 4 or b["dtype"] in OLD_DTYPES)
             and is_int(b.get("count"), 0, 1 << 40), f"bad buffer entry {b!r}")
    byname = {b["name"]: b for b in bufs}
    need(len(byname) == len(bufs), "two buffers with the same name")
    files = m.get("files")
    need(isinstance(files, list) and files, "files is not an array of >= 1 entries")
    A = 4096 if m["format_version"] >= 3 else 1
    for f in files:
        need(isinstance(f, dict) and isinstance(f.get("file"), str) and "/" not in f["file"] and f["file"] != ".."
             and is_int(f.get("bytes"), 0) and isinstance(f.get("chunks"), list), f"bad files entry {str(f)[:200]}")
        for c in f["chunks"]:
            need(isinstance(c, dict) and c.get("buffer") in byname and is_int(c.get("elem_offset"), 0)
                 and is_int(c.get("elems"), 1) and is_int(c.get("file_offset"), 0)
                 and is_int(c.get("bytes"), 112, 112 + cb)
                 and c["elems"] * SIZES[byname[c["buffer"]]["dtype"]] <= cb, f"{f['file']}: bad chunk entry {c!r}")
        end = 0  # layout: sorted chunks from 0, each at the first multiple of A at or after the previous end
        for c in sorted(f["chunks"], key=lambda c: c["file_offset"]):
            need(c["file_offset"] == -(-end // A) * A,
                 f"{f['file']}: layout: chunk at {c['file_offset']}, expected {-(-end // A) * A}")
            end = c["file_offset"] + c["bytes"]
        need(f["bytes"] == end, f"{f['file']}: layout: files[].bytes is {f['bytes']}, the last chunk ends at {end}")
    for b in bufs:  # coverage: per buffer, the chunks tile [0, count) exactly once
        at = 0
        for c in sorted((c for f in files for c in f["chunks"] if c["buffer"] == b["name"]),
                        key=lambda c: c["elem_offset"]):
            need(c["elem_offset"] == at, f"coverage: buffer {b['name']}: chunk at element {c['elem_offset']}, "
                                         f"expected {at}")
            at += c["elems"]
        need(at == b["count"], f"coverage: buffer {b['name']}: chunks cover [0, {at}) of {b['count']} elements")
    return m


def unzstd(s, n, what):
    out, rest = b"", bytes(s)
    while True:  # one frame or several concatenated ones, like ZSTD_decompress
        d = zstandard.ZstdDecompressor().decompressobj()
        try:
            out += d.decompress(rest)
        except zstandard.ZstdError as e:
            raise ValueError(f"{what}: zstd error: {e}")
        need(d.eof, f"{what}: truncated zstd frame")
        rest = d.unused_data
        if not rest or len(out) > n:
            break
    need(len(out) == n, f"{what}: zstd data gives {len(out)} bytes, expected {n}")
    return np.frombuffer(out, np.uint8)


def unpack_bits(s, n, k):
    """Coding 3: the constant bits once, the other bits of each byte packed (section 4)."""
    w = f"plane {k} (coding 3)"
    need(len(s) >= 4 and s[0] not in (0, 255) and s[1] & ~s[0] & 255 == 0 and s[2] == 0 and s[3] == 0,
         f"{w}: bad header")
    mask, value = s[0], s[1]
    free = [b for b in range(8) if not mask >> b & 1]
    nbits = n * len(free)
    need(len(s) == 4 + (nbits + 7) // 8, f"{w}: {len(s)} bytes, expected {4 + (nbits + 7) // 8}")
    bits = np.unpackbits(np.frombuffer(bytes(s[4:]), np.uint8), bitorder="little")
    need(not bits[nbits:].any(), f"{w}: the unused bits of the last byte are not 0")
    bits = bits[:nbits].reshape(n, len(free)).astype(np.uint8)
    out = np.full(n, value, np.uint8)
    for j, b in enumerate(free):
        out |= bits[:, j] << np.uint8(b)
    return out


def unpair(s, n, k):
    w = f"plane {k} (coding 2)"
    need(len(s) >= 12, f"{w}: plane_bytes < 12")
    base, esc_coding, z0, z1, E, F = struct.unpack_from("<BBBBII", s)
    need(esc_coding <= 1, f"{w}: escape_coding {esc_coding} > 1")
    need(z0 == z1 == 0, f"{w}: the two zero bytes are not zero")
    need(E <= n, f"{w}: escapes {E} > n {n}")
    need(F <= len(s) - 12, f"{w}: codes_bytes {F} > plane_bytes - 12")
    packed = unzstd(s[12:12 + F], (n + 1) // 2, f"{w} codes")
    tail = s[12 + F:]
    if esc_coding == 0:
        need(len(tail) == E, f"{w}: {len(tail)} escape bytes stored, expected {E}")
        esc = np.frombuffer(tail, np.uint8)
    else:
        esc = unzstd(tail, E, f"{w} escapes")
    codes = np.empty(2 * len(packed), np.uint8)
    codes[0::2], codes[1::2] = packed & 15, packed >> 4
    need(n % 2 == 0 or codes[n] == 0, f"{w}: the last high nibble is not 0 (odd n)")
    codes = codes[:n]
    mask = codes == 15
    need(int(mask.sum()) == E, f"{w}: the codes call for {int(mask.sum())} escapes, the header says {E}")
    out = ((codes.astype(np.uint16) + base) & 255).astype(np.uint8)
    out[mask] = esc
    return out


def decode_chunk(blob, c, size, codings):
    """The checks of section 4.1 in order; returns the raw bytes. Raises ValueError naming the check."""
    need(len(blob) >= 112, "chunk shorter than 112 bytes")
    magic, es, planes, tr, _r, raw_b, st_b, x_raw, x_st, *rest = HDR.unpack_from(blob)
    coding, pb, x_hdr = rest[0:8], rest[8:16], rest[16]
    need(magic == MAGIC, f"magic {magic:#x}")
    need(xxh3(blob[:104]) == x_hdr, "xxh3_header mismatch")
    need(es in (1, 2, 4, 8) and tr <= 2 and (es > 1 or tr == 0) and planes == (es if tr else 1),
         f"header shape: elem_size {es}, transform {tr}, planes {planes}")
    need(raw_b <= 1 << 30 and raw_b % es == 0, f"header shape: raw_bytes {raw_b}")
    need(sum(pb[:planes]) == st_b, "header shape: plane_bytes do not sum to stored_bytes")
    need(all(x <= 3 for x in coding) and (tr == 1 or 2 not in coding), f"header shape: codings {list(coding)}")
    need(_r == 0 and not any(blob[80:104]) and not any(coding[planes:]) and not any(pb[planes:]),
         "header shape: a reserved byte or an unused plane entry is not zero")
    n = raw_b // planes
    need(all(coding[k] or pb[k] == n for k in range(planes)), "header shape: a raw (coding 0) plane's size")
    need(st_b == len(blob) - 112, f"stored_bytes {st_b} != chunk bytes - 112 ({len(blob) - 112})")
    need(raw_b <= c["elems"] * size, f"raw_bytes {raw_b} > capacity elems*{size} = {c['elems'] * size}")
    payload = blob[112:]
    need(xxh3(payload) == x_st, "xxh3_stored mismatch")
    ps, pos = [], 0
    for k in range(planes):
        s = payload[pos:pos + pb[k]]
        pos += pb[k]
        codings[coding[k]] += 1
        if coding[k] == 0:
            ps.append(np.frombuffer(s, np.uint8))
        elif coding[k] == 1:
            ps.append(unzstd(s, n, f"plane {k} (coding 1)"))
        elif coding[k] == 2:
            ps.append(unpair(s, n, k))
        else:
            ps.append(unpack_bits(s, n, k))
    if tr == 0:
        raw = ps[0].tobytes()
    else:
        t = {2: np.uint16, 4: np.uint32, 8: np.uint64}[es]
        v = np.zeros(n, t)
        for k in range(planes):
            v |= ps[k].astype(t) << t(8 * k)
        if tr == 1:  # the sign back from bit 0
            v = (v >> t(1)) | (v << t(8 * es - 1))
        raw = v.astype("<" + v.dtype.str[1:]).tobytes()
    need(xxh3(raw) == x_raw, "xxh3_raw mismatch")
    need(raw_b == c["elems"] * size, f"raw_bytes {raw_b} != elems*{size} = {c['elems'] * size}")
    return raw


def volume(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def check_tensors(m):
    """Section 2.1 (version 4): every tensor's fields, and its shards inside their buffers, tiling the tensor."""
    byname = {b["name"]: b for b in m["buffers"]}
    ts = m.get("tensors")
    need(isinstance(ts, list), "tensors is not an array")
    names = set()
    for t in ts:
        need(isinstance(t, dict) and isinstance(t.get("name"), str) and 1 <= len(t["name"].encode()) <= 255
             and t["name"] not in names, f"tensor without a distinct name of 1 to 255 bytes: {str(t)[:200]}")
        names.add(t["name"])
        shape = t.get("shape")
        need(t.get("dtype") in SIZES and isinstance(shape, list) and len(shape) <= 8
             and all(is_int(d, 0, 1 << 40) for d in shape) and volume(shape) <= 1 << 40,
             f"tensor {t['name']}: bad dtype or shape")
        shards = t.get("shards")
        need(isinstance(shards, list) and 1 <= len(shards) <= 16384, f"tensor {t['name']}: no list of 1-16384 shards")
        covered, boxes = 0, []
        for s in shards:
            need(isinstance(s, dict) and s.get("buffer") in byname and is_int(s.get("at"), 0, 1 << 40)
                 and isinstance(s.get("offset"), list) and isinstance(s.get("shape"), list)
                 and len(s["offset"]) == len(shape) and len(s["shape"]) == len(shape)
                 and all(is_int(x, 0) for x in s["offset"] + s["shape"]), f"tensor {t['name']}: bad shard {s!r}")
            b = byname[s["buffer"]]
            need(b["dtype"] == t["dtype"] and s["at"] + volume(s["shape"]) <= b["count"],
                 f"tensor {t['name']}: a shard is not inside its buffer {b['name']} of its dtype")
            need(all(o + n <= d for o, n, d in zip(s["offset"], s["shape"], shape)),
                 f"tensor {t['name']}: a shard lies outside its shape")
            for o, n in boxes:  # boxes overlap when they overlap in every dimension
                need(not all(a < c + m and c < a + k for a, k, c, m in zip(s["offset"], s["shape"], o, n)),
                     f"tensor {t['name']}: two shards overlap")
            boxes.append((s["offset"], s["shape"]))
            covered += volume(s["shape"])
        need(covered == volume(shape), f"tensor {t['name']}: its shards do not cover it")


def tensors_of(m, out):
    """Each tensor's bytes, put together from its shards (version 4), or as section 5 shows an older checkpoint."""
    res = {}
    if m["format_version"] >= 4:
        for t in m["tensors"]:
            es = SIZES[t["dtype"]]
            a = np.zeros(t["shape"], UINT[es])
            for s in t["shards"]:
                src = np.frombuffer(bytes(out[s["buffer"]]), UINT[es])[s["at"]:s["at"] + volume(s["shape"])]
                a[tuple(slice(o, o + n) for o, n in zip(s["offset"], s["shape"]))] = src.reshape(s["shape"])
            res[t["name"]] = (t["dtype"], t["shape"], a.tobytes())
        return res
    bufs = m["buffers"]
    for v in m.get("tensors") or []:  # views of the first buffer
        need(bufs and isinstance(v, dict) and isinstance(v.get("name"), str) and v["name"] not in res
             and isinstance(v.get("shape"), list) and all(is_int(d, 0) for d in v["shape"])
             and is_int(v.get("offset"), 0) and v["offset"] + volume(v["shape"]) <= bufs[0]["count"],
             f"bad tensors entry {str(v)[:200]}")
        es = SIZES[bufs[0]["dtype"]]
        res[v["name"]] = (bufs[0]["dtype"], v["shape"],
                          bytes(out[bufs[0]["name"]][es * v["offset"]:es * (v["offset"] + volume(v["shape"]))]))
    for b in bufs[1 if m.get("tensors") else 0:]:
        res[b["name"]] = (b["dtype"], [b["count"]], bytes(out[b["name"]]))
    return res


def read_checkpoint(ckpt):
    try:
        m = load_manifest(ckpt)
        if m["format_version"] >= 4:
            check_tensors(m)
    except ValueError as e:
        raise Bad("manifest.json", str(e))
    size = {b["name"]: SIZES[b["dtype"]] for b in m["buffers"]}  # bytes per element, as the pseudocode says
    out = {b["name"]: bytearray(size[b["name"]] * b["count"]) for b in m["buffers"]}
    codings, nchunks = {0: 0, 1: 0, 2: 0, 3: 0}, 0
    for f in m["files"]:  # section 4.2 step 3: every file exists with its exact size, before any decoding
        try:
            fsize = os.stat(os.path.join(ckpt, f["file"])).st_size
        except OSError as e:
            raise Bad(f["file"], f"cannot stat: {e.strerror}")
        if fsize != f["bytes"]:
            raise Bad(f["file"], f"file size {fsize} != files[].bytes {f['bytes']}")
    for f in m["files"]:
        name = f["file"]
        with open(os.path.join(ckpt, name), "rb") as fh:
            chunks = sorted(f["chunks"], key=lambda c: c["file_offset"])
            for i, c in enumerate(chunks):
                fh.seek(c["file_offset"])
                blob = fh.read(c["bytes"])
                try:
                    raw = decode_chunk(blob, c, size[c["buffer"]], codings)
                except (ValueError, MemoryError) as e:
                    raise Bad(name, str(e) or type(e).__name__, c["file_offset"])
                nchunks += 1
                off = size[c["buffer"]] * c["elem_offset"]
                out[c["buffer"]][off:off + len(raw)] = raw
                end = c["file_offset"] + c["bytes"]
                if i + 1 < len(chunks):
                    pad = fh.read(chunks[i + 1]["file_offset"] - end)
                    if pad.count(0) != len(pad):
                        raise Bad(name, f"padding byte at {end + next(j for j, x in enumerate(pad) if x)} "
                                        "after the chunk is not zero", c["file_offset"])
    return m, out, codings, nchunks


def main():
    ap = argparse.ArgumentParser(description="Read a sovtrain checkpoint from docs/checkpoint-format.md alone.")
    ap.add_argument("ckpt", metavar="CHECKPOINT_DIR")
    ap.add_argument("--dump", metavar="DIR", help="write each tensor's bytes to DIR/NAME.bin")
    a = ap.parse_args()
    try:
        m, out, codings, nchunks = read_checkpoint(a.ckpt)
        try:
            tensors = tensors_of(m, out)
        except ValueError as e:
            raise Bad("manifest.json", str(e))
        if a.dump is not None:
            for name, (_, _, data) in tensors.items():
                open(os.path.join(a.dump, quote(name, safe="") + ".bin"), "wb").write(data)
    except Bad as e:
        print(e, file=sys.stderr)
        return 1
    except Exception as e:  # anything unforeseen: still one line, no traceback
        print(f"{a.ckpt}: unexpected error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    bufs = {b["name"]: {"dtype": b["dtype"], "count": b["count"], "xxh3_of_decoded": "%016x" % xxh3(out[b["name"]])}
            for b in m["buffers"]}
    tens = {k: {"dtype": d, "shape": s, "xxh3": "%016x" % xxh3(b)} for k, (d, s, b) in tensors.items()}
    print(json.dumps({"ok": True, "format_version": m["format_version"], "buffers": bufs, "tensors": tens,
                      "order": list(tensors), "chunks": nchunks, "codings": {str(k): v for k, v in codings.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

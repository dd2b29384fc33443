#!/usr/bin/python3
"""Tampering with a checkpoint the way an attacker with write access to its storage could: edit the manifest, then
recompute its seal (the seal is a checksum against accidents, which anyone can recompute), so that only the
protections that need a key are left to notice.

usage: ckpt_tamper.py ACTION STEP_DIR
  wrapped-key   change one character of the wrapped data key
  rename        rename the first tensor
  drop-chunk    remove the last chunk of rank-0.bin from the file and from the manifest
  swap-chunks   exchange the first two chunks of rank-0.bin (which must have the same size) in the file only
"""
import json
import re
import sys

import xxhash


def reseal(text):
    """The manifest's seal over `text` (docs/checkpoint-format.md section 2.2)."""
    text = re.sub(r'("manifest_xxh3": ")[0-9a-f]{16}"', r'\g<1>' + "0" * 16 + '"', text)
    digest = "%016x" % xxhash.xxh3_64_intdigest(text.encode())
    return re.sub(r'("manifest_xxh3": ")0{16}"', r"\g<1>" + digest + '"', text)


def main():
    action, step_dir = sys.argv[1], sys.argv[2]
    path = step_dir + "/manifest.json"
    m = json.load(open(path))
    rank0 = next(f for f in m["files"] if f["file"] == "rank-0.bin")
    if action == "wrapped-key":
        w = m["encryption"]["wrapped_key"]
        m["encryption"]["wrapped_key"] = ("B" if w[0] != "B" else "C") + w[1:]
    elif action == "rename":
        m["tensors"][0]["name"] += ".renamed"
    elif action == "drop-chunk":
        rank0["chunks"].pop()
        rank0["bytes"] = rank0["chunks"][-1]["file_offset"] + rank0["chunks"][-1]["bytes"]
        with open(step_dir + "/rank-0.bin", "r+b") as f:
            f.truncate(rank0["bytes"])
    elif action == "swap-chunks":
        a, b = rank0["chunks"][0], rank0["chunks"][1]
        assert a["bytes"] == b["bytes"], "the first two chunks differ in size"
        with open(step_dir + "/rank-0.bin", "r+b") as f:
            f.seek(a["file_offset"])
            first = f.read(a["bytes"])
            f.seek(b["file_offset"])
            second = f.read(b["bytes"])
            f.seek(a["file_offset"])
            f.write(second)
            f.seek(b["file_offset"])
            f.write(first)
        return
    else:
        sys.exit("unknown action " + action)
    open(path, "w").write(reseal(json.dumps(m, indent=1)))


if __name__ == "__main__":
    main()

"""sovtrain.checkpoint in one process: states of every kind of value round trip, loads in place, bad input and
damage give clear errors. Runs with numpy alone, and with torch where it is installed (its cases skip without)."""

import math
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np

if os.environ.get("SOVTRAIN_TEST_NO_TORCH"):  # numpy alone, though this Python has a torch
    sys.modules["torch"] = None

import sovtrain.checkpoint as ckpt
from sovtrain import SovError

try:
    import torch
except ImportError:
    torch = None


class Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="sovtrain-py-")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class PlainValues(Base):
    def test_nested_values_round_trip(self):
        state = {
            "w": np.arange(12, dtype=np.float32).reshape(3, 4),
            "empty": np.zeros((0, 3), np.int16),
            "scalar": np.float64(2.5),
            "complex": np.array([1 + 2j, -3j], np.complex64),
            "u32": np.array([1, 2**32 - 1], np.uint32),
            "plain": [1, -2.5, None, True, "text", b"\x00\xffbytes", (1, (2, "x")), {3: "int key", (4, 5): 6},
                      {"__sov__": "a user key that looks like a tag"}, float("nan"), float("-inf"), 2**70, 1e-300],
            "steps": {"epoch": 3, "position": 12345},
        }
        ckpt.save(state, self.dir, 7, blocking=True)
        got = ckpt.load(self.dir)
        self.assertEqual(set(got), set(state))
        for k in ("w", "empty", "complex", "u32"):
            self.assertEqual(got[k].dtype, state[k].dtype, k)
            self.assertTrue(np.array_equal(got[k], state[k]), k)
        self.assertIsInstance(got["scalar"], np.float64)
        self.assertEqual(got["scalar"], 2.5)
        plain, want = got["plain"], state["plain"]
        self.assertEqual(plain[:9], want[:9])
        self.assertIsInstance(plain[6], tuple)
        self.assertTrue(math.isnan(plain[9]))
        self.assertEqual(plain[10:], want[10:])
        self.assertEqual(got["steps"], state["steps"])

    def test_the_save_is_a_snapshot(self):
        """save returns after its copy: the state may change at once, the checkpoint keeps what was given."""
        a = np.random.default_rng(1).standard_normal(4 << 20).astype(np.float32)
        before = a.copy()
        handle = ckpt.save({"a": a}, self.dir, 1)
        a[:] = 0
        path = handle.wait()
        self.assertTrue(np.array_equal(ckpt.load(path)["a"], before))

    def test_load_into_reads_in_place(self):
        w = np.arange(6, dtype=np.float64)
        ckpt.save({"w": w, "n": 1, "sub": {"b": np.ones(3, np.int8)}}, self.dir, 1, blocking=True)
        into = {"w": np.zeros(6), "n": 0, "sub": {"b": np.zeros(3, np.int8)}}
        target = into["w"]
        out = ckpt.load(self.dir, into=into)
        self.assertIs(out, into)
        self.assertIs(into["w"], target)
        self.assertTrue(np.array_equal(target, w))
        self.assertEqual(into["n"], 1)
        self.assertTrue(np.array_equal(into["sub"]["b"], np.ones(3, np.int8)))

    def test_load_into_a_wrong_shape_names_it(self):
        ckpt.save({"w": np.zeros((2, 3), np.float32)}, self.dir, 1, blocking=True)
        with self.assertRaisesRegex(ValueError, r"'w' has shape \(3, 2\) in `into`, \(2, 3\) in the checkpoint"):
            ckpt.load(self.dir, into={"w": np.zeros((3, 2), np.float32)})

    def test_shards_read_their_box(self):
        whole = np.arange(40, dtype=np.int32).reshape(8, 5)
        ckpt.save({"t": ckpt.Shard(whole, (0, 0), (8, 5))}, self.dir, 1, blocking=True)
        box = ckpt.Shard(np.zeros((3, 5), np.int32), (4, 0), (8, 5))
        ckpt.load(self.dir, into={"t": box})
        self.assertTrue(np.array_equal(box.local, whole[4:7]))
        self.assertTrue(np.array_equal(ckpt.load(self.dir)["t"], whole))

    def test_keep_prunes_and_latest_names_the_newest(self):
        for step in (1, 2, 3):
            ckpt.save({"s": np.full(4, step)}, self.dir, step, keep=2)
        ckpt.save({"s": np.full(4, 4)}, self.dir, 4, keep=2).wait()
        self.assertEqual(sorted(os.listdir(self.dir)), ["latest", "step-3", "step-4"])
        self.assertEqual(ckpt.latest(self.dir), os.path.join(self.dir, "step-4"))
        self.assertEqual(ckpt.load(self.dir)["s"][0], 4)
        self.assertEqual(ckpt.load(os.path.join(self.dir, "latest"))["s"][0], 4)  # the pointer, as a path
        ckpt.verify(os.path.join(self.dir, "latest"))

    def test_checkpoint_reads_boxes_and_exports(self):
        a = np.arange(24, dtype=np.float32).reshape(4, 6)
        path = ckpt.save({"a": a}, self.dir, 2, blocking=True).wait()
        with ckpt.Checkpoint(path) as c:
            self.assertEqual((c.step, c.world_size, c.shape("a"), c.dtype("a")), (2, 1, (4, 6), "float32"))
            self.assertTrue(np.array_equal(c.read("a", (1, 2), (2, 3), lib="numpy"), a[1:3, 2:5]))
            out = os.path.join(self.dir, "a.safetensors")
            c.export_safetensors(out)
        with open(out, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            self.assertIn(b'"a"', f.read(n))


class BadInput(Base):
    def test_values_without_a_json_form_are_refused_by_path(self):
        with self.assertRaisesRegex(TypeError, r"state\['opt'\]\[0\] is a builtins.object"):
            ckpt.save({"opt": [object()]}, self.dir, 1)
        with self.assertRaisesRegex(ValueError, "NUL"):
            ckpt.save({"s": "a\0b"}, self.dir, 1)
        with self.assertRaisesRegex(ValueError, "step must be an int"):
            ckpt.save({}, self.dir, -1)
        self.assertIsNone(ckpt.latest(self.dir))

    def test_no_checkpoint(self):
        with self.assertRaisesRegex(SovError, "no checkpoint in"):
            ckpt.load(self.dir)
        with self.assertRaisesRegex(SovError, "manifest.json"):
            ckpt.Checkpoint(os.path.join(self.dir, "step-9"))

    def test_encrypted_round_trip_and_key_errors(self):
        key, other = os.path.join(self.dir, "key"), os.path.join(self.dir, "other")
        for path in (key, other):
            with open(path, "wb") as f:
                f.write(os.urandom(32))
            os.chmod(path, 0o600)
        state = {"w": np.arange(4096, dtype=np.float32), "note": "kept in the encrypted metadata"}
        ckpt.save(state, self.dir, 3, key_file=key, blocking=True)
        back = ckpt.load(self.dir, key_file=key)
        self.assertEqual(back["note"], state["note"])
        np.testing.assert_array_equal(np.asarray(back["w"]), state["w"])
        with ckpt.Checkpoint(os.path.join(self.dir, "step-3")) as c:
            self.assertTrue(c.key_id.startswith("local:"))
            self.assertIsNone(c.meta)  # sealed: nothing of it is readable without the key
            c.verify()  # the stored bytes
        with self.assertRaisesRegex(SovError, "encrypted with key id local:"):
            ckpt.Checkpoint(os.path.join(self.dir, "step-3")).read("w")
        with self.assertRaisesRegex(SovError, "wrong key"):
            ckpt.load(os.path.join(self.dir, "step-3"), key_file=other)
        os.chmod(other, 0o644)
        with self.assertRaisesRegex(SovError, "accessible to group or others"):
            ckpt.load(os.path.join(self.dir, "step-3"), key_file=other)

    def test_signed_checkpoint_and_require_signed(self):
        sk, pk = os.path.join(self.dir, "sign.pem"), os.path.join(self.dir, "sign.pub")
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", sk], check=True)
        os.chmod(sk, 0o600)
        subprocess.run(["openssl", "ec", "-in", sk, "-pubout", "-out", pk], check=True, capture_output=True)
        ckpt.save({"w": np.ones(1000, dtype=np.float32)}, self.dir, 4, sign_key=sk, blocking=True)
        path = os.path.join(self.dir, "step-4")
        self.assertTrue(os.path.isfile(os.path.join(path, "model.sig")))
        ckpt.verify_signature(path, pk)
        self.assertEqual(ckpt.load(self.dir, require_signed=pk)["w"].shape[0], 1000)
        with open(os.path.join(path, "rank-0.bin"), "r+b") as f:
            f.seek(10)
            byte = f.read(1)
            f.seek(10)
            f.write(bytes([byte[0] ^ 1]))
        with self.assertRaisesRegex(SovError, "rank-0.bin: its SHA-256 does not match the signature"):
            ckpt.load(path, require_signed=pk)

    def test_damage_is_detected_and_load_falls_back(self):
        rng = np.random.default_rng(2)
        old = rng.standard_normal(1 << 18).astype(np.float32)
        ckpt.save({"a": old}, self.dir, 1, blocking=True)
        new_path = ckpt.save({"a": old + 1}, self.dir, 2, blocking=True).wait()
        data = os.path.join(new_path, "rank-0.bin")
        with open(data, "r+b") as f:
            f.seek(os.path.getsize(data) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x10]))
        with self.assertRaisesRegex(SovError, "rank-0.bin"):
            ckpt.verify(new_path)
        self.assertEqual(ckpt.latest(self.dir), os.path.join(self.dir, "step-1"))
        self.assertTrue(np.array_equal(ckpt.load(self.dir)["a"], old))


@unittest.skipIf(torch is None, "torch is not installed")
class Torch(Base):
    def test_every_dtype_round_trips_bitwise(self):
        g = torch.Generator().manual_seed(3)
        state = {}
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.complex64):
            state[str(dtype)] = torch.randn(5, 7, generator=g).to(dtype)
        for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
            state[str(dtype)] = torch.randint(-100 if dtype.is_signed else 0, 100, (9,), generator=g, dtype=dtype)
        state["bool"] = torch.rand(6, generator=g) > 0.5
        if hasattr(torch, "float8_e4m3fn"):  # torch >= 2.1
            state["float8"] = torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn)
        state["strided"] = torch.arange(20.0).reshape(4, 5).t()
        state["param"] = torch.nn.Parameter(torch.ones(3))
        state["scalar"] = torch.tensor(1.5, dtype=torch.bfloat16)
        ckpt.save(state, self.dir, 1, blocking=True)
        got = ckpt.load(self.dir)
        for k, v in state.items():
            self.assertIsInstance(got[k], torch.Tensor, k)
            self.assertEqual((got[k].dtype, got[k].shape), (v.dtype, v.shape), k)
            self.assertTrue(torch.equal(got[k].reshape(-1).view(torch.uint8),
                                        v.detach().reshape(-1).view(torch.uint8)), k)

    def test_model_and_optimizer_load_in_place(self):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
        ckpt.save({"model": model.state_dict(), "opt": opt.state_dict()}, self.dir, 1, blocking=True)
        model2 = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
        state = ckpt.load(self.dir)
        model2.load_state_dict(state["model"])
        opt2.load_state_dict(state["opt"])
        for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
            self.assertTrue(torch.equal(a, b))
        self.assertEqual(opt.state_dict()["param_groups"], opt2.state_dict()["param_groups"])
        for k, v in opt.state_dict()["state"].items():
            for name, t in v.items():
                self.assertTrue(torch.equal(t, opt2.state_dict()["state"][k][name]), (k, name))
        into = {"model": model2.state_dict()}
        weight = into["model"]["0.weight"]
        with torch.no_grad():
            weight.zero_()
        ckpt.load(self.dir, into=into)
        self.assertTrue(torch.equal(model2[0].weight, model[0].weight))


if __name__ == "__main__":
    unittest.main()

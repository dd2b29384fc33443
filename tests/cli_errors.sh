#!/usr/bin/env bash
# Bad input to the sovtrain command gets a clear message and a non-zero exit, never a crash or a hang.
. "$(dirname "$0")/lib.sh"

# Flags
expect_error 2 'unknown command "frobnicate"' "$SOV" frobnicate
expect_error 2 'unknown option "--bogus"' "$SOV" train --bogus
expect_error 2 '--batch "12x": expected an integer' "$SOV" train --batch 12x
expect_error 2 '--batch "0": expected an integer in 1..' "$SOV" train --batch 0
expect_error 2 '--lr "-1": expected a number' "$SOV" train --lr -1
expect_error 2 '--device "gpu": choose cpu, cuda or auto' "$SOV" train --device gpu
expect_error 2 'choose cpu, cuda or auto' env SOVTRAIN_DEVICE=tpu "$SOV" train
if "$SOV" version | grep -q 'built without CUDA'; then
    expect_error 1 'needs a CUDA build of sovtrain' "$SOV" train --model gpt --device cuda
else
    expect_error 2 'the gpt model has no CUDA implementation' "$SOV" train --model gpt --device cuda
fi
expect_error 2 '--precision "fp8": choose f32 or bf16' "$SOV" train --precision fp8
expect_error 2 '--precision bf16 runs on a GPU only' "$SOV" train --device cpu --precision bf16
# --device cuda where no GPU is usable (no driver, or a build without CUDA): a failure that says so, not a crash
if ! "$SOV" version 2>/dev/null | grep -q '^GPUs: [1-9]'; then
    expect_error 1 'use --device cpu' "$SOV" train --device cuda --steps 1
fi
expect_error 2 '--lr "nan": expected a number' "$SOV" train --lr nan
expect_error 2 '--optimizer "lamb": choose adamw or sgd' "$SOV" train --optimizer lamb
expect_error 2 'unknown communicator backend "carrier-pigeon"' "$SOV" train --comm carrier-pigeon
expect_error 2 'option "--epochs" needs a value' "$SOV" train --epochs
expect_error 2 'unknown model "resnet" (built-in: mlp, gpt)' "$SOV" train --model resnet
# Each model's settings are flags of its own: another model's is refused, naming the model it belongs to.
expect_error 2 '--layers is a setting of the gpt model, not of mlp (--model mlp)' "$SOV" train --layers 2
expect_error 2 '--hidden is a setting of the mlp model, not of gpt (--model gpt)' "$SOV" train --model gpt --hidden 8
expect_error 0 '--context N           gpt: tokens per sequence (default 128)' "$SOV" train --help
expect_error 0 '--hidden W1,W2,...    mlp: hidden layer widths (default 1024,1024)' "$SOV" train --help
for sub in ls verify inspect export; do # a subcommand's --help is the help, not a path or a usage error
    expect_error 0 'sovtrain ckpt export PATH [KEY] [SIGNED] --format safetensors -o FILE' "$SOV" ckpt "$sub" --help
done

# Data: build small IDX files, then break them one way at a time.
mkdir -p "$tmp/data"
python3 - "$tmp/data" <<'PY'
import gzip, struct, sys
d = sys.argv[1]
for split, n in (("train", 64), ("t10k", 16)):
    with gzip.open(f"{d}/{split}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + bytes((i * 7) % 256 for i in range(n * 784)))
    with gzip.open(f"{d}/{split}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + bytes(i % 10 for i in range(n)))
PY
run_train() { "$SOV" train --data "$1" --steps 2 --batch 8 --hidden 8 --run-dir "$tmp/run" --threads 1; }
expect_error 0 'done: 2 steps' run_train "$tmp/data"

expect_error 1 'data directory /nonexistent/fashion' run_train /nonexistent/fashion

cp -r "$tmp/data" "$tmp/trunc"
python3 -c "
import gzip, sys; p = sys.argv[1]; b = gzip.open(p).read(); gzip.open(p, 'wb').write(b[:len(b) // 2])" \
    "$tmp/trunc/train-images-idx3-ubyte.gz"
expect_error 1 'train-images-idx3-ubyte.gz: truncated IDX file' run_train "$tmp/trunc"

cp -r "$tmp/data" "$tmp/cutgz"
gz="$tmp/data/train-images-idx3-ubyte.gz"
head -c $(($(stat -c %s "$gz") / 2)) "$gz" >"$tmp/cutgz/train-images-idx3-ubyte.gz"
expect_error 1 'cutgz/train-images-idx3-ubyte.gz: truncated' run_train "$tmp/cutgz"

cp -r "$tmp/data" "$tmp/magic"
python3 -c "
import gzip, struct, sys; p = sys.argv[1]; b = gzip.open(p).read(); gzip.open(p, 'wb').write(struct.pack('>I', 0x801) + b[4:])" \
    "$tmp/magic/t10k-images-idx3-ubyte.gz"
expect_error 1 't10k-images-idx3-ubyte.gz: not an IDX file of unsigned bytes with 3 dimensions' run_train "$tmp/magic"

cp -r "$tmp/data" "$tmp/nolabels"
rm "$tmp/nolabels/train-labels-idx1-ubyte.gz"
expect_error 1 'train-labels-idx1-ubyte.gz: no such file' run_train "$tmp/nolabels"

# Batch that does not split over the ranks; a batch larger than the data set.
expect_error 2 '--batch 7 (the global batch) must be a multiple of the 2 ranks' \
    launch -np 2 -- sovtrain train --data "$tmp/data" --batch 7 --run-dir "$tmp/run"
expect_error 2 '--batch 128 exceeds the 64 training samples' \
    "$SOV" train --data "$tmp/data" --batch 128 --run-dir "$tmp/run"

# Launcher
expect_error 2 'no command given' launch -np 2
expect_error 2 '-np "two": expected an integer' launch -np two -- true
printf 'localhost slots=two\n' >"$tmp/hosts"
expect_error 2 "$tmp/hosts:1: \"slots=two\": value must be a positive integer" "$SOV" launch --hostfile "$tmp/hosts" -- true
expect_error 2 'unknown host "no-such-host.invalid" (-H)' "$SOV" launch -np 1 -H localhost,no-such-host.invalid -- true
printf 'localhost slots=2\nno-such-host.invalid\n' >"$tmp/hosts2"
expect_error 2 "unknown host \"no-such-host.invalid\" (hostfile $tmp/hosts2)" "$SOV" launch --hostfile "$tmp/hosts2" -- true
printf 'localhost slots=2\n' >"$tmp/hosts3"
expect_error 2 '-np 3 exceeds the 2 slots of the hostfile' "$SOV" launch -np 3 --hostfile "$tmp/hosts3" -- true
expect_error 2 '-np 3 exceeds the 2 slots of -H' "$SOV" launch -np 3 -H localhost:2 -- true
expect_error 2 'give -H or --hostfile, not both' "$SOV" launch -H localhost --hostfile "$tmp/hosts" -- true
expect_error 127 'cannot run /nonexistent/mpirun' "$SOV" launch --mpirun /nonexistent/mpirun -- true

finish

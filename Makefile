# Thin wrapper over CMake. `make demo` and `make test` work on a fresh Debian 12 machine: both install what is
# missing first (scripts/setup.sh), then build.
BUILD ?= build
SAN_BUILD ?= build-sanitize
TSAN_BUILD ?= build-tsan
JOBS ?= $(shell nproc)
NP ?= 2
DEMO_DIR ?= runs/demo
DEMO_ARGS ?= $(shell cat examples/demo.args)
GPT_DIR ?= runs/gpt
GPT_ARGS ?= $(shell cat examples/gpt.args)

.PHONY: all setup build demo demo-gpt test test-fast test-sanitize test-tsan bench clean

all: build

setup:
	@bash scripts/setup.sh

build: setup
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# The main job: data-parallel MLP training on Fashion-MNIST with $(NP) ranks.
demo: build
	$(BUILD)/sovtrain launch -np $(NP) -- sovtrain train $(DEMO_ARGS) --run-dir $(DEMO_DIR)

# The second example: a byte-level GPT on the fortunes text with $(NP) ranks, then text sampled from it.
demo-gpt: build
	$(BUILD)/sovtrain launch -np $(NP) -- sovtrain train $(GPT_ARGS) --run-dir $(GPT_DIR)
	$(BUILD)/sovtrain sample --ckpt $(GPT_DIR)/checkpoints --prompt "The " --tokens 300

# The whole suite: the normal build's tests, then the same tests under AddressSanitizer + UBSan, then the
# checkpoint's threaded tests under ThreadSanitizer.
test: build
	cd $(BUILD) && ctest --output-on-failure
	@$(MAKE) --no-print-directory test-sanitize
	@$(MAKE) --no-print-directory test-tsan

test-fast: build
	cd $(BUILD) && ctest --output-on-failure -L unit

test-sanitize: setup
	@cmake -S . -B $(SAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DSOVTRAIN_SANITIZE=ON -DSOVTRAIN_CUDA=OFF >/dev/null
	@cmake --build $(SAN_BUILD) -j $(JOBS)
	cd $(SAN_BUILD) && ctest --output-on-failure -LE 'gpu|slow|multihost'

# The threads of one process, under ThreadSanitizer: the checkpoint writer's pipeline and snapshot, the reader's
# decoders, each collectives backend's progress thread beside the thread that issues (one real job per backend;
# the ranks are processes, which TSan does not follow), training jobs that overlap allreduces with backward and
# save checkpoints while they train (and fail one on a full disk), encrypted checkpoints (the fetchers decrypt
# beside the decoders) and signed ones (a thread hashes each file as it is written). A report fails the test
# (exit 66). (The whole suite passes under TSan too, in ~15 minutes: too long for every run.)
TSAN_TARGETS = test_ckpt_snapshot test_ckpt_roundtrip comm_check sovtrain_cli ckpt_state_check ckpt_corrupt
TSAN_TESTS = test_ckpt_snapshot test_ckpt_roundtrip comm_shm_2 comm_hier_4 comm_mpi_2 comm_tcp_2 train_equivalence \
             ckpt ckpt_full_disk ckpt_crypto ckpt_sign
test-tsan: setup
	@cmake -S . -B $(TSAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DSOVTRAIN_TSAN=ON -DSOVTRAIN_CUDA=OFF >/dev/null
	@cmake --build $(TSAN_BUILD) -j $(JOBS) --target $(TSAN_TARGETS)
	cd $(TSAN_BUILD) && TSAN_OPTIONS="suppressions=$(CURDIR)/tests/tsan.supp $$TSAN_OPTIONS" \
	    ctest --output-on-failure -R '^($(subst $() $(),|,$(TSAN_TESTS)))$$'

# Benchmarks, each with its peer measured in the same run: allreduce (vs MPI_Allreduce), training (vs PyTorch
# DDP), checkpoints (vs torch.save/torch.load, the entropy bound, zstd -1, the disk).
bench: build
	@bash scripts/setup.sh --bench
	$(BUILD)/sovtrain launch -np 2 -- $(BUILD)/bench/allreduce_perf
	python3 bench/train.py --sovtrain $(BUILD)/sovtrain
	python3 bench/ckpt.py --build $(BUILD)

clean:
	rm -rf $(BUILD) $(SAN_BUILD) $(TSAN_BUILD)

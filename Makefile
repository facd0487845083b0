# Two commands on a fresh machine: `make demo` (whole pipeline, smoke preset) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is pinned to the release whose CPU wheel the CPU hosts install; GPU hosts get the CUDA build of it.
TORCH_SPEC ?= torch==2.13.0

export PREFECT_HOME ?= $(CURDIR)/.prefect
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo demo-seeds test test-fast soak bench bench-gpu deploy-loop drill clean-data help rehearsal rehearsal-gpu \
	gpu-carry gpu-check gpu-twin gpu-twin-fast

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml requirements/lean-heavy.txt requirements/lean-heavy-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev,dask]'
	$(PY) -m pip install -q -r requirements/lean-heavy.txt
	$(PY) -m pip install -q --no-deps -r requirements/lean-heavy-nodeps.txt
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install everything (idempotent)

demo: $(STAMP)  ## run the whole pipeline on the offline smoke preset
	@start=$$(date +%s); \
	$(VENV)/bin/slam run reproduce --preset smoke $(ARGS) && \
	echo "make demo: finished in $$(( $$(date +%s) - start )) s; the report's path and URL are printed above"

demo-seeds: $(STAMP)  ## make demo once per seed (SEEDS="1234 1 2 3 4"), one after another -> bench/results/demo-seeds-cpu.json
	$(PY) scripts/demo_seeds.py --seeds $(or $(SEEDS),1234 1 2 3 4) --root slam-data-seeds

test: $(STAMP)  ## run the test suite (offline)
	$(VENV)/bin/pytest -q tests

test-fast: $(STAMP)  ## the tests without the slow end-to-end ones
	$(VENV)/bin/pytest -q -m "not slow" tests

# Shutdown and start-up races between processes show only in repetition (one CI pass finds them by luck).
soak: $(STAMP)  ## rerun the multi-process tests (torchrun DDP/FSDP, two-process locks) ROUNDS times (default 20)
	@n=$(or $(ROUNDS),20); for i in $$(seq 1 $$n); do \
	  $(VENV)/bin/pytest -q -p no:cacheprovider tests/test_ddp.py tests/test_locks.py > .soak.log 2>&1 \
	    || { tail -40 .soak.log; echo "soak: round $$i of $$n FAILED (full output: .soak.log)"; exit 1; }; \
	  echo "soak: round $$i of $$n passed"; done

bench: $(STAMP)  ## benchmarks (CPU here; GPU parts run where a GPU is visible)
	$(PY) -m bench.run_all

# The offline GPU host (../shared/docs/gpu-host.md: torch, transformers and ~190 others, Python 3.12, no network) gets
# one carry: `make gpu-carry` downloads the wheels of requirements/gpu-carry*.txt for CPython 3.12 manylinux x86-64
# (--no-deps, each dependency named) and the real-speech recordings into .gpu-carry/ (57 MiB; 60 MiB with the
# repository, of the device tool's 64). `make gpu-check` there runs everything in <= 9 minutes.
gpu-carry:  ## download the one carry for the offline GPU host (wheels + real speech) into .gpu-carry/ (< 64 MiB with the repo)
	PYTHON=$(PYTHON) bash scripts/gpu_carry.sh .gpu-carry

gpu-check:  ## on the offline GPU host: install .gpu-carry, GPU benches then the dress rehearsal (<= 9 min; results -> bench/results and the OUT folder)
	PYTHON=$(PYTHON) bash scripts/gpu_check.sh

bench-gpu:  ## on a GPU host: the GPU bench parts alone (installs .gpu-carry/wheels when there)
	$(PYTHON) -m bench.run_all --gpu

# The CPU twin of the GPU host: only its distributions (CPU builds) + the carry, so a module the carry lacks fails
# here, named, not on the GPU host. `gpu-twin` installs them (4 GiB, ~7 min the first time); `gpu-twin-fast` (CI)
# links the ones .venv has in seconds and runs the probe and the bench parts' dry run (the test suite runs the
# tiny rehearsal in the same twin: tests/test_rehearsal.py).
TWIN := .gpu-twin
$(TWIN)/.installed: requirements/gpu-host.txt requirements/gpu-carry.txt requirements/gpu-carry-sdists.txt scripts/gpu_twin.py
	$(PYTHON) scripts/gpu_twin.py full --venv $(TWIN)
	touch $@

gpu-twin: $(TWIN)/.installed  ## CPU twin of the GPU host + the carry, then the GPU check's dry run in it (every bench part, tiny rehearsal)
	SLAM_GPU_CHECK_DRY=1 PYTHON=$(CURDIR)/$(TWIN)/bin/python OUT=$(or $(OUT),/tmp/slam-gpu-twin) bash scripts/gpu_check.sh

gpu-twin-fast: $(STAMP)  ## the twin linked out of .venv (seconds), then the probe and every bench part's dry run (CI)
	$(PY) scripts/gpu_twin.py fast --venv .gpu-twin-fast
	SLAM_GPU_CHECK_DRY=1 GPU_CHECK_SKIP_REHEARSAL=1 PYTHON=$(CURDIR)/.gpu-twin-fast/bin/python \
	  OUT=$(or $(OUT),/tmp/slam-gpu-twin-fast) bash scripts/gpu_check.sh

deploy-loop: $(STAMP)  ## prove the Prefect server/pool/deploy/worker/run loop on 127.0.0.1
	bash scripts/deploy_loop.sh

drill: $(STAMP)  ## kill drill (KILLS=5 SIGKILLs over every stage, byte-identical resume) + bad-input suite
	$(PY) scripts/kill_drill.py --kills $(or $(KILLS),5) --seed $(or $(SEED),0) --preset smoke
	$(PY) scripts/bad_input_suite.py --long-hours $(or $(LONG_HOURS),3)

rehearsal: $(STAMP)  ## dress rehearsal of the paper recipe on CPU at reduced size -> bench/results/rehearsal-cpu.json
	$(PY) scripts/rehearsal.py --size tiny $(ARGS)

rehearsal-gpu:  ## dress rehearsal alone with real model shapes on a GPU host (no venv; installs .gpu-carry/ when there)
	bash scripts/rehearsal_gpu.sh $(ARGS)

clean-data:  ## delete the smoke artifacts and Prefect's local state
	rm -rf slam-data .prefect

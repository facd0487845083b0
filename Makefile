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

.PHONY: setup demo demo-seeds test test-fast soak bench bench-gpu wheels deploy-loop drill clean-data help rehearsal rehearsal-gpu wheels-rehearsal

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
	echo "make demo: finished in $$(( $$(date +%s) - start )) s; report: slam-data/reports/smoke/index.html"

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

# Wheels the offline GPU host lacks (it has torch, transformers, pyarrow, ...) for what the GPU benches import,
# for CPython 3.12 manylinux x86-64, pinned as in pyproject.toml, each dependency named (--no-deps); 5.4 MB, carried
# with the repository (64 MiB limit). The full-pipeline rehearsal's carry is `make wheels-rehearsal`.
# soundfile needs cffi + pycparser, or transformers' lazy imports fail ("Could not import module 'Qwen2ForCausalLM'").
# kokoro + loguru: the synthesis part loads Kokoro's model modules without its G2P stack (misaki, spaCy).
WHEELS_BENCH := liger-kernel==0.8.5 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
	typing-inspection==0.4.5 typing-extensions==4.16.0 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0 \
	kokoro==0.9.4 loguru==0.7.3
WHEEL_PLATFORM := --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64

wheels:  ## download the wheels the offline GPU host lacks for the GPU benches into .wheels/bench
	$(PYTHON) -m pip download -q --no-deps $(WHEEL_PLATFORM) -d .wheels/bench $(WHEELS_BENCH)
	@# the two real recordings + reference units (564 kB) for the units part's fp32 agreement, when they are here
	@for d in ../shared/data/real-speech /work/shared/data/real-speech; do \
	  if [ -d $$d ]; then mkdir -p .wheels/real-speech && cp $$d/*.flac $$d/*.jsonl .wheels/real-speech/ && break; fi; done
	@du -sh .wheels/bench

bench-gpu:  ## on the offline GPU host: install .wheels/bench, run every GPU bench part (<= 6 minutes)
	$(PYTHON) -m bench.run_all --gpu

deploy-loop: $(STAMP)  ## prove the Prefect server/pool/deploy/worker/run loop on 127.0.0.1
	bash scripts/deploy_loop.sh

drill: $(STAMP)  ## kill drill (KILLS=5 SIGKILLs over every stage, byte-identical resume) + bad-input suite
	$(PY) scripts/kill_drill.py --kills $(or $(KILLS),5) --seed $(or $(SEED),0) --preset smoke
	$(PY) scripts/bad_input_suite.py --long-hours $(or $(LONG_HOURS),3)

rehearsal: $(STAMP)  ## dress rehearsal of the paper recipe on CPU at reduced size -> bench/results/rehearsal-cpu.json
	$(PY) scripts/rehearsal.py --size tiny $(ARGS)

rehearsal-gpu:  ## dress rehearsal with real model shapes on a GPU host (no venv; uses .rehearsal-carry/ when there)
	bash scripts/rehearsal_gpu.sh $(ARGS)

wheels-rehearsal:  ## fetch the wheels + speech an offline GPU host needs for rehearsal-gpu into .rehearsal-carry/
	PYTHON=$(if $(wildcard $(PY)),$(PY),$(PYTHON)) bash scripts/carry_rehearsal.sh .rehearsal-carry

clean-data:  ## delete the smoke artifacts and Prefect's local state
	rm -rf slam-data .prefect

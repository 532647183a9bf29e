# dima: the two commands a user needs are `make demo` and `make test`.
# Both set up whatever is missing first (idempotent, about a second once done).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DIMA := $(VENV)/bin/dima
# DDS never leaves loopback; each entry point also sets these if unset.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export ROS_DOMAIN_ID ?= 42

.PHONY: setup demo test test-all world bench checkpoint checkpoint-camera-only checkpoint-ego checkpoint-stage2 checkpoint-dagger eval-bench sim-bench export clean help

help:
	@echo "make demo      set up, then run the main job (world -> bag -> planner node -> metrics)"
	@echo "make test      set up, then run the default test suite"
	@echo "make test-all  also the slow tests"
	@echo "make bench     generate the benchmark world (params/synth_bench.yaml) into data/bench"
	@echo "make checkpoint  retrain the default checkpoint (stage 1, ego motion) on the benchmark world"
	@echo "make checkpoint-camera-only  the strictly camera-only variant (model.can_bus: false)"
	@echo "make checkpoint-ego  ego motion also into the ego query (model.ego_can_bus; stage 2 starts here)"
	@echo "make checkpoint-dagger  on-policy training (DAgger, expert-labelled closed-loop drives) from dima_tiny"
	@echo "make eval-bench  score both and the baselines on the benchmark validation split, with CIs"
	@echo "make sim-bench  closed loop: every planner on the benchmark routes (params/sim/bench.yaml)"
	@echo "make checkpoint-stage2  DiMA joint training (stage 2) from it"
	@echo "make export    the LLM-free planner of the stage-2 checkpoint"

setup:
	@bash tools/setup.sh

demo: setup
	$(DIMA) demo

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

world: setup
	$(DIMA) synth --config params/synth.yaml --out data/world

bench: setup
	$(DIMA) synth --config params/synth_bench.yaml --out data/bench

checkpoint: bench
	$(DIMA) train --config params/train/tiny_cpu.yaml

checkpoint-camera-only: bench
	$(DIMA) train --config params/train/tiny_cpu_camera_only.yaml

checkpoint-ego: bench
	$(DIMA) train --config params/train/tiny_cpu_ego.yaml

checkpoint-dagger: bench
	$(DIMA) dagger --config params/dagger/tiny_cpu.yaml

eval-bench: bench
	$(DIMA) eval --dataroot data/bench --version v1.0-dima --split val --baselines const_vel ego_mlp \
	  $(if $(wildcard checkpoints/dima_tiny_ego),--also planner_ego=checkpoints/dima_tiny_ego) \
	  $(if $(wildcard checkpoints/dima_tiny_camera_only),--also planner_camera_only=checkpoints/dima_tiny_camera_only) \
	  --out runs/eval_bench --json runs/eval_bench/metrics.json

sim-bench: bench
	$(DIMA) sim --bench --set out=runs/sim_bench --json runs/sim_bench/bench.json

checkpoint-stage2: bench
	$(if $(wildcard checkpoints/dima_tiny_ego),,$(DIMA) train --config params/train/tiny_cpu_ego.yaml)
	$(DIMA) train --config params/train/tiny_cpu_stage2.yaml

export: setup
	$(DIMA) export --checkpoint checkpoints/dima_tiny_stage2 --out checkpoints/dima_tiny_llmfree

clean:
	rm -rf data runs out

# sambench: `make install` then `make test` on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1

.PHONY: install test test-fast demo demo-full lint perf perf-gpu slurm-up slurm-down clean

install:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -c constraints.txt -e ".[test,wandb,mlflow]"
	$(PY) -c "import torch, torchvision, timm, submitit, pandas, seaborn, tensorboard, lion_pytorch, wandb, mlflow; print('sambench installed: torch', torch.__version__)"

# everything, the real SLURM cluster included (tests start and stop it)
test:
	$(PY) -m pytest -q

# without the SLURM integration tests
test-fast:
	SAMBENCH_NO_SLURM=1 $(PY) -m pytest -q -m "not slurm"

# the first thing to run (about 3 minutes on 2 CPU cores, offline: docs/first-hour.md): SGD, SAM and
# SAM-ON on noisy-label digits, 5 seeds; the two seed-paired differences with their 95% intervals
demo:
	$(VENV)/bin/sambench run suites/demo.yaml --out results --executor local
	$(VENV)/bin/sambench table results/demo > results/demo/table.md && cat results/demo/table.md
	$(VENV)/bin/sambench table results/demo --compare all SGD
	$(VENV)/bin/sambench table results/demo --compare norm_only all
	$(VENV)/bin/sambench plot results/demo -o results/demo/figures
	$(VENV)/bin/sambench collect results/demo -o results/demo/results.csv
	$(VENV)/bin/sambench report results/demo -o results/demo/report.html
	@echo "demo: open results/demo/report.html (tables, figures, every run); table in results/demo/table.md,"
	@echo "      figures in results/demo/figures/; the longer demo with more methods and sharpness: make demo-full"

# the longer demo (ResNet-20, 21 runs with sharpness measures; see suites/demo_full.yaml)
demo-full:
	$(VENV)/bin/sambench run suites/demo_full.yaml --out results --executor local
	$(VENV)/bin/sambench plot results/demo_full -o results/demo_full/figures
	$(VENV)/bin/sambench table results/demo_full > results/demo_full/table.md
	$(VENV)/bin/sambench collect results/demo_full -o results/demo_full/results.csv
	@echo "demo-full: figures in results/demo_full/figures/ (accuracy_vs_sparsity, sharpness_vs_accuracy,"
	@echo "           sharpness_vs_sparsity, norm_gamma, ...), table in results/demo_full/table.md"

lint:
	$(VENV)/bin/ruff check bench masks analysis tests

perf:
	$(VENV)/bin/sambench perf --device cpu --model resnet20 --dataset digits --batch-size 128

# on a machine with a CUDA GPU (see bench/gpu_checks.sh)
perf-gpu:
	bash bench/gpu_checks.sh results/perf-gpu

slurm-up:
	bash bench/slurm/up.sh

slurm-down:
	bash bench/slurm/down.sh

clean:
	rm -rf results .pytest_cache

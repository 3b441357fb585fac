# sambench: `make install` then `make test` on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1

.PHONY: install test test-fast demo docs lint perf perf-gpu slurm-up slurm-down clean

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

demo:
	$(VENV)/bin/sambench run suites/demo.yaml --out results --executor local
	$(VENV)/bin/sambench plot results/demo -o results/demo/figures
	$(VENV)/bin/sambench table results/demo > results/demo/table.md
	$(VENV)/bin/sambench collect results/demo -o results/demo/results.csv
	@echo "demo: figures in results/demo/figures/ (accuracy_vs_sparsity, sharpness_vs_accuracy,"
	@echo "      sharpness_vs_sparsity, norm_gamma, ...), table in results/demo/table.md"

# the documentation site in site/ (open site/index.html): the CLI page regenerated from the parsers,
# then mkdocs build --strict (a broken link, anchor or API reference is an error)
docs:
	$(PY) docs/gen_cli.py
	$(PY) -m mkdocs build --strict

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
	rm -rf results site .pytest_cache

# sambench: `make install` then `make test` on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1

.PHONY: install test test-fast demo demo-full docs lint perf perf-gpu slurm-up slurm-down clean readme-figures check-readme

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

# the first thing to run (about a minute on 2 idle CPU cores, at most 3 shared; offline: docs/first-hour.md): SGD, SAM and
# SAM-ON on noisy-label digits, 5 seeds; the two seed-paired differences with their 95% intervals
demo:
	@if ls results/demo/*/result.json >/dev/null 2>&1; then echo "demo: results/demo already holds runs:" \
	  "finished ones are kept and only missing or unfinished ones train; the figures, table and report are" \
	  "made again from all of them (make clean asks before deleting results/)"; fi
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
	$(VENV)/bin/sambench report results/demo_full -o results/demo_full/report.html
	@echo "demo-full: figures in results/demo_full/figures/ (accuracy_vs_sparsity, sharpness_vs_accuracy,"
	@echo "           sharpness_vs_sparsity, norm_gamma, ...), table in results/demo_full/table.md, one page:"
	@echo "           results/demo_full/report.html"

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

# The README's demo numbers and figures, from the demo run at HEAD (analysis/readme_numbers.py):
# docs/demo_numbers.json, docs/demo_*.png and README.md's demo blocks. The runs go to a folder of
# their own commit, so numbers of another commit are never reused (a second call only re-plots).
README_COMMIT = $(shell git rev-parse HEAD 2>/dev/null)
README_RUNS  ?= results/readme-$(shell git rev-parse --short HEAD 2>/dev/null)
readme-figures:
	@git diff --quiet HEAD -- || { echo "readme-figures: the working tree has changes; commit them first" \
	  "(the README's numbers come from the runs of one commit)"; exit 1; }
	$(VENV)/bin/sambench run suites/demo.yaml --out $(README_RUNS) --executor local
	$(PY) -m analysis.readme_numbers $(README_RUNS)/demo --head $(README_COMMIT) --command "make readme-figures"

# The slow check: the whole demo again at HEAD, in a scratch folder, with the thread count per run of
# the committed numbers; every run's numbers must equal docs/demo_numbers.json's (make test checks one)
CHECK_DIR ?= $(or $(TMPDIR),/tmp)/sambench-check-readme
CHECK_THREADS = $(shell $(PY) -c "import json; print(json.load(open('docs/demo_numbers.json'))['machine']['threads_per_run'][0])" 2>/dev/null || echo 1)
check-readme:
	rm -rf $(CHECK_DIR)/demo
	OMP_NUM_THREADS=$(CHECK_THREADS) $(VENV)/bin/sambench run suites/demo.yaml --out $(CHECK_DIR) --executor local
	$(PY) -m analysis.readme_numbers $(CHECK_DIR)/demo --check

# results/ is deleted only after a yes typed at the prompt (no answer, or no terminal: kept)
clean:
	rm -rf site .pytest_cache
	@if [ -d results ]; then \
	  printf "make clean: delete results/ (%s finished runs)? [y/N] " "$$(find results -name result.json | wc -l)"; \
	  read answer || answer=; \
	  case "$$answer" in y|Y|yes|YES) rm -rf results && echo "results/ deleted";; *) echo "results/ kept";; esac; \
	fi

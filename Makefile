# The README's two commands: `make demo` and `make test` (each installs .venv first if needed).
.PHONY: install demo claims test smoke bench lint dag gpu-check gpu-carry
VENV := $(CURDIR)/.venv/bin
export PATH := $(VENV):$(PATH)
export MPLBACKEND := Agg
export DVC_NO_ANALYTICS := 1

install:
	bash scripts/install.sh

# the whole pipeline on Fashion-MNIST (5 rules x 3 seeds, CPU, ~15 min): results/demo/ and paper/demo/
demo: install
	snakemake --cores all --configfile config/demo.yaml
	dlwt check-outputs --overlay config/demo.yaml

# every claim decided on 20,000 Fashion-MNIST images, KP's included (15 runs x 1,872 steps, 1-1.5 h on 2 cores):
# results/claims/ and paper/claims/ (how its recipe was chosen: paper/claims/recipes.md)
claims: install
	snakemake --cores all --configfile config/claims.yaml
	dlwt check-outputs --overlay config/claims.yaml

# pytest exits 5 when it collects no tests: that is not a failure of the code under test. Every test runs
# (the CUDA ones skip themselves without a GPU); PYTEST_ARGS adds options (.ci/run: --durations=15).
test: install
	pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

# the smoke run in the checkout: dvc.yaml is what params.yaml generates, then synthetic ILSVRC-format archives
# through every stage (make test runs the same pipeline on a scratch copy: tests/conftest.py's ci_pipeline)
smoke: install
	dlwt dag --check dvc.yaml
	snakemake --cores 2 --configfile config/ci.yaml --forceall
	dlwt check-outputs --overlay config/ci.yaml

# after editing model.*, exp or data.root/dataset/source in params.yaml: regenerate the DVC pipeline
dag: install
	dlwt dag --write dvc.yaml

lint: install
	ruff check src tests bench
	snakemake --lint --configfile config/demo.yaml
	dlwt dag --check dvc.yaml

bench: install
	python bench/rules.py
	python bench/loaders.py
	python bench/train.py

# the first check on a new GPU node, about 8 minutes on one GPU (no install, no network: python3 with torch and
# PYTHONPATH=src): results/gpu-check/summary.md. `bash scripts/gpu_check.sh --cpu --out DIR` is its CPU profile
gpu-check:
	bash scripts/gpu_check.sh --out results/gpu-check

# what a bare CUDA machine lacks for gpu-check (jsonschema wheels for CPython 3.12, Fashion-MNIST): .gpu-carry/
gpu-carry: install
	bash scripts/gpu_carry.sh

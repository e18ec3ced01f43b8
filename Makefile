# The README's two commands: `make demo` and `make test` (each installs .venv first if needed).
.PHONY: install demo test bench lint
VENV := .venv/bin
export MPLBACKEND := Agg
export DVC_NO_ANALYTICS := 1

install:
	bash scripts/install.sh

demo: install
	$(VENV)/dlwt demo

# pytest exits 5 when it collects no tests: that is not a failure of the code under test
test: install
	$(VENV)/pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

lint: install
	$(VENV)/ruff check src tests bench

bench: install
	$(VENV)/python bench/rules.py

# The two commands of the quick start: `make demo` and `make test` (each sets itself up).
.PHONY: setup demo test bench lint clean

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	.venv/bin/lint-imports
	.venv/bin/python -m pytest -q

bench: setup
	@bash benchmarks/run.sh

clean:
	rm -rf .venv build *.egg-info .pytest_cache .hypothesis demo-work

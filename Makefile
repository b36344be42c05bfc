# Thin wrappers around scripts/ (a fresh machine may not have make: the scripts are the truth).
.PHONY: run test bench deb
run:
	scripts/run
test:
	scripts/test
bench:
	.venv/bin/python bench/ingest.py
deb:
	packaging/build-deb dist

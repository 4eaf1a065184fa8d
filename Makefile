# imgbackup: see README.md. `make test` and `make demo` work on a fresh
# Debian 12 machine: both install what they need first (scripts/install-deps.sh).
SWIFT ?= swift
BIN := .build/debug/imgbackup
PREFIX ?= /usr/local
# Extra arguments for pytest in the end-to-end suite, e.g. E2E_ARGS='-k wrong_key'.
E2E_ARGS ?=

.PHONY: all deps build unit e2e test demo install clean format bench

all: build

deps:
	scripts/install-deps.sh

build:
	$(SWIFT) build

# Host tests: config, layer stack, and the real libcryptsetup/loop/command
# runner seams (no device-mapper needed).
unit: build
	$(SWIFT) test
	tests/units/verify.sh

# Black-box tests of the CLI in a kernel with dm-crypt (a virtme-ng VM here).
e2e: build
	tests/e2e/in-real-kernel.sh tests/e2e/run-suite.sh $(E2E_ARGS)

test: deps unit e2e

demo: deps build
	tests/e2e/in-real-kernel.sh scripts/demo.sh

# Binary, systemd units (in the local unit directory, pointing at this
# binary) and the example config. Then: systemctl daemon-reload;
# systemctl enable --now imgbackup@TARGET.timer
install: build
	$(SWIFT) build -c release
	install -D -m 755 .build/release/imgbackup $(DESTDIR)$(PREFIX)/bin/imgbackup
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/system
	sed 's|/usr/local/bin/imgbackup|$(PREFIX)/bin/imgbackup|' configs/imgbackup@.service \
		> $(DESTDIR)$(PREFIX)/lib/systemd/system/imgbackup@.service
	install -m 644 configs/imgbackup@.timer $(DESTDIR)$(PREFIX)/lib/systemd/system/imgbackup@.timer
	install -D -m 644 configs/imgbackup.toml $(DESTDIR)/etc/imgbackup/imgbackup.toml.example

format:
	$(SWIFT) format --in-place --recursive Sources Tests Package.swift

clean:
	rm -rf .build

# Throughput benchmarks (results and commands: docs/benchmarks.md).
bench:
	$(SWIFT) build -c release
	scripts/bench-nbd.sh
	tests/e2e/in-real-kernel.sh scripts/bench-run.sh

# imgbackup: see README.md. `make test` and `make demo` work on a fresh
# Debian 12 machine: both install what they need first (scripts/install-deps.sh).
SWIFT ?= swift
BIN := .build/debug/imgbackup
PREFIX ?= /usr/local
# Extra arguments for pytest in the end-to-end suite, e.g. E2E_ARGS='-k wrong_key'.
E2E_ARGS ?=

.PHONY: all deps build unit lint e2e e2e-long test demo install dist completions man clean format bench bench-links bench-tree bench-many bench-writes bench-restore bench-s3

all: build

deps:
	scripts/install-deps.sh

build:
	$(SWIFT) build

# Host tests: config, layer stack, and the real libcryptsetup/loop/command
# runner seams (no device-mapper needed).
unit: build lint
	$(SWIFT) test
	checks/systemd-units.sh
	checks/cli-artifacts.sh

# Black-box tests of the CLI in a kernel with dm-crypt (virtme-ng VMs here:
# one per core, up to three, each running a share of the files). The
# packaged binary (dist) restores a backup there without the toolchain.
e2e: build dist
	e2e/run-sharded.sh $(E2E_ARGS)

# The suite with the long variants `make test` leaves out (e2e/conftest.py, LONG_TESTS).
e2e-long: build dist
	e2e/run-sharded.sh --long $(E2E_ARGS)

test: deps unit e2e

demo: deps build
	e2e/in-real-kernel.sh scripts/demo.sh

# Binary, systemd units (in the local unit directory, pointing at this
# binary) and the example config. Then: systemctl daemon-reload;
# systemctl enable --now imgbackup@TARGET.timer (and imgbackup-trim@TARGET.timer for NBD targets,
# imgbackup-check@TARGET.timer for a monthly check)
install: build
	$(SWIFT) build -c release
	install -D -m 755 .build/release/imgbackup $(DESTDIR)$(PREFIX)/bin/imgbackup
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/system
	for unit in imgbackup@.service imgbackup-trim@.service imgbackup-check@.service imgbackup-failed@.service; do \
		sed 's|/usr/local/bin/imgbackup|$(PREFIX)/bin/imgbackup|' configs/$$unit > $(DESTDIR)$(PREFIX)/lib/systemd/system/$$unit; \
	done
	install -m 644 configs/imgbackup@.timer configs/imgbackup-trim@.timer configs/imgbackup-check@.timer $(DESTDIR)$(PREFIX)/lib/systemd/system/
	install -D -m 644 configs/imgbackup.toml $(DESTDIR)/etc/imgbackup/imgbackup.toml.example
	$(MAKE) completions man BIN=.build/release/imgbackup
	install -D -m 644 .build/completions/imgbackup.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/imgbackup
	install -D -m 644 .build/completions/_imgbackup $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_imgbackup
	install -D -m 644 .build/completions/imgbackup.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/imgbackup.fish
	install -d $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 644 .build/man/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/

# A release for machines without Swift: the Swift runtime linked in
# statically, packed as dist/imgbackup-VERSION-linux-ARCH.tar.gz and
# dist/imgbackup_VERSION_ARCH.deb (Depends: Debian's runtime packages).
dist:
	SWIFT=$(SWIFT) scripts/make-dist.sh

# Shell completions and man pages, generated from the command definitions
# (swift-argument-parser), so they never drift from --help.
completions:
	mkdir -p .build/completions
	$(BIN) --generate-completion-script bash > .build/completions/imgbackup.bash
	$(BIN) --generate-completion-script zsh > .build/completions/_imgbackup
	$(BIN) --generate-completion-script fish > .build/completions/imgbackup.fish

man:
	$(SWIFT) build --product generate-manual
	mkdir -p .build/man
	.build/debug/generate-manual $(BIN) --multi-page --section 1 --output-directory .build/man

format:
	$(SWIFT) format --in-place --recursive Sources Tests Package.swift Plugins

# The repository's own .swift-format: `make format` fixes what it reports.
lint:
	$(SWIFT) format lint --strict --recursive Sources Tests Package.swift Plugins

clean:
	rm -rf .build .build-dist dist

# Throughput benchmarks (results and commands: docs/benchmarks.md).
bench:
	$(SWIFT) build -c release
	scripts/bench-nbd.sh
	e2e/in-real-kernel.sh scripts/bench-run.sh

# Backups over a slow, distant link (netem in the VM): imgbackup against the
# recipe, borg, restic and plain rsync. Needs restic (apt-get install restic).
bench-links:
	command -v restic >/dev/null || apt-get install -y restic
	$(SWIFT) build -c release
	e2e/in-real-kernel.sh scripts/bench-links.sh

# An incremental run of a tree of 2,000 directories over a slow, distant
# link (beside another build: the command in docs/benchmarks.md).
bench-tree:
	$(SWIFT) build -c release
	e2e/in-real-kernel.sh scripts/bench-tree.sh

# An image in an S3 bucket (rclone's S3 server in the VM) against sshfs,
# NBD and restic's S3 backend; three object sizes (docs/benchmarks.md).
bench-s3:
	command -v restic >/dev/null || apt-get install -y restic
	$(SWIFT) build -c release
	e2e/in-real-kernel.sh scripts/bench-s3.sh

# What each copy method writes to the image for bench-links' change set: the
# floor under an incremental run's bytes on the wire (loop devices, no VM).
bench-writes:
	scripts/bench-image-writes.sh

# Eight targets on one backup host, a user and a key each: one after
# another, then all at once (docs/benchmarks.md).
bench-many:
	$(SWIFT) build -c release
	e2e/in-real-kernel.sh scripts/bench-many.sh

# The restore day: time to the first restored file, a 64 MiB image with one
# backup point against a 1 TiB image with many (docs/benchmarks.md).
bench-restore:
	$(SWIFT) build -c release
	e2e/in-real-kernel.sh scripts/bench-restore.sh

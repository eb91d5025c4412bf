# twinlet — see README.md. Every target works on a clean checkout.
GO       ?= go
BIN      := bin
RUN_DIR  := .run
PKGS     := ./...
# The version and source date come from git (packaging/version.sh), so that
# `twinlet version`, __summary.agentVersion and the packages agree.
VERSION     ?= $(shell sh packaging/version.sh)
SOURCE_DATE ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
LDFLAGS     := -X github.com/twinlet/twinlet/internal/version.Version=$(VERSION) \
               -X github.com/twinlet/twinlet/internal/version.SourceDate=$(SOURCE_DATE)
ARCHES      ?= amd64 arm64
DIST        := dist

.PHONY: all build run test unit conformance bench bench-cli fuzz lint clean demo tpm-tools deb deb-tools ca-tools packages-tools systemd-tools chromium screenshots test-tools azurite diag-tools ext-tools release

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

# Static, stripped binaries for each of $(ARCHES), as the packages ship them.
release:
	@set -e; for a in $(ARCHES); do \
	  CGO_ENABLED=0 GOOS=linux GOARCH=$$a $(GO) build -trimpath -ldflags '-s -w $(LDFLAGS)' -o $(BIN)/linux-$$a/ ./cmd/...; \
	done

# dist/twinlet_<version>_<arch>.deb (the agent) and dist/twinctl_… (twinctl
# and twinhub) for each of $(ARCHES); see packaging/ and internal/tools/mkdeb.
deb: build release
	@set -e; for a in $(ARCHES); do \
	  $(GO) run ./internal/tools/mkdeb -version '$(VERSION)' -date '$(SOURCE_DATE)' -arch $$a \
	    -bin $(BIN)/linux-$$a -docbin $(BIN) -out $(DIST); \
	done

# What the packaging tests drive: lintian, and the shells whose completions
# they run. Installed as Debian packages when missing (as root), like Node
# for the conformance suite.
deb-tools:
	@sh packaging/test-tools.sh packaging lintian:lintian zsh:zsh fish:fish

# What the certificates tests drive: update-ca-certificates and openssl
# (normally present on Debian). Installed as Debian packages when missing
# (as root).
ca-tools:
	@sh packaging/test-tools.sh certificates update-ca-certificates:ca-certificates openssl:openssl

# gpg for the packages tests that sign a local repository (dpkg and apt
# are on every Debian system).
packages-tools:
	@sh packaging/test-tools.sh packages gpg:gpg

# systemctl (package systemd) for the services provider's tests, which
# drive systemctl --root on temporary roots; no running systemd is needed.
systemd-tools:
	@sh packaging/test-tools.sh services systemctl:systemd

# The console's tests drive headless Chromium (Debian package chromium),
# installed here as root when missing; without it they skip.
chromium:
	@command -v chromium-browser >/dev/null || sh packaging/test-tools.sh console chromium:chromium

# docs/screenshots/*.png: the console's end-to-end test (twinhub, real
# agents, headless Chromium) photographs the pages it drives.
screenshots: chromium
	@mkdir -p docs/screenshots
	TWINLET_SCREENSHOTS=$(CURDIR)/docs/screenshots $(GO) test -count=1 -run '^TestConsoleEndToEnd$$' ./internal/console/

# The agent in the foreground on the example policy, acting on a sandbox root
# inside the checkout (git-ignored): it never touches this machine's /etc.
run: build
	@mkdir -p $(RUN_DIR)/root $(RUN_DIR)/state; chmod -R go-w examples
	$(BIN)/twinlet run --config examples/twinlet.yaml --root $(RUN_DIR)/root \
	  --state-dir $(RUN_DIR)/state --policy examples/local

test: lint unit conformance

# Every Debian package the Go tests drive, in one apt-get call (the
# per-suite targets above install their own share).
test-tools:
	@sh packaging/test-tools.sh "Go" swtpm:swtpm swtpm_setup:swtpm-tools tpm2_nvread:tpm2-tools lintian:lintian zsh:zsh fish:fish update-ca-certificates:ca-certificates openssl:openssl systemctl:systemd gpg:gpg chromium:chromium \
	  /lib/systemd/systemd-journal-remote:systemd-journal-remote /usr/bin/python3:python3

# Every Go test under the race detector.
unit: test-tools azurite
	$(GO) test -race -count=1 -timeout 12m $(PKGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 1 $(PKGS)

# A whole-process no-op `twinlet apply --once` of 100 files, hostname,
# timezone and one sysctl item against a floor program that only stats,
# reads and hashes the same files, in one hyperfine run (Debian package
# hyperfine, installed here as root when missing).
# bench-cli builds twinlet and the floor as the packages build them (static,
# stripped): what is timed is what ships.
bench-cli:
	@command -v hyperfine >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing hyperfine (Debian package) for bench-cli"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null; }; \
	  else echo "make bench-cli needs hyperfine: apt-get install hyperfine" >&2; exit 1; fi; }
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w $(LDFLAGS)' -o $(BIN)/ ./cmd/twinlet ./internal/tools/clifloor
	$(GO) run ./internal/tools/benchcli -bin $(BIN) -dir $(RUN_DIR)/bench-cli

FUZZTIME ?= 10s
# Every Fuzz* target of the module, each for $(FUZZTIME).
fuzz:
	@set -e; grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' . | sort | \
	while IFS=: read -r file fn; do fn=$${fn#func }; pkg=./$$(dirname $${file#./}); \
	  echo "== $$pkg $$fn"; $(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) $$pkg; done

# The TPM tests start swtpm (a software TPM) and read back with tpm2-tools;
# install them (Debian packages) when missing, as root.
tpm-tools:
	@sh packaging/test-tools.sh TPM swtpm:swtpm swtpm_setup:swtpm-tools tpm2_nvread:tpm2-tools

# Azurite (Microsoft's Azure Storage emulator, npm package) for the
# file-upload tests of twinhub and the diagnostics provider: npm ci in
# internal/hub/azurite when package.json or the lock file changed since the
# last install (a checksum in the git-ignored node_modules), like conformance.
azurite:
	@sh packaging/test-tools.sh Azurite node:nodejs npm:npm
	@cd internal/hub/azurite && sum=$$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1) && \
	if [ "$$(cat node_modules/.twinlet-installed 2>/dev/null)" != "$$sum" ]; then \
	  echo "npm ci (internal/hub/azurite)"; \
	  npm ci --no-audit --no-fund --ignore-scripts --loglevel=error && echo "$$sum" > node_modules/.twinlet-installed; \
	fi

# The diagnostics tests write a journal into a sandbox root with
# systemd-journal-remote (Debian package), installed here as root when missing.
diag-tools:
	@sh packaging/test-tools.sh diagnostics /lib/systemd/systemd-journal-remote:systemd-journal-remote

# The external-provider tests run the Python example with Debian's
# /usr/bin/python3 (standard library only); installed when missing.
ext-tools:
	@sh packaging/test-tools.sh external-provider /usr/bin/python3:python3

# Drives twinhub with Microsoft's official Node.js SDKs (see internal/hub/conformance).
# npm ci runs only when package.json or the lock file changed since the last
# install (a checksum in the git-ignored node_modules); then the Go driver
# starts a hub on loopback ports and runs the suite with node --test.
conformance:
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing nodejs and npm (Debian packages) for the SDK conformance suite"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	  else echo "make conformance needs Node.js 18+ and npm: apt-get install nodejs npm" >&2; exit 1; fi; }
	@cd internal/hub/conformance && sum=$$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1) && \
	if [ "$$(cat node_modules/.twinlet-installed 2>/dev/null)" != "$$sum" ]; then \
	  echo "npm ci (internal/hub/conformance)"; \
	  npm ci --no-audit --no-fund --ignore-scripts --loglevel=error && echo "$$sum" > node_modules/.twinlet-installed; \
	fi
	$(GO) run ./internal/hub/conformance/run -dir internal/hub/conformance

# The whole loop on one machine: twinhub, a device, twinlet on a sandbox
# root, a desired patch with twinctl, until the reported state is Ready;
# with Azurite (make azurite) also a diagnostic bundle's file upload.
demo: build
	$(GO) run ./internal/tools/demo -bin $(BIN)

clean:
	rm -rf $(BIN) $(RUN_DIR) $(DIST)

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

.PHONY: all build run test unit conformance bench bench-cli fuzz lint clean demo tpm-tools deb deb-tools release ext-tools

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
	@missing=""; for t in lintian:lintian zsh:zsh fish:fish; do \
	  command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing (Debian packages) for the packaging tests"; \
	    (apt-get install -y -qq -o DPkg::Lock::Timeout=300 $$missing >/dev/null 2>&1 || \
	     { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 $$missing >/dev/null; }); \
	  else echo "the packaging tests need:$$missing (apt-get install$$missing)" >&2; fi; \
	fi

# The agent in the foreground on the example policy, acting on a sandbox root
# inside the checkout (git-ignored): it never touches this machine's /etc.
run: build
	@mkdir -p $(RUN_DIR)/root $(RUN_DIR)/state; chmod -R go-w examples
	$(BIN)/twinlet run --config examples/twinlet.yaml --root $(RUN_DIR)/root \
	  --state-dir $(RUN_DIR)/state --policy examples/local

test: lint unit conformance

# Every Go test under the race detector.
unit: tpm-tools deb-tools ext-tools
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
bench-cli:
	@command -v hyperfine >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing hyperfine (Debian package) for bench-cli"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine >/dev/null; }; \
	  else echo "make bench-cli needs hyperfine: apt-get install hyperfine" >&2; exit 1; fi; }
	$(GO) build -trimpath -o $(BIN)/ ./cmd/twinlet ./internal/tools/clifloor
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
	@command -v swtpm >/dev/null && command -v swtpm_setup >/dev/null && command -v tpm2_nvread >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing swtpm, swtpm-tools and tpm2-tools (Debian packages) for the TPM tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq swtpm swtpm-tools tpm2-tools >/dev/null; \
	  else echo "the TPM tests need swtpm and tpm2-tools: apt-get install swtpm swtpm-tools tpm2-tools" >&2; exit 1; fi; }

# The external-provider tests run the Python example with Debian's
# /usr/bin/python3 (standard library only); installed when missing.
ext-tools:
	@test -x /usr/bin/python3 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing python3 (Debian package) for the external-provider tests"; \
	    (apt-get install -y -qq -o DPkg::Lock::Timeout=600 python3 >/dev/null 2>&1 || \
	     { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 python3 >/dev/null; }); \
	  else echo "the external-provider tests need /usr/bin/python3: apt-get install python3" >&2; fi; }

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
# root, a desired patch with twinctl, until the reported state is Ready.
demo: build
	$(GO) run ./internal/tools/demo -bin $(BIN)

clean:
	rm -rf $(BIN) $(RUN_DIR) $(DIST)

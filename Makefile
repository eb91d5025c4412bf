# twinlet — see README.md. Every target works on a clean checkout.
GO       ?= go
BIN      := bin
RUN_DIR  := .run
PKGS     := ./...

.PHONY: all build run test unit conformance bench fuzz lint clean demo tpm-tools

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# The agent in the foreground on the example policy, acting on a sandbox root
# inside the checkout (git-ignored): it never touches this machine's /etc.
run: build
	@mkdir -p $(RUN_DIR)/root $(RUN_DIR)/state; chmod -R go-w examples
	$(BIN)/twinlet run --config examples/twinlet.yaml --root $(RUN_DIR)/root \
	  --state-dir $(RUN_DIR)/state --policy examples/local

test: lint unit conformance

unit: tpm-tools
	$(GO) test -count=1 -timeout 12m $(PKGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 1 $(PKGS)

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
	rm -rf $(BIN) $(RUN_DIR)

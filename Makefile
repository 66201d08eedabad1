# git-evidence — the two set-up commands of a fresh machine are `make demo` and `make test`.

CARGO ?= cargo
BIN := target/release/git-evidence
DEMO := target/demo

.PHONY: all build deps test lint unit demo bench clean

all: build

build:
	$(CARGO) build --release --locked

## deps: what the tests and the demo run besides cargo: Debian's Packer 1.6.6.
deps:
	@command -v packer >/dev/null 2>&1 || { \
	    echo "installing Debian's packer"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq packer >/dev/null; }
	@packer version

## test: formatting, lints and every test (unit and integration, against real git and Packer).
test: deps lint unit

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit:
	$(CARGO) test --locked

## demo: record a sample Packer log into a scratch repository and show what it made.
demo: build
	@rm -rf $(DEMO) && mkdir -p $(DEMO)
	@export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 HOME="$(CURDIR)/$(DEMO)"; \
	set -e; \
	git init -q -b main $(DEMO)/repo; \
	git -C $(DEMO)/repo config user.name "Demo Builder"; \
	git -C $(DEMO)/repo config user.email "builder@example.com"; \
	git -C $(DEMO)/repo commit -q --allow-empty -m "Packer templates"; \
	echo "$$ git evidence record --template ubuntu-22.04 --log ok.packer.log --exit-code 0 --fact vmid=9000 --fact node=pve1"; \
	$(BIN) -C $(DEMO)/repo record --template ubuntu-22.04 \
	    --log "$(CURDIR)/tests/fixtures/packer-1.6.6/ok.packer.log" --exit-code 0 \
	    --fact vmid=9000 --fact node=pve1; \
	echo; echo "$$ git log --stat -1"; git -C $(DEMO)/repo log --stat -1 | cat; \
	echo; echo "$$ cat evidence/builds/ubuntu-22.04/latest/proof.json"; \
	cat $(DEMO)/repo/evidence/builds/ubuntu-22.04/latest/proof.json; \
	echo; echo "$$ sha256sum evidence/builds/ubuntu-22.04/latest/packer.log"; \
	cd $(DEMO)/repo && sha256sum evidence/builds/ubuntu-22.04/latest/packer.log

## bench: performance goals, as ratios against baselines measured in the same run.
bench: build
	$(CARGO) bench --locked --bench record

clean:
	$(CARGO) clean

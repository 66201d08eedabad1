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

## demo: a real Packer build (examples/null) recorded into a scratch repository and pushed to a scratch
## remote, then a failing one, pushed too.
demo: build deps
	@rm -rf $(DEMO) && mkdir -p $(DEMO)/home
	@export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 HOME="$(CURDIR)/$(DEMO)/home" \
	    CHECKPOINT_DISABLE=1 PATH="$(CURDIR)/target/release:$$PATH"; \
	set -e; \
	git init -q --bare -b main $(DEMO)/server.git; \
	git init -q -b main $(DEMO)/infra; cd $(DEMO)/infra; \
	git config user.name "Demo Build Host"; git config user.email "builder@example.com"; \
	cp "$(CURDIR)/examples/null/build.pkr.hcl" .; \
	printf 'packer_cache/\npacker-manifest.json\n' > .gitignore; \
	git add . && git commit -q -m "Packer template"; \
	git remote add origin ../server.git && git push -q -u origin main; \
	echo '$$ git evidence run --template demo-null --push -- packer build build.pkr.hcl'; \
	git evidence run --template demo-null --push -- packer build -color=false build.pkr.hcl; \
	echo; echo '$$ git log --oneline origin/main'; git log --oneline origin/main | cat; \
	echo; echo '$$ git log --stat -1'; git log --stat -1 | cat; \
	echo; echo '$$ ls -l evidence/builds/demo-null'; ls -l evidence/builds/demo-null; \
	echo; echo '$$ cat evidence/builds/demo-null/latest/proof.json'; cat evidence/builds/demo-null/latest/proof.json; \
	echo; echo '$$ (cd evidence/builds/demo-null/latest && sha256sum packer.log)'; \
	(cd evidence/builds/demo-null/latest && sha256sum packer.log); \
	echo; echo '$$ git evidence run --template demo-null -- packer build -var fail=true build.pkr.hcl'; \
	rc=0; git evidence run --template demo-null -- packer build -color=false -var fail=true build.pkr.hcl || rc=$$?; \
	echo "(exit code $$rc, as Packer's)"; \
	echo; echo '$$ git for-each-ref refs/evidence'; git for-each-ref refs/evidence; \
	echo; echo '$$ git evidence push'; git evidence push; \
	echo; echo '$$ git ls-remote origin'; git ls-remote origin | cat; \
	failed="$$(git for-each-ref --format='%(refname)' refs/evidence/failed/builds/demo-null/)"; \
	echo; echo "\$$ git log -1 $$failed"; git log -1 "$$failed" | cat; \
	echo; echo "\$$ git ls-tree -r --name-only $$failed"; git ls-tree -r --name-only "$$failed"

## bench: performance goals, as ratios against baselines measured in the same run.
bench: build
	$(CARGO) bench --locked --bench redact
	$(CARGO) bench --locked --bench record
	$(CARGO) bench --locked --bench verify
	$(CARGO) bench --locked --bench push

clean:
	$(CARGO) clean

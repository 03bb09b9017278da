# sindri: the two commands a newcomer needs are `make run` and `make test`,
# both as root on Debian 12.

GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BIN := bin
PKGS := ./...

.PHONY: all deps build lint test bench run clean

all: build

# Installs and starts what the tests and `make run` need (idempotent).
deps:
	scripts/deps

build:
	$(GO) build -o $(BIN)/ ./cmd/sindrid ./cmd/sindri

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

# Every test, on real BTRFS, ZFS (zfs-fuse) and Postgres; needs root.
# One package at a time (-p 1): on two cores, zfs-fuse's load beside the
# engine's tests would stretch the time limits those tests assert (a
# killed postmaster answers again within 2 s).
test: deps lint
	$(GO) test -p 1 -count=1 -timeout 45m $(PKGS)

# Storage benchmarks: clone and destroy on each driver, 10 runs each, for
# medians (feed the output to benchstat).
bench: deps
	$(GO) test -p 1 -run '^$$' -bench . -benchtime 50x -count 10 ./pkg/storage/...

# Builds and starts sindrid with the embedded defaults (a loopback BTRFS
# under DATA_PATH, /var/lib/sindri unless set).
run: deps build
	scripts/run-dev

clean:
	rm -rf $(BIN)

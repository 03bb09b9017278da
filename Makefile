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

# sindrid and sindri; and sindri-upload-shell, what sshd runs for the
# upload account, static (without cgo).
build:
	$(GO) build -o $(BIN)/ ./cmd/sindrid ./cmd/sindri
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/sindri-upload-shell

# spec/draupnir5 is a module of its own (Draupnir's client's old jsonapi),
# which ./... leaves out: it is vetted here, and spec's TestDraupnir runs
# its tests against a real sindrid.
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	cd spec/draupnir5 && $(GO) vet ./...

# Every test, on real BTRFS, ZFS (zfs-fuse) and Postgres; needs root.
# One package at a time (-p 1): several packages start dozens of Postgres
# servers or drive zfs-fuse, and on two cores side by side they would make
# the engine's time-bounded checks (a killed postmaster answers again
# within 2 s) depend on their neighbours. The engine's tests run on BTRFS
# even where the shell says SINDRI_TEST_STORAGE=dircopy (see the README).
test: deps lint
	SINDRI_TEST_STORAGE=btrfs $(GO) test -p 1 -count=1 -timeout 45m $(PKGS)

# Benchmarks: clone, destroy and cp -a on each driver, and Get with 10 and
# with 1,000 volumes present (200 on ZFS, SINDRI_ZFS_BENCH_VOLUMES to
# change); every clone's disk use read in one call against one call per
# clone; a 200 MB image sent to a second filesystem of the same kind
# (the driver's own send and receive, tar.zst, cp -a); an image of
# SINDRI_BENCH_REPLICATION_MB (default 5120 here) replicated between two
# fleet hosts on loopback BTRFS against a bare btrfs send | btrfs receive
# (MB/s-median); clone to TLS login
# against pg_ctl -w start (feed both to benchstat for medians); ingest of a
# 2 GB pgbench data directory against zstd -d | tar -x; backup and restore
# of a running instance against pg_dump and pg_restore; the finalise of
# pgbench images of each size in SINDRI_BENCH_IMAGE_MB (MB, comma
# separated; default 1024,5120) with an anonymisation script, with and
# without the scrub, and the disk an image takes with and without its
# upload (medians of SINDRI_BENCH_FINALISE_SAMPLES, default 3); and the API
# against a real sindrid with pgbench images of those sizes, beside
# CREATE DATABASE ... TEMPLATE; a source's refresh in basebackup mode and
# in replica mode after 100 MB of new WAL, and a branch of a running
# instance, of a pgbench source at SINDRI_BENCH_SOURCE_SCALE (default 340
# here: about 5 GB). Then what idle clones cost (CPU and PSS of
# 100 clones with sindri's settings, probed as the supervisor probes or
# with a login, and with Postgres's defaults), each step of a clone
# (snapshot, settings, start, first login) beside 10, 250 and 1,000
# running clones without sindrid, and the density run: one
# host filled to 1,000 instances of a small image through the API, with
# create p50/p90/p99, list and get latencies, memory and idle CPU at each
# count in SINDRI_BENCH_DENSITY (default 10,100,250,500,750,1000), written
# as CSV and SVG into SINDRI_BENCH_OUT (default bench-out/);
# SINDRI_BENCH_SINDRID=path runs another sindrid binary, and
# SINDRI_BENCH_DENSITY_BEFORE=its density.csv sets it beside this run's.
# Last, the console's pages with 1,000 instances (over in-memory services
# and over a real metadata store), and an API request with and without the
# console's routes. The CreatePlacedElsewhere line (before the API run):
# in a fleet of two hosts, the median of a POST /instances placed on
# another host than the one asked, beside one built where it was asked.
bench: deps
	$(GO) test -p 1 -run '^$$' -bench 'Driver|Get|CloneDestroy' -benchtime 50x -count 10 ./pkg/storage/...
	$(GO) test -p 1 -run '^$$' -bench ExclusiveBytes -benchtime 3x -count 5 -timeout 60m ./pkg/storage/...
	$(GO) test -p 1 -run '^$$' -bench Replication -benchtime 5x -count 6 -timeout 60m ./pkg/storage/btrfs ./pkg/storage/zfs
	$(GO) test -run '^$$' -bench CloneToTLSLogin -benchtime 20x -count 6 ./pkg/postgres
	$(GO) test -run '^$$' -bench Extract -benchtime 3x -count 3 -timeout 60m ./pkg/ingest
	SINDRI_TEST_STORAGE=btrfs SINDRI_BENCH_REPLICATION_MB=$${SINDRI_BENCH_REPLICATION_MB:-5120} $(GO) test -run '^$$' -bench ImageReplication -benchtime 3x -timeout 90m ./pkg/engine
	SINDRI_TEST_STORAGE=btrfs $(GO) test -run '^$$' -bench BackupRestore -benchtime 3x -count 3 -timeout 60m ./pkg/engine
	SINDRI_TEST_STORAGE=btrfs $(GO) test -run '^$$' -bench FinaliseAnonymised -benchtime 1x -timeout 300m ./pkg/engine
	SINDRI_TEST_STORAGE=btrfs SINDRI_BENCH_SOURCE_SCALE=$${SINDRI_BENCH_SOURCE_SCALE:-340} $(GO) test -run '^$$' -bench SourceRefreshAndBranch -benchtime 3x -timeout 120m ./pkg/engine
	$(GO) test -run '^$$' -bench CreatePlacedElsewhere -benchtime 20x -count 3 -timeout 30m ./pkg/fleet
	$(GO) test -run '^$$' -bench API -benchtime 1x -timeout 90m ./spec
	$(GO) test -run '^$$' -bench 'IdleClones/(sindri|sindri\+probe|sindri\+login-probe|postgres-defaults)$$' -benchtime 1x -timeout 30m ./pkg/postgres
	$(GO) test -run '^$$' -bench CloneBesideRunning -benchtime 1x -timeout 60m ./pkg/postgres
	$(GO) test -run '^$$' -bench Density -benchtime 1x -timeout 150m ./spec
	$(GO) test -run '^$$' -bench . -benchtime 100x -count 6 ./pkg/console
	$(GO) test -run '^$$' -bench InstancesOverTheStore -benchtime 300x -count 6 ./pkg/api

# Builds and starts sindrid with the embedded defaults (a loopback BTRFS
# under DATA_PATH, /var/lib/sindri unless set).
run: deps build
	scripts/run-dev

clean:
	rm -rf $(BIN)

# Debian package bin/sindri_$(VERSION)_amd64.deb (packaging/nfpm.yaml):
# sindrid, sindri and sindri-upload-shell (the last two static, without
# cgo), the systemd unit, the example configuration and the scp upload
# set-up. nfpm is pinned and fetched through the Go module proxy.
VERSION ?= 0.1.0
NFPM ?= $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.44.0

.PHONY: deb
deb:
	GOOS=linux GOARCH=amd64 $(GO) build -o $(BIN)/sindrid ./cmd/sindrid
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -o $(BIN)/sindri ./cmd/sindri
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -o $(BIN)/sindri-upload-shell ./cmd/sindri-upload-shell
	VERSION=$(VERSION) $(NFPM) package --config packaging/nfpm.yaml --packager deb --target $(BIN)/sindri_$(VERSION)_amd64.deb

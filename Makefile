# The two commands a fresh Debian machine needs: `make test` and `make demo`.
# Both install what is missing (apt packages), build optimised, and run.

SWIFT ?= swift
APT_PACKAGES := pkg-config libopenblas-dev libzstd-dev libpng-dev zlib1g-dev libssl-dev zstd jq parallel
DEMO_PACKAGES := dataset-fashion-mnist gnuplot-nox jq
# Only for the optional data-parallel build (make build-mpi, make test-mpi).
MPI_PACKAGES := openmpi-bin libopenmpi-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps demo-deps mpi-deps build build-mpi test test-mpi demo clean

# Installs only what is missing, so a ready machine pays nothing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

demo-deps: deps
	@missing=""; for p in $(DEMO_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

mpi-deps: deps
	@missing=""; for p in $(MPI_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# The import check makes a library target that imports a layer it does not declare in
# Package.swift a build error (an upward import is one already: it closes a cycle).
build: deps
	$(SWIFT) build -c release --explicit-target-dependency-import-check error

# Tests run on the very build the tools ship with (optimised: numeric Swift is many times slower
# unoptimised), so `make test` then `make demo` builds once: the tests import only public and
# `package` API, and --disable-testable-imports keeps SwiftPM from adding -enable-testing, which
# would recompile every target with other flags. XCTest only, so the run ends on its summary line.
test: build
	$(SWIFT) test -c release --disable-testable-imports --disable-swift-testing

# The tools with OpenMPI linked into `train` and `rlstep` (mpirun -np K train|rlstep ...:
# data-parallel), in their own build folder; the default build above needs no MPI. test-mpi runs
# `mpirun -np 2` against them (TrainMPIToolTests, RLStepMPIToolTests).
build-mpi: mpi-deps
	DRL_MPI=1 $(SWIFT) build -c release --build-path .build-mpi --explicit-target-dependency-import-check error

test-mpi: build-mpi build
	DRL_MPI_TOOLS="$$(DRL_MPI=1 $(SWIFT) build -c release --build-path .build-mpi --show-bin-path)" \
	  $(SWIFT) test -c release --disable-testable-imports --disable-swift-testing --filter MPIToolTests

demo: demo-deps build
	PATH="$$($(SWIFT) build -c release --show-bin-path):$$PATH" bash pipelines/demo.sh

clean:
	rm -rf .build .build-mpi

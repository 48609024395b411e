# The two commands a fresh Debian machine needs: `make test` and `make demo`.
# Both install what is missing (apt packages), build optimised, and run.

SWIFT ?= swift
APT_PACKAGES := pkg-config libopenblas-dev libzstd-dev libpng-dev zlib1g-dev zstd
DEMO_PACKAGES := dataset-fashion-mnist gnuplot-nox jq
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps demo-deps build test demo clean

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

build: deps
	$(SWIFT) build -c release

# Tests run on an optimised build (numeric Swift is many times slower unoptimised), with
# XCTest only, so the run ends on XCTest's own summary line.
test: deps
	$(SWIFT) build -c release
	$(SWIFT) test -c release -Xswiftc -enable-testing --disable-swift-testing

demo: demo-deps build
	PATH="$$($(SWIFT) build -c release --show-bin-path):$$PATH" bash pipelines/demo.sh

clean:
	rm -rf .build

#!/usr/bin/env bash
# Placeholder replaced below by the real demo.
set -euo pipefail
echo "demo: not yet"

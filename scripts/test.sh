#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine, then runs them.
# System packages: Fashion-MNIST data, a PostgreSQL server (multi-worker tests) and
# Chromium (widget rendering tests). Without root they are skipped; the tests that
# need them then report "skipped" with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  pkgs=""
  [ -d /usr/share/datasets/fashion-mnist ] || pkgs="$pkgs dataset-fashion-mnist"
  [ -x /usr/bin/chromium ] || pkgs="$pkgs chromium"
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || pkgs="$pkgs postgresql"
  if [ -n "$pkgs" ]; then
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null; }; then
      # Under CI a missing PostgreSQL, Chromium or Fashion-MNIST fails the run (the tests
      # that need them also fail instead of skipping when CI=true); elsewhere they skip.
      if [ "${CI:-}" = "true" ]; then echo "error: could not install:$pkgs" >&2; exit 1; fi
      echo "warning: could not install:$pkgs (tests that need them will be skipped)"
    fi
  fi
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch==2.13.0 is the CPU build; the project itself only asks for torch>=2.4.
.venv/bin/pip install -q torch==2.13.0 -e ".[dev,nni]"
# With arguments: exactly those, in one process (`bash scripts/test.sh -m slow` runs the
# tests marked slow, `-m ""` everything).
if [ $# -gt 0 ]; then exec .venv/bin/python -m pytest -q "$@"; fi
# The default suite leaves out the tests marked slow: two pytest-xdist workers, one test
# file each at a time (a crashed worker ends the run at once: xdist's file scheduler can
# hang when it replaces one), then the Chromium tests in a process of their own.
.venv/bin/python -m pytest -q -n "${SLIMTUNE_TEST_WORKERS:-2}" --dist loadfile --max-worker-restart=0 \
  -m "not slow and not browser"
.venv/bin/python -m pytest -q -m "browser and not slow"

#!/usr/bin/env bash
# Installs what the tests need (if missing), starts the emulators on free ports, runs the whole
# test suite against them, stops them, and exits non-zero on any failure.
#
#   scripts/test.sh                 # everything: fmt, clippy, unit and end-to-end tests
#   scripts/test.sh -- crash        # extra arguments go to `cargo test` (a test name filter)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulators.sh

emulators_install
postgres_install
if ! command -v tmux >/dev/null; then
  echo "== installing tmux (the TUI is tested in a real terminal)" >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q tmux >&2 || { apt-get update -q >&2 && apt-get install -y -q tmux >&2; }
  else sudo apt-get install -y -q tmux >&2 || { sudo apt-get update -q >&2 && sudo apt-get install -y -q tmux >&2; }
  fi
fi
trap emulators_stop EXIT
emulators_start
postgres_start  # one cluster for the whole run; each test makes its own database in it

echo "== cargo fmt --check" >&2
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings" >&2
cargo clippy --all-targets --release -- -D warnings
echo "== cargo test" >&2
if [ "${1:-}" = "--" ]; then shift; fi
cargo test --release "$@"

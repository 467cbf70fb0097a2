#!/usr/bin/env bash
# Takes the README's screenshot from a real terminal: runs `blobway demo` (with a little chaos,
# so retries and the controller show) in tmux at 200×60, opens the job detail on the large
# object with the heat-map focused, captures the pane with its colours, and renders it to
# assets/tui-job-detail.png (pyte + Pillow from PyPI, in a venv under .tools/).
set -euo pipefail
cd "$(dirname "$0")/.."
tools="${BLOBWAY_TOOLS:-$PWD/.tools}"
if [ ! -x "$tools/shot-venv/bin/python" ]; then
  python3 -m venv "$tools/shot-venv"
  "$tools/shot-venv/bin/pip" install -q "pyte==0.8.2" "pillow==11.3.0"
fi
cargo build --release --quiet
work="$(mktemp -d)"
socket="blobway-shot-$$"
trap 'tmux -L "$socket" kill-server 2>/dev/null || true; rm -rf "$work"' EXIT
tmux -L "$socket" new-session -d -s main -x 200 -y 60 \
  "$PWD/target/release/blobway --state $work/state.redb demo --dir $work --bandwidth 12MiB --chaos 0.04; sleep 60"
sleep "${SHOT_DELAY:-12}"
tmux -L "$socket" send-keys -t main Enter
sleep 1
for _ in 1 2 3 4 5; do tmux -L "$socket" send-keys -t main j; sleep 0.2; done
tmux -L "$socket" send-keys -t main Tab
sleep 4
tmux -L "$socket" capture-pane -e -p -t main > "$work/capture.txt"
"$tools/shot-venv/bin/python" scripts/screenshot.py "$work/capture.txt" assets/tui-job-detail.png 200 60
echo "wrote assets/tui-job-detail.png"

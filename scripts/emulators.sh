#!/usr/bin/env bash
# Installs (if missing) and starts the emulators blobway's tests and benchmarks talk to, on free
# ports, and writes their coordinates to an env file. Meant to be sourced by test.sh/bench.sh:
#
#   source scripts/emulators.sh
#   emulators_install            # Azurite (npm, pinned), moto (PyPI, pinned, in a venv),
#                                # s3s-fs (crates.io, pinned; checks SigV4 signatures) and
#                                # gcp-storage-emulator (PyPI, pinned, in a venv) and
#                                # AzCopy (npm, pinned; its libsecret from Debian, unpacked)
#   emulators_start              # exports BLOBWAY_TEST_* and AWS_/AZURE_ variables
#   emulators_stop               # stops what emulators_start started
#   postgres_install             # PostgreSQL from Debian's packages, when missing
#   postgres_start               # one throwaway cluster (initdb in a temp dir, a free port,
#                                # password auth); exports BLOBWAY_TEST_POSTGRES
#   postgres_stop                # stops it (emulators_stop does too)
#
# Everything lands under $BLOBWAY_TOOLS (default: <repo>/.tools); nothing is installed globally
# except tmux through apt when it is missing.

AZURITE_VERSION=3.35.0
MOTO_VERSION=5.2.5
PROMETHEUS_CLIENT_VERSION=0.26.0
AZURE_STORAGE_EXTENSIONS_VERSION=0.1.0
S3S_FS_VERSION=0.14.1
GCS_EMULATOR_VERSION=2026.7.19
AZCOPY_VERSION=10.32.2

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${BLOBWAY_TOOLS:-$repo_root/.tools}"

log() { printf '[emulators] %s\n' "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_for_port() { # port, name, pid
  local port=$1 name=$2 pid=$3
  for _ in $(seq 1 150); do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited during start-up; its log follows"; cat "$EMULATORS_DIR/$name.log" >&2; return 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  log "$name did not open port $port within 30 s"; return 1
}

emulators_install() {
  mkdir -p "$tools"
  if [ ! -x "$tools/azurite/node_modules/.bin/azurite-blob" ] \
     || ! grep -q "\"version\": \"$AZURITE_VERSION\"" "$tools/azurite/node_modules/azurite/package.json" 2>/dev/null; then
    command -v npm >/dev/null || { log "npm is required to install Azurite"; return 1; }
    log "installing Azurite $AZURITE_VERSION from npm"
    npm install --prefix "$tools/azurite" "azurite@$AZURITE_VERSION" --no-audit --no-fund --loglevel=error >&2 || return 1
  fi
  if [ ! -x "$tools/moto-venv/bin/moto_server" ] \
     || ! "$tools/moto-venv/bin/python" -c "import moto,sys; sys.exit(moto.__version__!='$MOTO_VERSION')" 2>/dev/null; then
    log "installing moto $MOTO_VERSION from PyPI"
    python3 -m venv "$tools/moto-venv" || return 1
    "$tools/moto-venv/bin/pip" install -q "moto[server]==$MOTO_VERSION" >&2 || return 1
  fi
  moto_patch_list_parts || return 1
  # The metrics test parses /metrics with the Prometheus project's own Python parser.
  if ! "$tools/moto-venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('prometheus-client') != '$PROMETHEUS_CLIENT_VERSION')" 2>/dev/null; then
    log "installing prometheus-client $PROMETHEUS_CLIENT_VERSION from PyPI"
    "$tools/moto-venv/bin/pip" install -q "prometheus-client==$PROMETHEUS_CLIENT_VERSION" >&2 || return 1
  fi
  # The CRC test compares blobway's CRC-64 with Microsoft's own (its C extension).
  if ! "$tools/moto-venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('azure-storage-extensions') != '$AZURE_STORAGE_EXTENSIONS_VERSION')" 2>/dev/null; then
    log "installing azure-storage-extensions $AZURE_STORAGE_EXTENSIONS_VERSION from PyPI"
    "$tools/moto-venv/bin/pip" install -q "azure-storage-extensions==$AZURE_STORAGE_EXTENSIONS_VERSION" >&2 || return 1
  fi
  if [ ! -x "$tools/gcs-venv/bin/gcp-storage-emulator" ] \
     || ! "$tools/gcs-venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('gcp-storage-emulator') != '$GCS_EMULATOR_VERSION')" 2>/dev/null; then
    log "installing gcp-storage-emulator $GCS_EMULATOR_VERSION from PyPI"
    python3 -m venv "$tools/gcs-venv" || return 1
    "$tools/gcs-venv/bin/pip" install -q "gcp-storage-emulator==$GCS_EMULATOR_VERSION" >&2 || return 1
  fi
  azcopy_install || return 1
  if ! "$tools/s3s/bin/s3s-fs" --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
    log "installing s3s-fs $S3S_FS_VERSION from crates.io (a few minutes, once)"
    cargo install --quiet --root "$tools/s3s" "s3s-fs@$S3S_FS_VERSION" --features binary --locked >&2 || return 1
  fi
}

# AzCopy (npm), the real client that validates the copy-from-URL test double. Its binary links
# libsecret, which Debian ships apart: the package is downloaded (not installed) next to it and a
# wrapper puts it on the library path, so no root is needed.
azcopy_install() {
  local dir="$tools/azcopy"
  local bin="$dir/node_modules/@azure-tools/azcopy-linux/dist/bin/azcopy_linux_amd64"
  if [ ! -x "$bin" ] || ! grep -q "\"version\": \"$AZCOPY_VERSION\"" \
       "$dir/node_modules/@azure-tools/azcopy-linux/package.json" 2>/dev/null; then
    log "installing AzCopy $AZCOPY_VERSION from npm"
    mkdir -p "$dir"
    npm install --prefix "$dir" "@azure-tools/azcopy-linux@$AZCOPY_VERSION" --no-audit --no-fund \
      --loglevel=error >&2 || return 1
    chmod +x "$bin"
  fi
  if ! ldconfig -p 2>/dev/null | grep -q libsecret-1.so.0 \
     && ! ls "$dir"/libsecret/usr/lib/*/libsecret-1.so.0 >/dev/null 2>&1; then
    log "downloading libsecret-1-0 from Debian (for AzCopy)"
    mkdir -p "$dir/deb"
    (cd "$dir/deb" && { apt-get download libsecret-1-0 >&2 || { apt-get update -q >&2 && apt-get download libsecret-1-0 >&2; }; }) || return 1
    dpkg-deb -x "$dir"/deb/libsecret-1-0_*.deb "$dir/libsecret" || return 1
  fi
  cat > "$dir/azcopy" <<EOF2
#!/bin/sh
export LD_LIBRARY_PATH="\$(echo "$dir"/libsecret/usr/lib/*/ | tr ' ' ':')\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$bin" "\$@"
EOF2
  chmod +x "$dir/azcopy"
}

# moto 5.2 serializes ListParts under the root element <ListPartsResponse>; S3 (and every SDK
# that checks the root, aws-sdk-s3 among them) uses <ListPartsResult>. Its generic serializer
# takes the root from the "resultWrapper" entries of service-2.moto-extras.json.gz, which lists
# none for ListParts: add it (idempotent). Without this, any S3 client in Rust fails every
# ListParts against moto with "invalid XML root".
moto_patch_list_parts() {
  "$tools/moto-venv/bin/python" - <<'PY' >&2
import glob, gzip, json, os, moto
path = os.path.join(os.path.dirname(moto.__file__), "s3", "2006-03-01", "service-2.moto-extras.json.gz")
with gzip.open(path, "rt") as f:
    extras = json.load(f)
ops = extras.setdefault("merge", {}).setdefault("operations", {})
if ops.get("ListParts", {}).get("output", {}).get("resultWrapper") != "ListPartsResult":
    ops["ListParts"] = {"output": {"resultWrapper": "ListPartsResult"}}
    with gzip.open(path, "wt") as f:
        json.dump(extras, f)
    print("[emulators] patched moto: ListParts answers <ListPartsResult>")
PY
}

emulators_start() {
  mkdir -p "$tools/run"
  # Each start gets its own folder (data and logs), so concurrent runs never share state.
  EMULATORS_DIR="$(mktemp -d "$tools/run/XXXXXX")"
  local data="$EMULATORS_DIR/azurite-data"
  mkdir -p "$data"
  AZURITE_PORT=$(free_port)
  local storage=(--location "$data")
  # Benchmarks keep Azurite's data in memory: disk speed is not what they measure.
  if [ -n "${AZURITE_IN_MEMORY:-}" ]; then storage=(--inMemoryPersistence); fi
  "$tools/azurite/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$AZURITE_PORT" \
    "${storage[@]}" --skipApiVersionCheck --loose --disableTelemetry --silent \
    >"$EMULATORS_DIR/azurite.log" 2>&1 &
  AZURITE_PID=$!
  MOTO_PORT=$(free_port)
  "$tools/moto-venv/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >"$EMULATORS_DIR/moto.log" 2>&1 &
  MOTO_PID=$!
  S3S_PORT=$(free_port)
  mkdir -p "$EMULATORS_DIR/s3s-data"
  "$tools/s3s/bin/s3s-fs" --host 127.0.0.1 --port "$S3S_PORT" --access-key blobway-test \
    --secret-key blobway-test-secret "$EMULATORS_DIR/s3s-data" >"$EMULATORS_DIR/s3s.log" 2>&1 &
  S3S_PID=$!
  GCS_PORT=$(free_port)
  "$tools/gcs-venv/bin/gcp-storage-emulator" start --host 127.0.0.1 --port "$GCS_PORT" --in-memory \
    >"$EMULATORS_DIR/gcs.log" 2>&1 &
  GCS_PID=$!
  wait_for_port "$AZURITE_PORT" azurite "$AZURITE_PID" || return 1
  wait_for_port "$MOTO_PORT" moto "$MOTO_PID" || return 1
  wait_for_port "$S3S_PORT" s3s "$S3S_PID" || return 1
  wait_for_port "$GCS_PORT" gcs "$GCS_PID" || return 1
  export BLOBWAY_TEST_GCS="http://127.0.0.1:$GCS_PORT"
  export BLOBWAY_TEST_S3S="http://127.0.0.1:$S3S_PORT"
  export BLOBWAY_TEST_S3S_DATA="$EMULATORS_DIR/s3s-data"
  export BLOBWAY_TEST_AZURITE="http://127.0.0.1:$AZURITE_PORT/devstoreaccount1"
  export BLOBWAY_TEST_S3="http://127.0.0.1:$MOTO_PORT"
  export BLOBWAY_TEST_PYTHON="$tools/moto-venv/bin/python"
  export BLOBWAY_TEST_AZCOPY="$tools/azcopy/azcopy"
  log "Azurite on $BLOBWAY_TEST_AZURITE, moto on $BLOBWAY_TEST_S3, s3s-fs on $BLOBWAY_TEST_S3S, GCS on $BLOBWAY_TEST_GCS"
}

# Restarts Azurite on the same port with empty storage (benchmarks give every run a fresh one:
# in memory, Azurite frees deleted data only when its collector comes round).
azurite_restart() {
  kill "$AZURITE_PID" 2>/dev/null || true
  wait "$AZURITE_PID" 2>/dev/null || true
  local storage=(--location "$EMULATORS_DIR/azurite-data")
  if [ -n "${AZURITE_IN_MEMORY:-}" ]; then storage=(--inMemoryPersistence); fi
  "$tools/azurite/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$AZURITE_PORT" \
    "${storage[@]}" --skipApiVersionCheck --loose --disableTelemetry --silent \
    >>"$EMULATORS_DIR/azurite.log" 2>&1 &
  AZURITE_PID=$!
  wait_for_port "$AZURITE_PORT" azurite "$AZURITE_PID"
}

# The PostgreSQL binaries of Debian's package (any major version), or nothing.
postgres_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
  done
  return 1
}

postgres_install() {
  postgres_bin >/dev/null && return 0
  log "installing PostgreSQL from Debian's packages"
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo=sudo; fi
  $sudo apt-get install -y -q postgresql >&2 \
    || { $sudo apt-get update -q >&2 && $sudo apt-get install -y -q postgresql >&2; } || return 1
  postgres_bin >/dev/null || { log "PostgreSQL installed, but no initdb under /usr/lib/postgresql"; return 1; }
}

# One cluster per run, in its own temporary folder on a free port, listening on loopback only,
# with password authentication (so a wrong password is refused as a real server refuses it).
# PostgreSQL refuses to run as root: as root, the cluster belongs to the postgres user.
postgres_start() {
  local bin dir port password as=()
  bin="$(postgres_bin)" || { log "PostgreSQL is not installed (postgres_install)"; return 1; }
  dir="$(mktemp -d "${TMPDIR:-/tmp}/blobway-pg.XXXXXX")"
  port=$(free_port)
  password="blobway-test-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  printf '%s\n' "$password" > "$dir/password"
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres: "$dir"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$bin/initdb" -D "$dir/data" -U blobway --pwfile="$dir/password" \
    -A scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
    || { log "initdb failed; its log follows"; cat "$dir/initdb.log" >&2; return 1; }
  "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >&2 \
    || { log "PostgreSQL did not start; its log follows"; cat "$dir/postgres.log" >&2; return 1; }
  POSTGRES_DIR="$dir"
  POSTGRES_AS=("${as[@]}")
  POSTGRES_CTL="$bin/pg_ctl"
  export BLOBWAY_TEST_POSTGRES="postgres://blobway:$password@127.0.0.1:$port/postgres"
  log "PostgreSQL on 127.0.0.1:$port (user blobway, data in $dir)"
}

postgres_stop() {
  if [ -n "${POSTGRES_DIR:-}" ]; then
    "${POSTGRES_AS[@]}" "$POSTGRES_CTL" -D "$POSTGRES_DIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$POSTGRES_DIR"
    POSTGRES_DIR=""
  fi
}

emulators_stop() {
  postgres_stop
  for pid in ${AZURITE_PID:-} ${MOTO_PID:-} ${S3S_PID:-} ${GCS_PID:-}; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true  # a server stopped by SIGTERM reports 143; that is expected
  done
  if [ -n "${EMULATORS_DIR:-}" ]; then
    if [ -n "${BLOBWAY_KEEP_EMULATOR_DATA:-}" ]; then
      log "emulator data and logs kept in $EMULATORS_DIR"
    else
      rm -rf "$EMULATORS_DIR"
    fi
  fi
}

#!/usr/bin/env bash
# Side-by-side benchmark of blobway and rclone, on the same emulators, in one run: s3s-fs (an
# S3 server fast at ranged GETs) as the source, Azurite (in memory) as the destination.
#
#   scripts/bench.sh                      # 3 pairs of every scenario, table to stdout
#   BENCH_PAIRS=5 scripts/bench.sh        # more pairs
#   BENCH_SCENARIOS="a b" scripts/bench.sh
#   BENCH_RESULTS=benches/RESULTS.md scripts/bench.sh   # also write the results file
#
# Scenarios: (a) one 1 GiB random object, (b) 1,000 objects of 64 KiB, (c) one 4 GiB object
# with blobway's --max-memory 256MiB — S3 (s3s-fs) → Azurite; (e) 200,000 local files of 1–6
# bytes → a local folder (blobway, rclone); (f) 10,000 local files of 64 KiB → Azurite
# (blobway, rclone, AzCopy); (g) S3 → S3 on one endpoint (moto), 512 MiB in one object and 64
# objects of 1 MiB, blobway --transfer server against --transfer client, counting at a proxy
# the bytes that pass through blobway; (d), the engine alone on 1,000,000 synthetic objects
# (`cargo bench --bench scale`, its own table); and (h), the adaptive controller against link
# models and over a real socket to Azurite through a shaping proxy, swept at fixed limits
# (`cargo bench --bench controller`, its own tables; about 20 minutes); and (k), a fleet of one
# and of three `blobway serve` workers on one PostgreSQL state, each behind its own capped link
# (`cargo bench --bench fleet`, its own table; about 2 minutes). Runs alternate tools so drift hits every tool
# alike. Every copy is verified (MD5 at Azurite; file by file for local folders). Installs what
# it needs: rclone (Debian), Azurite (npm), s3s-fs (crates.io), AzCopy (npm) for (f).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/emulators.sh

pairs="${BENCH_PAIRS:-3}"
scenarios="${BENCH_SCENARIOS:-a b c d e f g h k}"
rclone_best=(--transfers 16 --azureblob-chunk-size 16M --azureblob-upload-concurrency 16 --s3-chunk-size 64M)

emulators_install
if ! command -v rclone >/dev/null; then
  log "installing rclone from Debian"
  apt-get install -y -q rclone >&2 || { apt-get update -q >&2 && apt-get install -y -q rclone >&2; }
fi
cargo build --release --quiet
blobway="$PWD/target/release/blobway"
azcopy=""
if [[ " $scenarios " == *" f "* ]]; then
  if [ ! -x "$tools/azcopy/node_modules/@azure-tools/azcopy-linux/dist/bin/azcopy_linux_amd64" ]; then
    log "installing AzCopy 10.32.2 from npm"
    mkdir -p "$tools/azcopy"
    (cd "$tools/azcopy" && npm install --silent --no-audit --no-fund @azure-tools/azcopy-linux@10.32.2 >&2)
    dpkg -s libsecret-1-0 >/dev/null 2>&1 || apt-get install -y -q libsecret-1-0 >&2 \
      || { apt-get update -q >&2 && apt-get install -y -q libsecret-1-0 >&2; }
  fi
  azcopy="$tools/azcopy/node_modules/@azure-tools/azcopy-linux/dist/bin/azcopy_linux_amd64"
  chmod +x "$azcopy"
fi

export AZURITE_IN_MEMORY=1
work="$(mktemp -d)"
trap 'emulators_stop; rm -rf "$work"' EXIT
emulators_start

account=devstoreaccount1
key='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
# An account SAS for rclone and curl (rclone reaches Azurite only through sas_url).
sas="$(python3 - "$account" "$key" <<'PY'
import base64, datetime, hashlib, hmac, sys, urllib.parse
account, key = sys.argv[1], sys.argv[2]
now = datetime.datetime.now(datetime.timezone.utc)
fmt = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")
st, se = fmt(now - datetime.timedelta(minutes=5)), fmt(now + datetime.timedelta(days=1))
sts = "\n".join([account, "rwdlac", "b", "sco", st, se, "", "https,http", "2022-11-02", "", ""])
sig = base64.b64encode(hmac.new(base64.b64decode(key), sts.encode(), hashlib.sha256).digest()).decode()
print(f"sv=2022-11-02&ss=b&srt=sco&sp=rwdlac&st={st}&se={se}&spr=https,http&sig={urllib.parse.quote(sig, safe='')}")
PY
)"
cat > "$work/rclone.conf" <<EOF
[s3]
type = s3
provider = Other
access_key_id = blobway-test
secret_access_key = blobway-test-secret
endpoint = $BLOBWAY_TEST_S3S
force_path_style = true

[moto]
type = s3
provider = Other
access_key_id = blobway-test
secret_access_key = blobway-test-secret
endpoint = $BLOBWAY_TEST_S3
force_path_style = true

[az]
type = azureblob
sas_url = $BLOBWAY_TEST_AZURITE?$sas
EOF
rcl() { env -u AWS_CA_BUNDLE rclone --config "$work/rclone.conf" "$@"; }

# ---- data: written locally, uploaded through S3 so s3s-fs records the ETags ---------------
declare -A gib=([a]=1 [b]=0.0610 [c]=4)
make_data() {
  local s=$1 dir="$work/data/$1"
  mkdir -p "$dir"
  case $s in
    a) head -c $((1 << 30)) /dev/urandom > "$dir/one-gib.bin" ;;
    b) for i in $(seq -w 1 1000); do head -c 65536 /dev/urandom > "$dir/small-$i.bin"; done ;;
    c) head -c $((4 << 30)) /dev/urandom > "$dir/four-gib.bin" ;;
  esac
  (cd "$dir" && md5sum * | sort -k2) > "$work/expected-$s"
  rcl mkdir "s3:bench-$s"
  rcl copy "$dir" "s3:bench-$s" --transfers 16 --s3-chunk-size 64M
  rm -rf "$dir"
}
# (e) and (f): local files, made once.
make_local() { # scenario
  local dir="$work/data/$1"
  mkdir -p "$dir"
  case $1 in
    e) python3 - "$dir" <<'PY'
import os, sys
root = sys.argv[1]
for i in range(200_000):
    d = os.path.join(root, f"d{i % 200:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"object-{i:07d}.txt"), "wb") as f:
        f.write(bytes([65 + i % 26]) * (1 + i % 6))
PY
    ;;
    f) for i in $(seq -w 1 10000); do head -c 65536 /dev/urandom > "$dir/small-$i.bin"; done
       (cd "$dir" && md5sum * | sort -k2) > "$work/expected-f" ;;
    g) head -c $((512 << 20)) /dev/urandom > "$dir/half-gib.bin"
       for i in $(seq -w 1 64); do head -c $((1 << 20)) /dev/urandom > "$dir/mib-$i.bin"; done
       rcl mkdir moto:bench-g
       rcl copy "$dir" moto:bench-g --transfers 8 --s3-chunk-size 64M
       rm -rf "$dir" ;;
  esac
}
# (g): a TCP proxy that counts the bytes passing from the store to blobway.
cat > "$work/count_proxy.py" <<'PY'
import asyncio, signal, sys
listen, upstream, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
host, port = upstream.rsplit(":", 1)
down = 0
async def pipe(reader, writer, count):
    global down
    try:
        while data := await reader.read(1 << 16):
            if count:
                down += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()
async def handle(client_reader, client_writer):
    up_reader, up_writer = await asyncio.open_connection(host, int(port))
    await asyncio.gather(pipe(client_reader, up_writer, False), pipe(up_reader, client_writer, True))
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()
    open(out, "w").write(str(down))
asyncio.run(main())
PY
measure_g() { # mode run
  local mode=$1 run=$2 port=$((20000 + RANDOM % 20000))
  local moto_hostport="${BLOBWAY_TEST_S3#http://}"
  python3 "$work/count_proxy.py" "$port" "$moto_hostport" "$work/down" & local proxy=$!
  sleep 0.5
  local via="http://127.0.0.1:$port"
  /usr/bin/time -f "%e %U %S %M" -o "$work/time" env AWS_ACCESS_KEY_ID=blobway-test \
    AWS_SECRET_ACCESS_KEY=blobway-test-secret AWS_REGION=us-east-1 "$blobway" --no-daemon \
    --state "$work/state-g-$run.redb" copy s3://bench-g/ "s3://g-$mode-$run/" \
    --source-endpoint "$via" --dest-endpoint "$via" --transfer "$mode" >"$work/out" 2>&1 || {
    kill "$proxy"; log "blobway --transfer $mode failed on scenario g"; tail -20 "$work/out" >&2; return 1; }
  kill "$proxy"; wait "$proxy" || true
  env AWS_ACCESS_KEY_ID=blobway-test AWS_SECRET_ACCESS_KEY=blobway-test-secret AWS_REGION=us-east-1 \
    "$blobway" --no-daemon --state "$work/check-g.redb" check s3://bench-g/ "s3://g-$mode-$run/" \
    --source-endpoint "$BLOBWAY_TEST_S3" --dest-endpoint "$BLOBWAY_TEST_S3" --download >"$work/check" 2>&1 || {
    log "VERIFY FAILED for g-$mode-$run"; tail -5 "$work/check" >&2; return 1; }
  read -r wall user sys rss < "$work/time"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' g "blobway-$mode" "$wall" "$(echo "$user + $sys" | bc)" "$rss" \
    "$(cat "$work/down")" >> "$results"
  log "g blobway --transfer $mode: ${wall}s wall, $(echo "$user + $sys" | bc)s CPU, $(($(cat "$work/down") / 1024)) KiB through blobway"
}
for s in $scenarios; do
  log "preparing scenario $s"
  case $s in
    a|b|c) make_data "$s" ;;
    e|f|g) make_local "$s" ;;
  esac
done

verify() { # scenario container
  local s=$1 c=$2
  cut -d' ' -f3 "$work/expected-$s" | xargs -P 8 -I{} sh -c \
    "printf '%s  %s\n' \"\$(curl -sf '$BLOBWAY_TEST_AZURITE/$c/{}?$sas' | md5sum | cut -d' ' -f1)\" '{}'" \
    | sort -k2 > "$work/got"
  if ! cmp -s "$work/got" "$work/expected-$s"; then
    log "VERIFY FAILED for $c"; diff "$work/got" "$work/expected-$s" | head >&2; return 1
  fi
}

results="$work/results.tsv"
: > "$results"
# Local → local: every file arrived with its bytes (blobway's staging folder aside).
verify_local() { # destination
  if ! diff -rq --exclude=.blobway-staging "$work/data/e" "$1" >"$work/diff" 2>&1; then
    log "VERIFY FAILED for $1"; head "$work/diff" >&2; return 1
  fi
}
# Each run writes a fresh folder, and every folder is removed only after the last run: a
# file system without a journal skips, at every new file, the inodes freed in the last minutes
# (ext4's `recently_deleted`), so removing 200,000 files just before a run slows that run
# (measured: rclone 16 s on a fresh disk, 59 s just after an `rm -rf` of the same tree).
measure_local() { # tool destination command...
  local tool=$1 dst=$2; shift 2
  sync
  /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$@" >"$work/out" 2>&1 || {
    log "$tool failed on scenario e"; tail -20 "$work/out" >&2; return 1; }
  verify_local "$dst"
  read -r wall user sys rss < "$work/time"
  printf '%s\t%s\t%s\t%s\t%s\n' e "$tool" "$wall" "$(echo "$user + $sys" | bc)" "$rss" >> "$results"
  log "e $tool: ${wall}s wall, $(echo "$user + $sys" | bc)s CPU, $((rss / 1024)) MiB peak RSS"
}
measure() { # scenario tool container command...
  local s=$1 tool=$2 c=$3; shift 3
  azurite_restart
  /usr/bin/time -f "%e %U %S %M" -o "$work/time" "$@" >"$work/out" 2>&1 || {
    log "$tool failed on scenario $s"; tail -20 "$work/out" >&2; return 1; }
  verify "$s" "$c"
  read -r wall user sys rss < "$work/time"
  printf '%s\t%s\t%s\t%s\t%s\n' "$s" "$tool" "$wall" "$(echo "$user + $sys" | bc)" "$rss" >> "$results"
  log "$s $tool: ${wall}s wall, $(echo "$user + $sys" | bc)s CPU, $((rss / 1024)) MiB peak RSS"
}

run=0
for pair in $(seq 1 "$pairs"); do
  for s in $scenarios; do
    run=$((run + 1))
    case $s in
      d|h|k) continue ;;
      e)
        measure_local blobway "$work/out-e-$run-b" "$blobway" --no-daemon \
          --state "$work/state-$run.redb" copy "$work/data/e/" "$work/out-e-$run-b/"
        measure_local rclone-best "$work/out-e-$run-r" rclone copy "$work/data/e" \
          "$work/out-e-$run-r" --transfers 16 --checkers 16
        continue ;;
      g)
        measure_g server "$run"
        measure_g client "$run"
        continue ;;
      f)
        local_blob=(env AZURE_STORAGE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=$account;AccountKey=$key;BlobEndpoint=$BLOBWAY_TEST_AZURITE")
        measure f blobway "bw$run" "${local_blob[@]}" "$blobway" --no-daemon \
          --state "$work/state-$run.redb" copy "$work/data/f/" "az://bw$run/"
        measure f rclone-best "rb$run" env -u AWS_CA_BUNDLE rclone --config "$work/rclone.conf" \
          copy "$work/data/f" "az:rb$run" "${rclone_best[@]}"
        measure f azcopy "ac$run" sh -c "curl -sf -X PUT '$BLOBWAY_TEST_AZURITE/ac$run?restype=container&$sas' >/dev/null && \
          AZCOPY_LOG_LOCATION='$work/azlog' AZCOPY_JOB_PLAN_LOCATION='$work/azplan' \
          '$azcopy' copy '$work/data/f/*' '$BLOBWAY_TEST_AZURITE/ac$run?$sas' --from-to LocalBlob"
        continue ;;
    esac
    memory=()
    [ "$s" = c ] && memory=(--max-memory 256MiB)
    measure "$s" blobway "bw$run" env AWS_ENDPOINT_URL="$BLOBWAY_TEST_S3S" AWS_ACCESS_KEY_ID=blobway-test \
      AWS_SECRET_ACCESS_KEY=blobway-test-secret \
      AZURE_STORAGE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=$account;AccountKey=$key;BlobEndpoint=$BLOBWAY_TEST_AZURITE" \
      "$blobway" --state "$work/state-$run.redb" copy "s3://bench-$s/" "az://bw$run/" "${memory[@]}"
    measure "$s" rclone-best "rb$run" env -u AWS_CA_BUNDLE rclone --config "$work/rclone.conf" \
      copy "s3:bench-$s" "az:rb$run" "${rclone_best[@]}"
    measure "$s" rclone-defaults "rd$run" env -u AWS_CA_BUNDLE rclone --config "$work/rclone.conf" \
      copy "s3:bench-$s" "az:rd$run"
  done
done

machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
table="$(python3 - "$results" "$pairs" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
gib = {"a": 1.0, "b": 1000 * 65536 / 2**30, "c": 4.0, "e": 200_000 * 3.5 / 2**30, "f": 10_000 * 65536 / 2**30}
names = {"a": "(a) 1 GiB object", "b": "(b) 1,000 × 64 KiB", "c": "(c) 4 GiB, --max-memory 256MiB",
         "e": "(e) 200,000 local files → local", "f": "(f) 10,000 × 64 KiB local → Azurite"}
out = ["| scenario | tool | wall s median (min–max) | CPU s per GiB | peak RSS MiB |", "|---|---|---|---|---|"]
summary = {}
for s in "abcef":
    for tool in ("blobway", "rclone-best", "rclone-defaults", "azcopy"):
        runs = [r for r in rows if r[0] == s and r[1] == tool]
        if not runs:
            continue
        walls = [float(r[2]) for r in runs]
        cpu = statistics.median(float(r[3]) for r in runs) / gib[s]
        rss = max(int(r[4]) for r in runs) / 1024
        summary[(s, tool)] = (statistics.median(walls), cpu, rss)
        out.append(f"| {names[s]} | {tool} | {statistics.median(walls):.2f} ({min(walls):.2f}–{max(walls):.2f}) | {cpu:.2f} | {rss:.0f} |")
g_gib = (512 + 64) / 1024
g_runs = {m: [r for r in rows if r[0] == "g" and r[1] == f"blobway-{m}"] for m in ("server", "client")}
if any(g_runs.values()):
    out += ["", "| (g) S3 → S3 on moto, 576 MiB | wall s median (min–max) | CPU s per GiB | MiB through blobway | peak RSS MiB |", "|---|---|---|---|---|"]
    for mode, runs in g_runs.items():
        if not runs:
            continue
        walls = [float(r[2]) for r in runs]
        cpu = statistics.median(float(r[3]) for r in runs) / g_gib
        down = statistics.median(int(r[5]) for r in runs) / 2**20
        rss = max(int(r[4]) for r in runs) / 1024
        out.append(f"| blobway --transfer {mode} | {statistics.median(walls):.2f} ({min(walls):.2f}–{max(walls):.2f}) | {cpu:.2f} | {down:.2f} | {rss:.0f} |")
out += ["", "| target | measured | met |", "|---|---|---|"]
def ratio(s, i):
    return summary[(s, "blobway")][i] / summary[(s, "rclone-best")][i]
if ("a", "blobway") in summary:
    r = ratio("a", 0); out.append(f"| (a) wall ≤ 0.9 × rclone-best | {r:.2f} × | {'yes' if r <= 0.9 else 'no'} |")
    r = summary[("a", "blobway")][1] / summary[("a", "rclone-best")][1]
    out.append(f"| (a) CPU per GiB ≤ 0.5 × rclone's | {r:.2f} × | {'yes' if r <= 0.5 else 'no'} |")
if ("b", "blobway") in summary:
    r = ratio("b", 0); out.append(f"| (b) wall ≤ 0.8 × rclone-best | {r:.2f} × | {'yes' if r <= 0.8 else 'no'} |")
if ("e", "blobway") in summary:
    r = ratio("e", 0); out.append(f"| (e) wall ≤ 1.0 × rclone | {r:.2f} × | {'yes' if r <= 1.0 else 'no'} |")
if ("f", "blobway") in summary:
    r = ratio("f", 0); out.append(f"| (f) wall ≤ 0.8 × rclone | {r:.2f} × | {'yes' if r <= 0.8 else 'no'} |")
    if ("f", "azcopy") in summary:
        r = summary[("f", "blobway")][0] / summary[("f", "azcopy")][0]
        out.append(f"| (f) wall ≤ 1.0 × AzCopy | {r:.2f} × | {'yes' if r <= 1.0 else 'no'} |")
if ("c", "blobway") in summary:
    rss = summary[("c", "blobway")][2]; out.append(f"| (c) peak RSS ≤ 320 MiB, byte-identical | {rss:.0f} MiB, verified | {'yes' if rss <= 320 else 'no'} |")
print("\n".join(out))
PY
)"
scale=""
if [[ " $scenarios " == *" d "* ]]; then
  log "scenario d: the engine alone on 1,000,000 synthetic objects"
  scale="$(BENCH_OBJECTS=1000000 cargo bench --quiet --bench scale 2>/dev/null | grep '^|')"
fi
controller=""
if [[ " $scenarios " == *" h "* ]]; then
  log "scenario h: the controller against link models and a real socket"
  controller="$(cargo bench --quiet --bench controller 2>/dev/null)"
fi
fleet=""
if [[ " $scenarios " == *" k "* ]]; then
  log "scenario k: a fleet of workers on one PostgreSQL state"
  postgres_start
  fleet="$(cargo bench --quiet --bench fleet 2>/dev/null)"
fi
echo
echo "Benchmark $(date -u +%Y-%m-%d), $machine, $pairs pairs"
echo
echo "$table"
[ -n "$scale" ] && { echo; echo "(d) the engine alone (cargo bench --bench scale):"; echo; echo "$scale"; }
[ -n "$controller" ] && { echo; echo "(h) the controller (cargo bench --bench controller):"; echo; echo "$controller"; }
[ -n "$fleet" ] && { echo; echo "(k) a fleet of workers (cargo bench --bench fleet):"; echo; echo "$fleet"; }
if [ -n "${BENCH_RESULTS:-}" ]; then
  {
    echo "# Benchmark results"
    echo
    echo "Produced by \`scripts/bench.sh\` on $(date -u +%Y-%m-%d): $machine. Source s3s-fs 0.14.1,"
    echo "destination Azurite 3.35.0 (in memory), rclone $(rclone version | head -1 | awk '{print $2}'),"
    echo "$pairs pairs, runs alternating blobway / rclone-best / rclone-defaults. rclone-best flags:"
    echo "\`${rclone_best[*]}\`. Every copy verified by MD5 at the destination."
    echo
    echo "$table"
    if [ -n "$scale" ]; then
      echo
      echo "## (d) The engine alone on 1,000,000 synthetic objects (\`cargo bench --bench scale\`)"
      echo
      echo "$scale"
    fi
  } > "$BENCH_RESULTS"
  log "wrote $BENCH_RESULTS"
fi

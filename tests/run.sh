#!/usr/bin/env bash
# Runs every medlake test, installing what the tests need. This is the README's test command
# and what CI runs (.ci/run). It fails, never skips, when something a test needs is missing.
#
#   tests/run.sh
#
# Environment: CARGO_TARGET_DIR (default ~/.cache/medlake-target, shared across clones so
# builds are reused), MEDLAKE_VENV (default ~/.cache/medlake-venv, the Python test tools),
# MEDLAKE_NPM (default ~/.cache/medlake-npm, Azurite from npm), MEDLAKE_TOOLS (default
# ~/.cache/medlake-tools, cargo-deny, cargo-audit and cargo-fuzz; see tests/supply-chain.sh for
# MEDLAKE_ADVISORY_DB and MEDLAKE_REQUIRE_ADVISORIES, tests/fuzz.sh for MEDLAKE_FUZZ_SECONDS).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/medlake-target}"
VENV="${MEDLAKE_VENV:-$HOME/.cache/medlake-venv}"
NPM="${MEDLAKE_NPM:-$HOME/.cache/medlake-npm}"
AZURITE_VERSION=3.35.0
started=$SECONDS
step() { printf '\n== %s (%ds)\n' "$*" "$((SECONDS - started))"; }

step "disk: the build needs ~25 GiB free under $CARGO_TARGET_DIR"
# CI builds from scratch once and never edits, so incremental compilation only costs disk
# (~13 GiB for the workspace); a full disk shows up as a linker "Bus error", not as a clear one.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
mkdir -p "$CARGO_TARGET_DIR"
free_gib() { df -Pk "$CARGO_TARGET_DIR" | awk 'NR==2 {print int($4 / 1048576)}'; }
if [ "$(free_gib)" -lt 25 ]; then
  echo "only $(free_gib) GiB free: removing $CARGO_TARGET_DIR/debug/incremental (rebuilt when needed)"
  rm -rf "$CARGO_TARGET_DIR/debug/incremental"
fi
if [ "$(free_gib)" -lt 25 ]; then
  echo "only $(free_gib) GiB free: removing $CARGO_TARGET_DIR/debug (a cold build follows)"
  rm -rf "$CARGO_TARGET_DIR/debug"
fi
echo "$(free_gib) GiB free"

step "toolchain components"
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

step "Debian packages: psql (postgresql-client), pgjdbc (libpostgresql-jdbc-java), Java (pgjdbc, the medallion benchmark's PySpark), PostgreSQL 15 (the ingest benchmark's peer), Chromium and its WebDriver (the console's browser test)"
need=()
command -v psql >/dev/null || need+=(postgresql-client)
[ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15)
[ -f /usr/share/java/postgresql.jar ] || need+=(libpostgresql-jdbc-java)
command -v java >/dev/null || need+=(default-jre-headless)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ "${#need[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${need[@]}" || { apt-get update -q && apt-get install -y -q "${need[@]}"; }
fi

step "python test tools into $VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/interop/requirements.txt \
    -r tests/console/requirements.txt

step "Azurite $AZURITE_VERSION (npm) into $NPM"
mkdir -p "$NPM"
if [ "$("$NPM/node_modules/.bin/azurite-blob" --version 2>/dev/null)" != "$AZURITE_VERSION" ]; then
  npm install --prefix "$NPM" --no-audit --no-fund --silent "azurite@$AZURITE_VERSION"
fi
export AZURITE_BLOB="$NPM/node_modules/.bin/azurite-blob"

COSMOSDB_SERVER_VERSION=0.13.4
step "@zeit/cosmosdb-server $COSMOSDB_SERVER_VERSION (npm) into $NPM, for the Cosmos DB test server tests/cosmos/server.js"
if [ "$(node -p "require(process.argv[1]).version" "$NPM/node_modules/@zeit/cosmosdb-server/package.json" 2>/dev/null)" \
     != "$COSMOSDB_SERVER_VERSION" ]; then
  npm install --prefix "$NPM" --no-audit --no-fund --silent "@zeit/cosmosdb-server@$COSMOSDB_SERVER_VERSION"
fi
export MEDLAKE_NPM="$NPM" NODE_PATH="$NPM/node_modules${NODE_PATH:+:$NODE_PATH}"
export COSMOS_SERVER_JS="$PWD/tests/cosmos/server.js"

step "cargo fmt --check"
cargo fmt --all --check

step "supply chain: cargo deny (licenses, bans, sources; advisories and cargo audit when the RustSec database can be had, else a loud SKIPPED), tools into ${MEDLAKE_TOOLS:-~/.cache/medlake-tools}"
tests/supply-chain.sh

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "fuzz: the light targets (HL7 messages and MLLP framing, FHIRPath, ViewDefinitions, DICOM headers) built with cargo-fuzz into \$CARGO_TARGET_DIR/fuzz-light and run 60 s each from their seeds; a crash, hang or memory blow-up fails (fuzz/README.md; the heavy targets of fuzz/ are not run in CI)"
tests/fuzz.sh

step "cargo test (unit, sqllogictest, integration)"
cargo test --workspace --locked

step "sqllogictest through a Ballista cluster: a scheduler and two executors on loopback (mutual TLS); every .slt file must answer as the embedded engine does"
MEDLAKE_SLT_CLUSTER=1 cargo test --workspace --locked --test sqllogictest

step "interop: Delta (deltalake Python package); az:// and s3:// warehouses (Azurite, moto); Postgres wire (psql, psycopg, pgjdbc); Flight SQL (ADBC, pyarrow.flight)"
MEDLAKE_BIN="$CARGO_TARGET_DIR/debug/medlake" "$VENV/bin/pytest" -q tests/interop
MEDLAKE_BIN="$CARGO_TARGET_DIR/debug/medlake" "$VENV/bin/pytest" -q tests/security

step "chaos: 10 random SIGKILLs of medlake serve under HTTP and Flight ingest, refreshes, MERGE/DELETE, OPTIMIZE and VACUUM, checked after each restart (the 100-kill run: tests/README.md)"
MEDLAKE_BIN="$CARGO_TARGET_DIR/debug/medlake" "$VENV/bin/python" tests/chaos/chaos.py --kills 10

step "soak: 7 minutes of the quickstart's live load plus 32 dashboards, Flight SQL readers and writers and refreshes; RSS flat within 10% after warm-up, no descriptor growth, 0 client errors (the hour: tests/README.md; 7 minutes so that the first run of the 5-minute schedules falls before the last third)"
soak="$(mktemp -d)"
MEDLAKE_BIN="$CARGO_TARGET_DIR/debug/medlake" "$VENV/bin/python" tests/soak/soak.py --minutes 7 \
    --out "$soak/out" --dir "$soak/w" || { rm -rf "$soak"; exit 1; }
rm -rf "$soak"

step "the operator console in headless Chromium (Selenium): login, panels, a failed refresh in red, an alert"
MEDLAKE_BIN="$CARGO_TARGET_DIR/debug/medlake" "$VENV/bin/pytest" -q tests/console

step "the README's demo command"
demo="$(mktemp -d)"
trap 'rm -rf "$demo"' EXIT
out="$("$CARGO_TARGET_DIR/debug/medlake" sql --warehouse "$demo/warehouse" -f examples/demo.sql)"
echo "$out" | tail -n 12
grep -q '| 1002       | 2026-11-23 | heart_rate  | 2        | 90.0    |' <<<"$out"
grep -q '| 1002       | 310.0 | plausible_heart_rate |' <<<"$out"
grep -q '| gold.device_activity | incremental |' <<<"$out"
grep -q 'readings_after_first_batch' <<<"$out"
grep -q '^| 5  ' <<<"$out"
# Run twice: the demo starts over each time.
"$CARGO_TARGET_DIR/debug/medlake" sql --warehouse "$demo/warehouse" -f examples/demo.sql >/dev/null

step "the refresh benchmark, small (checks the runner; figures come from release builds)"
"$VENV/bin/python" benches/run.py refresh --bin "$CARGO_TARGET_DIR/debug/medlake" --rows 20000 --rounds 1 \
    --out "$demo/bench-results"

step "the threshold benchmark, small (incremental vs FULL of a grouped view as UPDATEs touch more keys: thousands of keys, views checked equal)"
"$VENV/bin/python" benches/run.py threshold --bin "$CARGO_TARGET_DIR/debug/medlake" --rows 100000 \
    --shares 0.01 0.1 0.4 --out "$demo/bench-results"

step "the medallion benchmark, small (bronze -> silver -> gold in medlake, DuckDB and PySpark, golds checked equal)"
"$VENV/bin/python" benches/run.py medallion --bin "$CARGO_TARGET_DIR/debug/medlake" --rows 20000 --rounds 1 \
    --out "$demo/bench-results"

step "the cluster benchmark, small (the medallion's refresh embedded and on 1, 2, 3 Ballista executors, golds checked equal)"
"$VENV/bin/python" benches/run.py cluster --bin "$CARGO_TARGET_DIR/debug/medlake" --rows 20000 --rounds 1 \
    --out "$demo/bench-results"

step "the merge benchmark, small (MERGE of 1% changed rows against DuckDB's MERGE INTO, tables checked equal)"
"$VENV/bin/python" benches/run.py merge --bin "$CARGO_TARGET_DIR/debug/medlake" --rows 20000 --rounds 1 \
    --out "$demo/bench-results"

step "the ingest benchmark, small (medlake simulate's data over HTTP and Flight SQL ADBC ingest against PostgreSQL COPY)"
"$VENV/bin/python" benches/run.py ingest --bin "$CARGO_TARGET_DIR/debug/medlake" --rows 20000 --rounds 1 \
    --out "$demo/bench-results"

step "the serve benchmark, small (COPY TO, streamed SELECT and Flight SQL against PostgreSQL 15, results checked equal)"
"$VENV/bin/python" benches/run.py serve --bin "$CARGO_TARGET_DIR/debug/medlake" --rows 20000 --rounds 1 \
    --out "$demo/bench-results"

step "the dashboard benchmark, small (concurrent dashboard queries over the Postgres wire against PostgreSQL 15)"
"$VENV/bin/python" benches/run.py dashboard --bin "$CARGO_TARGET_DIR/debug/medlake" --rows 20000 --clients 8 \
    --seconds 3 --warmup 1 --out "$demo/bench-results"

step "the spill benchmark, small (a refresh under MEDLAKE_MEMORY_LIMIT must spill and match DuckDB's result)"
"$VENV/bin/python" benches/run.py spill --bin "$CARGO_TARGET_DIR/debug/medlake" --rows 200000 --memory-limit 16MB \
    --out "$demo/bench-results"

step "the README's quickstart, small (the reference warehouse of catalog/ and sql/, every gold view queried)"
out="$("$CARGO_TARGET_DIR/debug/medlake" quickstart --dir "$demo/quickstart" --patients 10 --hours 3 --rate 0.2 \
    --once --live-seconds 5 --pg 127.0.0.1:0 --flight 127.0.0.1:0 --http 127.0.0.1:0)"
echo "$out" | grep -E '^\[' | tail -n 4
for view in patient_daily_vitals news2_hourly device_performance alert_response trial_cohort_vitals data_completeness; do
  rows="$("$CARGO_TARGET_DIR/debug/medlake" sql --warehouse "$demo/quickstart/warehouse" --format csv \
      -c "SELECT count(*) FROM gold.$view" | tail -n 1)"
  echo "gold.$view: $rows rows"
  [ "$rows" -gt 0 ]
done

step "all tests passed"

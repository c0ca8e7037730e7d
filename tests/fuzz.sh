#!/usr/bin/env bash
# Fuzzing in CI (issue 29): builds the light fuzz targets (fuzz/light/: the parsers of
# untrusted input in crates without DataFusion or Arrow, so the instrumented build takes
# minutes) and runs each for a fixed time from its committed seeds (fuzz/light/seeds/). A
# crash, a hang past -timeout or memory past -rss_limit_mb fails, with the input that did it
# and the command that replays it. tests/run.sh runs it; fuzz/README.md lists the targets,
# the measuring runs (>= 1M executions each) and the heavy targets of fuzz/ (DataFusion
# inside: ~50 minutes to build, not run in CI).
#
#   tests/fuzz.sh                  # every light target for MEDLAKE_FUZZ_SECONDS each
#   tests/fuzz.sh fhirpath ...     # only these targets
#
# Environment:
#   MEDLAKE_TOOLS          where cargo-fuzz is installed (cargo install --root); default
#                          ~/.cache/medlake-tools; the pinned version is installed once
#   MEDLAKE_FUZZ_TARGET    the instrumented build's target dir; default
#                          $CARGO_TARGET_DIR/fuzz-light, else ~/.cache/medlake-fuzz-target
#   MEDLAKE_FUZZ_SECONDS   seconds per target; default 60
#   MEDLAKE_FUZZ_OUT       where crash inputs and logs go; default fuzz/light/artifacts
#                          (ignored by git)
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
TOOLS="${MEDLAKE_TOOLS:-$HOME/.cache/medlake-tools}"
export PATH="$TOOLS/bin:$PATH"
if [ -n "${MEDLAKE_FUZZ_TARGET:-}" ]; then
  TARGET="$MEDLAKE_FUZZ_TARGET"
elif [ -n "${CARGO_TARGET_DIR:-}" ]; then
  TARGET="$CARGO_TARGET_DIR/fuzz-light"
else
  TARGET="$HOME/.cache/medlake-fuzz-target"
fi
SECONDS_EACH="${MEDLAKE_FUZZ_SECONDS:-60}"
OUT="${MEDLAKE_FUZZ_OUT:-$PWD/fuzz/light/artifacts}"
TARGETS=(hl7_message hl7_mllp fhirpath fhir_view dicom_header)
[ "$#" -gt 0 ] && TARGETS=("$@")

installed="$(cargo install --list --root "$TOOLS" 2>/dev/null || true)"
if ! { [ -x "$TOOLS/bin/cargo-fuzz" ] && grep -qxF "cargo-fuzz v$CARGO_FUZZ_VERSION:" <<<"$installed"; }; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS (once per machine)"
  build="$(mktemp -d)"
  started=$SECONDS
  CARGO_TARGET_DIR="$build" cargo install --locked --quiet --root "$TOOLS" "cargo-fuzz@$CARGO_FUZZ_VERSION" ||
    { rm -rf "$build"; exit 1; }
  rm -rf "$build"
  echo "installed cargo-fuzz $CARGO_FUZZ_VERSION in $((SECONDS - started)) s"
fi

# cargo-fuzz passes nightly-only flags to rustc: RUSTC_BOOTSTRAP=1 lets stable take them.
# --fuzz-dir always: without it cargo-fuzz takes fuzz/ (the heavy workspace, DataFusion).
# -s none: no AddressSanitizer (safe Rust: panics, overflows, hangs and memory are what we
# look for); -a: debug assertions; the profile in fuzz/light/Cargo.toml keeps overflow checks.
export RUSTC_BOOTSTRAP=1
flags=(--fuzz-dir fuzz/light -O -a -s none --target-dir "$TARGET")

# Not in the root workspace, so the root's `cargo fmt --all --check` does not see it.
cargo fmt --manifest-path fuzz/light/Cargo.toml --check
# The lock file is committed: fail if it would change (cargo-fuzz has no --locked).
cargo fetch --locked --quiet --manifest-path fuzz/light/Cargo.toml
started=$SECONDS
cargo fuzz build "${flags[@]}"
echo "built the light fuzz targets in $((SECONDS - started)) s (into $TARGET)"

mkdir -p "$OUT"
failed=()
for t in "${TARGETS[@]}"; do
  corpus="$(mktemp -d)"
  log="$OUT/$t.log"
  rm -f "$OUT/$t"-crash-* "$OUT/$t"-timeout-* "$OUT/$t"-oom-* "$OUT/$t"-leak-*
  dict=()
  case "$t" in
    hl7_*) dict=(-dict="$PWD"/fuzz/light/dicts/hl7.dict) ;;
    fhir*) dict=(-dict="$PWD"/fuzz/light/dicts/fhir.dict) ;;
  esac
  started=$SECONDS
  # The corpus grown from the seeds is thrown away: each run starts from the seeds alone.
  if cargo fuzz run "${flags[@]}" "$t" "$corpus" "$PWD/fuzz/light/seeds/$t" -- \
      -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 "${dict[@]}" \
      -artifact_prefix="$OUT/$t-" -print_final_stats=1 >"$log" 2>&1; then
    runs="$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')"
    echo "$t: ok, $runs executions in $((SECONDS - started)) s, corpus $(find "$corpus" -type f | wc -l) inputs"
  else
    failed+=("$t")
    echo "!!! $t FAILED after $((SECONDS - started)) s; the end of its log ($log):"
    grep -vE '^#[0-9]+\s+(NEW|REDUCE|pulse|INITED)' "$log" | tail -n 40
    for input in "$OUT/$t"-*; do
      [ -f "$input" ] || continue
      echo "!!! input: $input"
      echo "    replay: RUSTC_BOOTSTRAP=1 cargo fuzz run ${flags[*]} $t $input"
    done
  fi
  rm -rf "$corpus"
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz targets failed: ${failed[*]} (turn each input into a regression #[test] in the owning crate, then fix)" >&2
  exit 1
fi

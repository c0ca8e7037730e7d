#!/usr/bin/env bash
# Supply chain (issue 29): what we ship, checked against deny.toml and the RustSec advisories,
# and its CycloneDX SBOM. tests/run.sh runs the checks; the README ("Development: supply chain")
# lists the advisories found and what was done about each.
#
#   tests/supply-chain.sh            # cargo deny: licenses, bans, sources (offline, always);
#                                    # advisories with cargo deny and cargo audit when an
#                                    # advisory database can be had, else a loud SKIPPED
#   tests/supply-chain.sh sbom [DIR] # CycloneDX SBOM (JSON) of the medlake binary and every
#                                    # workspace crate, into DIR (default target/sbom)
#
# Environment:
#   MEDLAKE_TOOLS               where the tools are installed (cargo install --root); default
#                               ~/.cache/medlake-tools; an installed tool of the pinned version
#                               is reused, so only the first run on a machine builds them
#   MEDLAKE_ADVISORY_DB         a local copy of the RustSec advisory database (a clone of its
#                               git repository, or its files) to check against instead of
#                               fetching one: for machines that cannot reach it
#   MEDLAKE_REQUIRE_ADVISORIES  1: fail, instead of skipping, when no advisory database can be had
set -euo pipefail
cd "$(dirname "$0")/.."
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"; rm -f crates/*/medlake-sbom.json' EXIT

CARGO_DENY_VERSION=0.20.2
CARGO_AUDIT_VERSION=0.22.2
CARGO_CYCLONEDX_VERSION=0.5.9
TOOLS="${MEDLAKE_TOOLS:-$HOME/.cache/medlake-tools}"
export PATH="$TOOLS/bin:$PATH"
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
# Where cargo-deny keeps the default advisory database under its db-path (deny.toml): the
# folder name is cargo-deny's own (the URL's last segment and a hash of it), stable for the
# pinned version; checked below by looking for it after a fetch.
DENY_DB_NAME=advisory-db-3157b0e258782691

# install CRATE VERSION BINARY: cargo install --locked into $TOOLS unless that version is there.
install() {
  local crate="$1" version="$2" bin="$3" build
  local installed
  installed="$(cargo install --list --root "$TOOLS" 2>/dev/null || true)"
  if [ -x "$TOOLS/bin/$bin" ] && grep -qxF "$crate v$version:" <<<"$installed"; then
    return 0
  fi
  echo "installing $crate $version into $TOOLS (once per machine)"
  build="$(mktemp -d)"
  local started=$SECONDS
  CARGO_TARGET_DIR="$build" cargo install --locked --quiet --root "$TOOLS" "$crate@$version" ||
    { rm -rf "$build"; return 1; }
  rm -rf "$build"
  echo "installed $crate $version in $((SECONDS - started)) s"
}

loud() {
  printf '\n%s\n' "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  printf '!!! %s\n' "$@" >&2
  printf '%s\n\n' "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
}

# The advisory IDs deny.toml ignores, for cargo audit (one list, kept in deny.toml).
ignored_ids() {
  sed -n '/^\[advisories\]/,/^\[/p' deny.toml | grep -oE 'RUSTSEC-[0-9]{4}-[0-9]{4}' | sort -u
}

advisories() {
  local db config
  if [ -n "${MEDLAKE_ADVISORY_DB:-}" ]; then
    db="$(cd "$MEDLAKE_ADVISORY_DB" && pwd)"
    [ -d "$db/crates" ] || { echo "MEDLAKE_ADVISORY_DB=$db holds no crates/ folder" >&2; return 1; }
    # cargo-deny reads its database from db-path/<name>: point a copy of deny.toml at a folder
    # whose <name> is a link to the given database.
    local root="$scratch/advisory-dbs"
    mkdir -p "$root"
    ln -s "$db" "$root/$DENY_DB_NAME"
    config="$root/deny.toml"
    sed "s|^db-path = .*|db-path = \"$root\"|" deny.toml >"$config"
  elif cargo deny fetch db; then
    db="$CARGO_HOME/advisory-dbs/$DENY_DB_NAME"
    [ -d "$db/crates" ] || { echo "cargo deny fetched its database, but not into $db" >&2; return 1; }
    config=deny.toml
  else
    if [ "${MEDLAKE_REQUIRE_ADVISORIES:-0}" = 1 ]; then
      echo "no advisory database could be fetched and MEDLAKE_REQUIRE_ADVISORIES=1" >&2
      return 1
    fi
    loud "SKIPPED: ADVISORIES NOT CHECKED (cargo deny check advisories, cargo audit)." \
      "The RustSec advisory database could not be fetched (no network to it from here)." \
      "Known vulnerabilities in our dependencies were NOT looked for in this run." \
      "Check them where it is reachable, or with a local copy:" \
      "  MEDLAKE_ADVISORY_DB=/path/to/advisory-db tests/supply-chain.sh" \
      "(MEDLAKE_REQUIRE_ADVISORIES=1 makes this a failure.)"
    return 0
  fi
  if git -C "$db" rev-parse --git-dir >/dev/null 2>&1; then
    echo "advisory database: $db at $(git -C "$db" log -1 --format='%h of %ci')"
  else
    echo "advisory database: $db (files, date unknown)"
  fi

  echo "== cargo deny check advisories"
  cargo deny --frozen --config "$config" check advisories

  install cargo-audit "$CARGO_AUDIT_VERSION" cargo-audit
  echo "== cargo audit"
  local ignores=()
  local id
  for id in $(ignored_ids); do ignores+=(--ignore "$id"); done
  # --no-fetch: the database above, as is; -D warnings: unmaintained, unsound and yanked fail
  # too, as they do for cargo deny (deny.toml).
  cargo audit --no-fetch --db "$db" -D warnings "${ignores[@]}"
}

sbom() {
  local out="${1:-target/sbom}"
  install cargo-cyclonedx "$CARGO_CYCLONEDX_VERSION" cargo-cyclonedx
  mkdir -p "$out"
  # One <crate>.cdx.json beside each workspace crate's Cargo.toml, the binary's with every
  # crate it links; moved into $out. --all-features: what any build of ours may ship.
  cargo cyclonedx --format json --all-features --spec-version 1.5 \
    --target x86_64-unknown-linux-gnu --override-filename medlake-sbom
  local f crate
  for f in crates/*/medlake-sbom.json; do
    crate="$(basename "$(dirname "$f")")"
    mv "$f" "$out/medlake-$crate.cdx.json"
  done
  ls -l "$out"
}

case "${1:-check}" in
  check)
    install cargo-deny "$CARGO_DENY_VERSION" cargo-deny
    # cargo deny reads the crates' manifests (cargo metadata) offline: on a machine whose
    # registry is empty (a fresh CI runner) they must be downloaded first, as Cargo.lock says.
    echo "== cargo fetch --locked (the crates cargo deny reads)"
    cargo fetch --locked
    echo "== cargo deny check licenses bans sources (deny.toml; offline)"
    # Without the inclusion graphs the 24 duplicate-version warnings take 170 lines, not
    # 13,000; `cargo deny check bans` shows who pulls each version.
    cargo deny --frozen check --hide-inclusion-graph licenses bans sources
    advisories
    ;;
  sbom) sbom "${2:-}" ;;
  *) echo "usage: tests/supply-chain.sh [check | sbom [DIR]]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Install strongroom and run its main job on the embedded default: a configured client
# `demo` (the director itself) backed up twice by `strongroom run demo` into a local
# repository, recorded in a SQLite catalog, every event sent to a command sink that
# appends it to a log file; then restore, compare, check the data, and report.
#
#   ./scripts/demo.sh [SAMPLE_DIR]      (default /usr/share/doc; as root on Debian)
#
# STRONGROOM_DEMO_DIR: the work dir, new or empty (default: a new mktemp dir).
# STRONGROOM_DEMO_SKIP_SETUP=1: skip scripts/setup.sh and use the `strongroom` on PATH.
# The first step that fails stops the demo with that step's exit code.
set -euo pipefail

usage_error() { echo "demo: $*" >&2; exit 2; }
step() { printf '\n== %s\n' "$*"; }

SAMPLE=${1:-/usr/share/doc}
[[ -d $SAMPLE ]] || usage_error "$SAMPLE is not a directory"
SAMPLE=$(realpath -- "$SAMPLE")
WORK=$(realpath -m -- "${STRONGROOM_DEMO_DIR:-$(mktemp -d /tmp/strongroom-demo.XXXXXX)}")
[[ $SAMPLE$WORK != *[\"\\]* ]] || usage_error 'paths with " or \ cannot go into the config'
mkdir -p "$WORK"
[[ -z $(ls -A "$WORK") ]] || usage_error "$WORK is not empty: give a new or empty STRONGROOM_DEMO_DIR"
cd "$(dirname "$0")/.."
echo "demo: backing up $SAMPLE; everything is written under $WORK"

step "install (scripts/setup.sh)"
if [[ ${STRONGROOM_DEMO_SKIP_SETUP:-} == 1 ]]; then
    command -v strongroom >/dev/null || usage_error "STRONGROOM_DEMO_SKIP_SETUP=1, but no strongroom on PATH"
    echo "skipped (STRONGROOM_DEMO_SKIP_SETUP=1): using $(command -v strongroom)"
else
    bash scripts/setup.sh dev
    export PATH="$PWD/.venv/bin:$PATH"
fi
strongroom --version

CONFIG=$WORK/strongroom.toml
REPO=$WORK/repo
CATALOG=$WORK/catalog.db
EVENTS=$WORK/events.jsonl
TARGET=$WORK/restore
export STRONGROOM_CONFIG=$CONFIG
export STRONGROOM_STATE_DIR=$WORK/state # job locks (the catalog is named in the config)
export STRONGROOM_CACHE_DIR=$WORK/cache # the files cache that spares unchanged files
unset STRONGROOM_REPOSITORY STRONGROOM_CATALOG # either would override the config

step "write $CONFIG"
(umask 077 && head -c 24 /dev/urandom | base64 >"$WORK/repo.pass")
cat >"$CONFIG" <<EOF
# Written by scripts/demo.sh. docs/strongroom.example.toml shows every key.

[catalog]
url = "sqlite:///$CATALOG"

[repositories.main]
url = "$REPO"
password_file = "repo.pass"                 # relative to this file

[defaults]
repository = "main"
retention = { last = 10, daily = 7, weekly = 4 }   # applied after each run
notify = ["event-log"]

[clients.demo]
transport = "local"                         # the director itself: no SSH, no agent
sources = ["$SAMPLE"]

[notify.event-log]                          # the event as JSON on stdin: one line each
kind = "command"
command = ["/bin/sh", "-c", 'cat >>"\$1" && echo >>"\$1"', "event-log", "$EVENTS"]
EOF
cat "$CONFIG"

step "strongroom config check"
strongroom config check

step "strongroom --repo main init"
strongroom --repo main init

step "strongroom run demo (first run: every file is read)"
strongroom run demo

step "strongroom run demo (second run: unchanged files are not read again)"
strongroom run demo

step "strongroom --repo main restore latest --client demo --target $TARGET --verify"
strongroom --repo main restore latest --client demo --target "$TARGET" --verify

step "diff -r --no-dereference $SAMPLE $TARGET$SAMPLE"
diff -r --no-dereference "$SAMPLE" "$TARGET$SAMPLE"
echo "the restored tree is identical to $SAMPLE"

step "strongroom --repo main check --read-data"
strongroom --repo main check --read-data

step "strongroom report"
strongroom report

step "strongroom status"
strongroom status

step "summary"
events=$(grep -o '"event": "[^"]*"' "$EVENTS" | cut -d'"' -f4 | paste -sd' ') ||
    { echo "demo: no event reached $EVENTS" >&2; exit 1; }
cat <<EOF
sample:      $SAMPLE: $(du -sh "$SAMPLE" | cut -f1), $(find "$SAMPLE" -type f | wc -l) files
repository:  $REPO: $(du -sh "$REPO" | cut -f1) on disk, password in $WORK/repo.pass
catalog:     $CATALOG
config:      $CONFIG
restored:    $TARGET$SAMPLE
events sent: $events (one JSON line each in $EVENTS)
next:        export STRONGROOM_CONFIG=$CONFIG; $(command -v strongroom) snapshots (or events list)
EOF

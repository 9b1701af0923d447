#!/usr/bin/env bash
# Install strongroom and run the main job on the embedded default: back up a sample
# directory into a local repository, restore it, compare, check, and report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev >&2
SR="$PWD/.venv/bin/strongroom"

WORK=${STRONGROOM_DEMO_DIR:-$(mktemp -d /tmp/strongroom-demo.XXXXXX)}
SAMPLE=${1:-/usr/share/doc}
export STRONGROOM_PASSWORD=${STRONGROOM_PASSWORD:-demo-password-change-me}
export STRONGROOM_CACHE_DIR="$WORK/cache"
REPO="$WORK/repo"
TARGET="$WORK/restore"

echo "== init $REPO"
"$SR" --repo "$REPO" init
echo "== backup $SAMPLE (client demo)"
"$SR" --repo "$REPO" backup --client demo "$SAMPLE"
echo "== backup again (unchanged files are not read)"
"$SR" --repo "$REPO" backup --client demo "$SAMPLE"
echo "== restore latest to $TARGET"
"$SR" --repo "$REPO" restore latest --client demo --target "$TARGET" --verify
echo "== compare"
diff -r --no-dereference "$SAMPLE" "$TARGET$SAMPLE" && echo "restored tree is identical to $SAMPLE"
echo "== check --read-data"
"$SR" --repo "$REPO" check --read-data
echo "== report"
"$SR" --repo "$REPO" snapshots
printf '%s\n' "source: $SAMPLE ($(du -sh "$SAMPLE" | cut -f1), $(find "$SAMPLE" -type f | wc -l) files)" \
    "repository: $REPO ($(du -sh "$REPO" | cut -f1) on disk)" \
    "restored to: $TARGET"

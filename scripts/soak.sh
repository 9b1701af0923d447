#!/usr/bin/env bash
# Soak: the reliability suite's fault loops at soak size.
#
#   R1   SIGKILL real backups at random moments (STRONGROOM_SOAK_KILLS per mode, default
#        200, so 400 kills), and at every pack upload and index checkpoint of a run
#   R3   single-bit flips across packs, indexes, snapshots, keys, config
#        (STRONGROOM_SOAK_FLIPS, default 5000)
#   R20  every parser fuzzed with STRONGROOM_SOAK_FUZZ_EXAMPLES examples (default 20000)
#
# These are the tests marked `soak`; they skip unless STRONGROOM_SOAK=1, which this sets.
# The seed is random unless STRONGROOM_SOAK_SEED is given; it is printed first, so a
# failure can be replayed with the same seed. Extra arguments go to pytest, e.g.
#   scripts/soak.sh -k r03            only the bit flips
#   scripts/soak.sh -n 2              two workers
#   STRONGROOM_SOAK_KILLS=1000 scripts/soak.sh -k sigkill
# About half an hour on 2 cores at the default sizes. Nothing here needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(if [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo python3; fi)}

export STRONGROOM_SOAK=1
export STRONGROOM_SOAK_SEED=${STRONGROOM_SOAK_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
export STRONGROOM_SOAK_KILLS=${STRONGROOM_SOAK_KILLS:-200}
export STRONGROOM_SOAK_FLIPS=${STRONGROOM_SOAK_FLIPS:-5000}
export STRONGROOM_SOAK_FUZZ_EXAMPLES=${STRONGROOM_SOAK_FUZZ_EXAMPLES:-20000}

echo "soak: seed $STRONGROOM_SOAK_SEED, $STRONGROOM_SOAK_KILLS kills per mode," \
    "$STRONGROOM_SOAK_FLIPS bit flips, $STRONGROOM_SOAK_FUZZ_EXAMPLES fuzz examples per parser"
start=$(date +%s)
status=0
"$PYTHON" -m pytest tests/reliability -m soak -p no:cacheprovider --timeout=0 -q -rA "$@" \
    || status=$?
echo "soak: finished in $(( $(date +%s) - start ))s with exit status $status" \
    "(seed $STRONGROOM_SOAK_SEED)"
exit "$status"

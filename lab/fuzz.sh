#!/usr/bin/env bash
# Runs every Go fuzz target in the module with one budget each: a duration
# (10s, 2m) or a count of executions (20000x). Usage: lab/fuzz.sh [BUDGET]
#
# A duration budget races Go's fuzz coordinator at the deadline: go1.26 can
# report a bare "context deadline exceeded" with no failing input when a
# worker is mid-call as -fuzztime expires (go.dev/issue/75804, fixed in
# go1.27). A count budget has no deadline, so `make test` uses one. For
# duration budgets, a failure that says only that, and wrote no reproducer,
# is run once more; any other failure fails at once.
set -euo pipefail
t=${1:-10s}
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# deadline_flake says whether the run logged in $1 failed only by go.dev/issue/75804.
deadline_flake() {
  grep -q 'context deadline exceeded' "$1" &&
    ! grep -qE 'Failing input written|panic:|_test\.go:[0-9]+:' "$1"
}

grep -rl --include='*_test.go' '^func Fuzz' . | sort | while read -r f; do
  pkg=./$(dirname "${f#./}")
  for fn in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$f"); do
    for try in 1 2; do
      echo "fuzz $pkg $fn for $t"
      if go test -run '^$' -fuzz "^${fn}\$" -fuzztime "$t" "$pkg" 2>&1 | tee "$log"; then
        break
      fi
      if [ "$try" = 1 ] && deadline_flake "$log"; then
        echo "fuzz $pkg $fn: the fuzz deadline raced a worker (go.dev/issue/75804), no failing input; running it again"
        continue
      fi
      exit 1
    done
  done
done

#!/bin/bash
# Interleaved start-up profiles: A = d458207 (before issue 20), B = b222860 (issue 20 landed), C = main now.
set -u
out=${OUT:-runs-new}
mkdir -p $out
for round in 1 2 3 4 5 6; do
  for t in A B C; do
    case $t in A) tree=/work/wt/ref-a;; B) tree=/work/wt/ref-b;; C) tree=/work/main;; esac
    (cd $tree && .venv/bin/python -m benchmarks startup-profile --reps 5 --out $out/$t-$round > $out/$t-$round.log 2>&1)
    echo "$t round $round rc=$? $(date +%T)"
  done
done

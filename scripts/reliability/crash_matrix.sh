#!/usr/bin/env bash
# The crash-consistency matrix: every named kill point, each process SIGKILLed there and the
# store checked after a restart, printed as one Markdown table (reliability/crash.md holds a run).
#
#   scripts/reliability/crash_matrix.sh            # all rows
#   FERROTUNE_REQUIRE_MODELS=1 scripts/...         # the rag rows fail instead of skipping
#
# Sources: crates/cli/tests/crash_matrix.rs (data prepare, rag ingest, keys: each case prints its
# own row), crates/cli/tests/train_crash.rs (the trainer's points) and crates/govern/tests/
# crash.rs + audit_crash.rs (registry and audit log), whose rows are written here from what each
# test asserts. Exit status: non-zero if any test failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
status=0

run() { # name, cargo test args...
  local name=$1
  shift
  if ! FERROTUNE_CRASH_MATRIX_OUT="$log/rows.md" cargo test --release "$@" -- --test-threads=1 >"$log/$name.txt" 2>&1; then
    status=1
  fi
}
run matrix -p ferrotune-cli --test crash_matrix
run train -p ferrotune-cli --test train_crash
run govern -p ferrotune-govern --test crash --test audit_crash

# The result of one test: ok, FAILED, or "not run".
result() { # file, test name
  local line
  line=$(grep -E "^test $2 \.\.\. " "$log/$1.txt" | tail -1)
  case "$line" in
    *" ok") echo ok ;;
    *FAILED) echo FAILED ;;
    *) echo "not run" ;;
  esac
}

echo "| kill point | what was being written | outcome after restart | test |"
echo "|---|---|---|---|"
# crash_matrix.rs: a passing case printed its row; a failing one is listed by its test name.
grep -E "^test .* \.\.\. FAILED" "$log/matrix.txt" | sed -E 's/^test ([a-z0-9_]+) .*/| ? | crash_matrix::\1 | **FAILED** | crash_matrix::\1 |/'
[ -f "$log/rows.md" ] && sed -E 's/ \|$/ | ok (crash_matrix.rs) |/' "$log/rows.md"
if ! grep -qs "^| rag-" "$log/rows.md"; then
  echo "| rag-* | rag ingest | **not run: the MiniLM embedder is not installed** (FERROTUNE_REQUIRE_MODELS=1 makes that a failure) | crash_matrix.rs |"
fi

train_row() { # test, point, written
  local r
  r=$(result train "$1")
  local outcome="opens: yes; --resume repairs and finishes; resumed exactly: metrics.jsonl (loss per step) equal to an uninterrupted run's, weights, optimizer and trainer state byte-equal, adapters load"
  [ "$r" = ok ] || outcome="**$r**"
  echo "| $2 | $3 | $outcome | train_crash::$1 |"
}
train_row killed_with_a_new_checkpoint_written_but_not_renamed_resumes_from_the_one_before checkpoint-fill:2 "train: checkpoint step-4 complete in .step-4.tmp, not renamed"
train_row killed_halfway_through_a_checkpoint_resumes_from_the_one_before trainer_state:2 "train: checkpoint step-4's last file (trainer_state.json) fsync'ed, not renamed"
train_row killed_with_a_new_best_written_but_not_renamed_resumes best-fill:2 "train: new best/ complete in .best.tmp"
train_row killed_between_moving_best_aside_and_renaming_the_new_one_in_keeps_a_best best-swap "train: old best/ renamed to .best.old, new not yet in (restored before training; eval reads it)"
train_row killed_with_the_final_adapter_written_but_not_renamed_resumes adapter-fill "train: final adapter/ complete in .adapter.tmp"
train_row killed_inside_the_final_adapter_swap_of_a_rerun_keeps_an_adapter adapter-swap "train (resumed finished run): old adapter/ aside, new not in"
train_row killed_while_writing_the_lineage_resumes lineage "train: lineage.json temp fsync'ed, not renamed"
train_row killed_while_resume_rewrites_the_metrics_keeps_them metrics-rewrite "train --resume: metrics.jsonl rewrite (old file must stay whole)"
train_row an_early_stopped_run_killed_at_its_adapter_resumes_without_training_on adapter-fill "train (early-stopped): final adapter in temp"
train_row a_second_trainer_on_a_run_folder_is_refused_and_a_dead_ones_lock_is_not checkpoint-fill:2 "train: run lock held by the killed trainer (a second trainer refused; the dead one's lock is not)"
train_row killed_while_pruning_a_checkpoint_leaves_none_half_deleted remove "train: pruned checkpoint renamed to .step-N.del, not deleted"
train_row a_full_fine_tuning_run_killed_at_its_model_resumes model-swap "train --method full: old model/ aside, new not in"

govern_row() { # test, point, written, outcome
  local r
  r=$(result govern "$1")
  local outcome=$4
  [ "$r" = ok ] || outcome="**$r**"
  echo "| $2 | $3 | $outcome | govern::$1 |"
}
govern_row killing_a_writer_mid_transaction_leaves_a_consistent_registry "registry: random moment, 5 rounds" "registry.db: runs, artifacts and alias moves in a tight loop, SIGKILL after 250-350 ms" "opens: yes; PRAGMA integrity_check ok; versions contiguous, every artifact's run exists, aliases resolve, no run left running, Registry::check clean; takes writes again"
govern_row a_run_whose_process_was_killed_reads_as_abandoned "registry: run open" "registry.db: a run begun, its process SIGKILLed" "opens: yes; the run reads as abandoned, not running"
govern_row a_writer_killed_mid_append_leaves_a_log_that_opens_repaired_and_verifies "audit: random moment, 12 rounds" "audit log: batches up to ~1 MB appended, SIGKILL after 120-400 ms (lands inside a write)" "opens: yes; a torn tail repaired on open; no complete entry lost; the hash chain verifies; takes appends and checkpoints again"

echo
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo "(not a git checkout)"), $(date -u +%Y-%m-%dT%H:%MZ)"
for f in matrix train govern; do
  grep -E "^test result:" "$log/$f.txt" | sed "s/^/$f: /"
done
if [ $status -ne 0 ]; then
  echo "FAILED: see the output of the failing tests:" >&2
  for f in matrix train govern; do grep -E "FAILED|panicked" "$log/$f.txt" >&2; done
fi
exit $status

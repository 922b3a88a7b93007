#!/usr/bin/env bash
# Full disks and read-only file systems under every command that writes (reliability/disk-full.md
# holds a run). Needs root (mount -t tmpfs); every mount is under a fresh temp folder and undone
# on exit, however the script ends.
#
#   scripts/reliability/disk_full.sh
#
# 1. The fast cases: crates/cli/tests/disk_full.rs (data prepare, train on the tiny model, rag
#    ingest, keys and registry on a full / read-only $FERROTUNE_HOME, serve answering while its
#    home is full or read-only), each printing the error the user saw.
# 2. The real model: `ferrotune train` of the installed default model (SmolLM2-135M) with --out on
#    a tmpfs that fills during the run; then `--resume` with room again must finish.
set -uo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "disk_full.sh needs root (mount -t tmpfs)" >&2; exit 2; }
work=$(mktemp -d)
mounts=()
cleanup() {
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM
status=0

echo "## Fast cases (cargo test --test disk_full)"
echo
if FERROTUNE_REQUIRE_ROOT=1 FERROTUNE_DISK_FULL_OUT="$work/rows.md" cargo test --release -p ferrotune-cli --test disk_full -- --test-threads=1 >"$work/tests.txt" 2>&1; then
  echo "all passed"
else
  status=1
  echo "FAILED:"
  grep -E "FAILED|panicked|Error:" "$work/tests.txt"
fi
echo
echo "| command | what the user saw (stderr) |"
echo "|---|---|"
[ -f "$work/rows.md" ] && sed -E "s#/tmp/[.A-Za-z0-9_]+/mnt#<tmpfs>#g; s#/tmp/[.A-Za-z0-9_]+/#<tmp>/#g" "$work/rows.md"
grep -E "^test .* \.\.\. " "$work/tests.txt" | sed 's/^/    /'
grep -h "^SKIPPED" "$work/tests.txt" | sed 's/^/    /'

echo
echo "## Real model: ferrotune train (${FERROTUNE_DISK_FULL_MODEL:-smollm2-135m-instruct}) with --out on a tmpfs that fills"
echo
bin=${CARGO_TARGET_DIR:-target}/release/ferrotune
cargo build --release -q -p ferrotune-cli || exit 1
model=${FERROTUNE_DISK_FULL_MODEL:-smollm2-135m-instruct}
installed=$("$bin" models list 2>/dev/null)
if ! grep -q "^  $model " <<<"$installed"; then
  echo "SKIPPED: $model is not installed (scripts/install-models.sh)"
  exit $status
fi
python3 - "$work/train.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(64):
        f.write(json.dumps({"messages": [{"role": "user", "content": f"Spell {i} backwards."},
                                         {"role": "assistant", "content": str(i)[::-1]}]}) + "\n")
PY
args=(train --model "$model" --data "$work/train.jsonl" --max-steps 6 --save-steps 2 --batch-size 2
      --max-seq-len 64 --lr 1e-3 --quiet --no-registry)
# The size of one checkpoint, from a run on the ordinary disk.
"$bin" "${args[@]}" --out "$work/straight" >/dev/null 2>"$work/straight.err" || { cat "$work/straight.err"; exit 1; }
ckpt_kb=$(du -sk "$work/straight/checkpoints/step-2" | cut -f1)
size_kb=$(( ckpt_kb * 3 / 2 + 512 ))
mkdir -p "$work/mnt"
mount -t tmpfs -o "size=${size_kb}k" tmpfs "$work/mnt" && mounts+=("$work/mnt")
echo "one checkpoint: ${ckpt_kb} KiB; tmpfs: ${size_kb} KiB"
"$bin" "${args[@]}" --out "$work/mnt/run" >/dev/null 2>"$work/full.err"
rc=$?
echo
echo "exit status: $rc"
echo '```'
sed -E "s#$work#\$TMP#g" "$work/full.err"
echo '```'
ls -a "$work/mnt/run/checkpoints" 2>/dev/null | tr '\n' ' '
echo
if [ $rc -eq 0 ] || ! grep -q "No space left on device" "$work/full.err" || grep -q panicked "$work/full.err"; then
  echo "FAILED: expected a non-zero exit naming the path and ENOSPC"
  status=1
fi
# Room again (a tmpfs grows by remount): the last complete checkpoint resumes and the run ends
# where the uninterrupted one did — the same loss at every step and the same adapter.
mount -o remount,size=512m "$work/mnt"
if "$bin" "${args[@]}" --out "$work/mnt/run" --resume >/dev/null 2>"$work/resume.err"; then
  if python3 - "$work/straight" "$work/mnt/run" <<'PY'
import json, sys, pathlib
def m(d):
    out = []
    for l in (pathlib.Path(d) / "metrics.jsonl").read_text().splitlines():
        v = json.loads(l); v.pop("tokens_per_sec", None); out.append(v)
    return out
a, b = sys.argv[1], sys.argv[2]
same_m = m(a) == m(b)
same_w = (pathlib.Path(a) / "adapter/adapter_model.safetensors").read_bytes() == (pathlib.Path(b) / "adapter/adapter_model.safetensors").read_bytes()
print(f"resumed with room: metrics equal to the uninterrupted run's: {same_m}; adapter byte-equal: {same_w}")
sys.exit(0 if same_m and same_w else 1)
PY
  then :; else status=1; fi
else
  echo "FAILED: --resume after freeing space:"; cat "$work/resume.err"; status=1
fi
exit $status

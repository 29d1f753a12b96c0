#!/usr/bin/env bash
# Times smelt's CLI and Python mergekit on the same inputs as `bench_merge`: task_arithmetic
# and TIES (density 0.2) of N perturbed copies onto the base, whole-process wall time and peak
# RSS from /usr/bin/time -v, plus the I/O floor (reading every input once from the page cache).
# Usage: benches/mergekit_compare.sh DIR [PYTHON_VENV]   (run from the repository root, after
#   `cargo build --release`; SMELT_ONLY=1 skips mergekit)
#   DIR holds copy0/ … copyN-1/ (HF directories, as `SMELT_BENCH_KEEP=1 bench_merge MODEL N`
#   leaves them); copy0 is the base and the others are merged onto it, as bench_merge's TIES does.
# Needs: pip install mergekit (0.1.5 measured) in the venv (default /tmp/venv-bench).
set -euo pipefail
dir=${1:?usage: mergekit_compare.sh DIR [VENV]}; venv=${2:-/tmp/venv-bench}
copies=$(ls -d "$dir"/copy* | sort -V | tail -n +2)
dtype=$(python3 -c "import json,sys; print(json.load(open('$dir/copy0/config.json')).get('torch_dtype','float16'))")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
smelt=$(pwd)/target/release/smelt
inputs="$dir/copy0/*.safetensors $(for c in $copies; do echo "$c"/*.safetensors; done)"
cat $inputs > /dev/null
start=$(date +%s.%N); cat $inputs > /dev/null; end=$(date +%s.%N)
echo "io floor: $(du -cb $inputs | tail -1 | cut -f1) bytes in $(echo "$end - $start" | bc) s"
for method in task_arithmetic ties; do
  extra=""; [ "$method" = ties ] && extra=", density=0.2"
  {
    echo "let base = load model(\"$dir/copy0\")"
    echo "let ms = [$(for c in $copies; do printf 'load model("%s"), ' "$c"; done | sed 's/, $//')]"
    echo "save merge $method(base, ms$extra) to \"$work/smelt-$method\""
  } > "$work/$method.exp"
  cat $inputs > /dev/null
  (cd "$work" && /usr/bin/time -v "$smelt" run "$method.exp" > "$method-smelt.log" 2>&1) \
      || { cat "$work/$method-smelt.log"; exit 1; }
  wall=$(grep "Elapsed (wall clock)" "$work/$method-smelt.log" | awk '{print $NF}')
  rss=$(grep "Maximum resident set size" "$work/$method-smelt.log" | awk '{print $NF}')
  echo "smelt $method: $(echo "$copies" | wc -w) copies, wall $wall, peak RSS $((rss / 1024)) MB"
  rm -rf "$work/smelt-$method" "$work/.smelt"
done
[ -n "${SMELT_ONLY:-}" ] && exit 0
for method in task_arithmetic ties; do
  {
    echo "merge_method: $method"
    echo "base_model: $dir/copy0"
    echo "dtype: $dtype"
    echo "models:"
    for c in $copies; do
      echo "  - model: $c"
      if [ "$method" = ties ]; then
        echo "    parameters: {weight: 1.0, density: 0.2}"
      else
        echo "    parameters: {weight: 1.0}"
      fi
    done
  } > "$work/$method.yml"
  # warm the page cache so both tools read from memory
  cat "$dir"/copy0/*.safetensors $(for c in $copies; do echo "$c"/*.safetensors; done) > /dev/null
  /usr/bin/time -v "$venv/bin/mergekit-yaml" "$work/$method.yml" "$work/out-$method" \
      --lazy-unpickle --no-cuda > "$work/$method.log" 2>&1 || { cat "$work/$method.log"; exit 1; }
  wall=$(grep "Elapsed (wall clock)" "$work/$method.log" | awk '{print $NF}')
  rss=$(grep "Maximum resident set size" "$work/$method.log" | awk '{print $NF}')
  echo "mergekit $method: $(echo "$copies" | wc -w) copies, wall $wall, peak RSS $((rss / 1024)) MB"
  rm -rf "$work/out-$method"
done

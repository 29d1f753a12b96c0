#!/usr/bin/env bash
# Times Python mergekit on the same inputs as `bench_merge`: task_arithmetic and TIES
# of N perturbed copies onto the base, wall time and peak RSS from /usr/bin/time -v.
# Usage: benches/mergekit_compare.sh DIR [PYTHON_VENV]
#   DIR holds copy0/ … copyN-1/ (HF directories, as `SMELT_BENCH_KEEP=1 bench_merge MODEL N`
#   leaves them); copy0 is the base and the others are merged onto it, as bench_merge's TIES does.
# Needs: pip install mergekit (0.1.5 measured) in the venv (default /tmp/venv-bench).
set -euo pipefail
dir=${1:?usage: mergekit_compare.sh DIR [VENV]}; venv=${2:-/tmp/venv-bench}
copies=$(ls -d "$dir"/copy* | sort -V | tail -n +2)
dtype=$(python3 -c "import json,sys; print(json.load(open('$dir/copy0/config.json')).get('torch_dtype','float16'))")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
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

#!/usr/bin/env bash
# Download, on a machine with package-index access, the wheels that benchmarks/gpu/run.sh
# installs on a GPU machine without network: the project's runtime dependencies that such a
# machine lacks (it has jax, flax, optax, orbax, torch and their dependencies: numpy, scipy).
# matplotlib and scikit-learn (figures, statistics) are not needed by the benchmark.
#
#   benchmarks/gpu/fetch_wheels.sh [--python-version 3.12] [DIR]   # DIR: benchmarks/gpu/wheels
#
# Versions are the ones pinned in pyproject.toml. The folder is git-ignored; carry it with the
# working tree (about 12 MB for Python 3.12).
set -euo pipefail
cd "$(dirname "$0")/../.."
pyver=3.12
if [[ "${1:-}" == "--python-version" ]]; then pyver=$2; shift 2; fi
dir=${1:-benchmarks/gpu/wheels}
mkdir -p "$dir"
pin() {  # the exact version pinned in pyproject.toml
  grep -oE "\"$1==[^\"]+\"" pyproject.toml | head -1 | tr -d '"'
}
packages=(grain array-record nibabel ml-collections pydicom tqdm)
specs=()
for p in "${packages[@]}"; do
  spec=$(pin "$p")
  [[ -n "$spec" ]] || { echo "error: pyproject.toml: no exact pin for $p" >&2; exit 1; }
  specs+=("$spec")
done
python -m pip download --quiet --dest "$dir" --only-binary=:all: \
  --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  "${specs[@]}"
# numpy comes with jax on the GPU machine; 16 MB not worth carrying.
rm -f "$dir"/numpy-*.whl
ls "$dir"
du -sh "$dir"

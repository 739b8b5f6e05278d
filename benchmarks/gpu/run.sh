#!/usr/bin/env bash
# The accelerator benchmark, in one command, on a machine with one NVIDIA GPU and no network:
#
#   benchmarks/gpu/run.sh [--cpu-smoke] [--out DIR] [--no-pipeline] [-- BENCH_ARGS...]
#
# 1. installs the project's dependencies that are missing (grain, array-record, nibabel,
#    ml-collections, pydicom, tqdm) from wheels carried in benchmarks/gpu/wheels (made beforehand with
#    benchmarks/gpu/fetch_wheels.sh; pip --no-index, nothing downloaded), and puts the checkout
#    on PYTHONPATH (no build step);
# 2. benchmarks/gpu/bench.py: the U-Net 2D (32..512, 256x256) and 3D U-Net (32..320, 128^3)
#    training steps and inference, lesionjax fp32 / bf16 against PyTorch AMP bf16 eager and
#    torch.compile, same GPU, same run (rows not started by 420 s are skipped); arguments
#    after -- go to it (e.g. -- --parts 2d --variants jax-bf16,torch-amp);
# 3. benchmarks/pipeline.py --part 2d: the host input pipeline on this machine's cores.
# Output: DIR (default $OUT if set, else benchmarks/gpu/out): env.txt, bench.txt, bench.json,
# pipeline.txt. Exit status: 0 when every step ran, else that of the first step that failed.
# --cpu-smoke: the same steps on the CPU at toy sizes, one step per row (tests the script).
set -uo pipefail
cd "$(dirname "$0")/../.."
smoke=()
bench_args=()
pipeline=1
out=${OUT:-benchmarks/gpu/out}
while (($#)); do
  case $1 in
    --cpu-smoke) smoke=(--cpu-smoke) ;;
    --no-pipeline) pipeline=0 ;;
    --out) out=$2; shift ;;
    --) shift; bench_args=("$@"); break ;;
    *) echo "error: run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
py=${PYTHON:-python3}
status=0
t0=$SECONDS

# 1. Dependencies: import each, install only what fails, from the carried wheels.
missing=$("$py" - <<'PY'
import importlib.util
mods = {"grain": "grain", "array_record": "array-record", "nibabel": "nibabel",
        "ml_collections": "ml-collections", "pydicom": "pydicom", "tqdm": "tqdm"}
print(" ".join(pkg for mod, pkg in mods.items() if importlib.util.find_spec(mod) is None))
PY
)
if [[ -n "$missing" ]]; then
  wheels=${WHEELS:-benchmarks/gpu/wheels}
  if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "error: $wheels: no wheels for the missing packages ($missing); run" \
      "benchmarks/gpu/fetch_wheels.sh on a machine with network first" >&2
    status=3
  else
    echo "installing from $wheels: $missing"
    # shellcheck disable=SC2086
    "$py" -m pip install --quiet --no-index --find-links "$wheels" $missing || status=3
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  date -u
  nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  nproc
  "$py" -c "import sys, jax, torch; print(sys.version.split()[0], 'jax', jax.__version__, 'torch', torch.__version__)"
  "$py" -c "import grain, array_record, nibabel, ml_collections, pydicom, tqdm; print('grain', grain.__version__ if hasattr(grain, '__version__') else '?', 'nibabel', nibabel.__version__, 'pydicom', pydicom.__version__)" \
    || echo "error: a dependency does not import"
} 2>&1 | tee "$out/env.txt"
if grep -q "^error:" "$out/env.txt" && ((status == 0)); then status=3; fi

# 2. Training steps and inference.
timeout 480 "$py" benchmarks/gpu/bench.py "${smoke[@]}" "${bench_args[@]}" --json "$out/bench.json" 2>&1 \
  | tee "$out/bench.txt"
rc=${PIPESTATUS[0]}
((status == 0 && rc != 0)) && status=$rc

# 3. Host pipeline (2D slices/s per core and with 1..N workers).
if ((pipeline)); then
  if ((${#smoke[@]})); then
    args=(--part 2d --volumes 1 --shape 128,128,40 --seconds 1 --workers 1)
  else
    n=$(nproc)
    args=(--part 2d --seconds 5 --workers "1,4,$n")
  fi
  timeout 150 "$py" benchmarks/pipeline.py "${args[@]}" 2>&1 | tee "$out/pipeline.txt"
  rc=${PIPESTATUS[0]}
  ((status == 0 && rc != 0)) && status=$rc
fi
echo "run.sh: $((SECONDS - t0)) s, status $status; results in $out"
exit $status

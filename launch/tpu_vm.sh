#!/usr/bin/env bash
# The main job on a Cloud TPU VM slice: create it (or reuse it), put this checkout on every
# worker, install it, and run the same command on all workers at once. JAX discovers the
# slice's hosts and its own process id on each worker; nothing is copied by hand.
#
#   launch/tpu_vm.sh --name NAME --zone ZONE [--type v5litepod-16] [--version VERSION] [--spot]
#                    [--dry-run] [--setup-only] -- [main job arguments ...]
#   launch/tpu_vm.sh --name ich --zone us-west4-a --type v5litepod-16 -- \
#       --config configs/instance2022_cascade.py --config.data.shards_dir=/mnt/shards/instance \
#       --workdir /mnt/runs/ich
#
# Data and runs: the code reads shards and writes a workdir through ordinary file paths, so
# both must be a path that every worker sees: a Filestore (NFS) share mounted on every worker
# (workdir and shards), or, for the shards only, a Cloud Storage bucket mounted read-only with
# gcsfuse at the same path on every worker (the readers only open and read files; they write
# nothing next to the shards, which a test checks). gs:// URLs are not read directly.
# Preemption (spot VMs, maintenance): the workers get SIGTERM; every process saves and exits
# with status 75; run this script again with the same arguments to resume (the VM is reused,
# or created again when it was deleted).
set -u

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

name="" zone="" type="v5litepod-16" version="v2-alpha-tpuv5-lite" spot=0 dry_run=0 setup_only=0
args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) name=${2:-}; shift ;;
    --zone) zone=${2:-}; shift ;;
    --type) type=${2:-}; shift ;;
    --version) version=${2:-}; shift ;;
    --spot) spot=1 ;;
    --dry-run) dry_run=1 ;;
    --setup-only) setup_only=1 ;;
    --) shift; args=("$@"); break ;;
    -h|--help) usage ;;
    *) echo "error: $0: unknown option $1 (main job arguments go after --)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n $name && -n $zone ]] || { echo "error: $0: --name and --zone are required" >&2; usage; }

repo=$(cd "$(dirname "$0")/.." && pwd)
remote_dir="lesionjax"  # in each worker's home directory
jax_version=$(sed -n 's/^ *"jax==\([0-9.]*\)".*/\1/p' "$repo/pyproject.toml" | head -n 1)
archive="/tmp/lesionjax-$name.tar.gz"
tpu=(gcloud compute tpus tpu-vm)
where=(--zone "$zone")

run() {  # print, then run unless --dry-run
  printf '+ '; printf '%q ' "$@"; echo
  [[ $dry_run -eq 1 ]] || "$@"
}

# 1. The slice: reuse it when it exists, else create it.
if [[ $dry_run -eq 0 ]] && "${tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
  echo "reusing TPU VM $name in $zone"
else
  create=("${tpu[@]}" create "$name" "${where[@]}" --accelerator-type "$type" --version "$version")
  [[ $spot -eq 1 ]] && create+=(--spot)
  [[ $dry_run -eq 1 ]] && echo "# (if $name does not exist yet)"
  run "${create[@]}" || exit 1
fi

# 2. This checkout (tracked files at HEAD plus uncommitted changes: git's stash of the working
# tree, if any) on every worker, then the project installed with JAX for TPUs.
if [[ $dry_run -eq 0 ]]; then
  tree=$(cd "$repo" && git stash create)
  (cd "$repo" && git archive --format=tar.gz -o "$archive" "${tree:-HEAD}") || exit 1
else
  echo "+ git archive --format=tar.gz -o $archive \$(git stash create || HEAD)"
fi
run "${tpu[@]}" scp "$archive" "$name:lesionjax.tar.gz" "${where[@]}" --worker=all || exit 1
install="rm -rf $remote_dir && mkdir -p $remote_dir && tar -xzf lesionjax.tar.gz -C $remote_dir"
install+=" && cd $remote_dir && python3 -m pip install -q -e . 'jax[tpu]==$jax_version'"
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$install" || exit 1
[[ $setup_only -eq 1 ]] && exit 0

# 3. The same command on every worker; jax.distributed finds the slice's hosts itself.
job="cd $remote_dir && LESIONJAX_DISTRIBUTED=auto python3 -u -m lesionjax.main"
for arg in "${args[@]}"; do job+=" $(printf '%q' "$arg")"; done
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$job"
status=$?
if [[ $status -eq 75 ]]; then
  echo "lesionjax: stopped by a signal with a checkpoint saved; run the same command to resume" >&2
fi
exit "$status"

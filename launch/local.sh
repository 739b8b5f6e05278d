#!/usr/bin/env bash
# N processes of the main job on this machine, as one multi-process JAX job.
#
#   launch/local.sh N [--dry-run] [--logs DIR] [--cpu] [main job arguments ...]
#   launch/local.sh 2 --config configs/demo.py --workdir runs/demo2
#
# Each process gets LESIONJAX_COORDINATOR (127.0.0.1 on a free port), LESIONJAX_NUM_PROCESSES
# and LESIONJAX_PROCESS_ID. With at least N local NVIDIA GPUs (nvidia-smi -L), process i sees
# GPU i alone (CUDA_VISIBLE_DEVICES=i); otherwise, or with --cpu, every process runs on the CPU.
# Logs: DIR/proc<i>.log (default logs/local-<date>-<time>); process 0's also on the terminal.
# Ctrl-C (or SIGTERM to this script) sends SIGTERM to every process: each finishes its step,
# saves a checkpoint and exits with status 75 (run the same command again to resume); a second
# Ctrl-C stops them at once. Exit status: the first non-zero status of a process, else 0.
# Any other environment (XLA_FLAGS, JAX_PLATFORMS, ...) is passed on unchanged.
set -u

usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[[ $# -ge 1 && $1 =~ ^[0-9]+$ && $1 -ge 1 ]] || usage
n=$1
shift
dry_run=0
cpu=0
logs="logs/local-$(date +%Y%m%d-%H%M%S)"
args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    --cpu) cpu=1 ;;
    --logs) [[ $# -ge 2 ]] || usage; logs=$2; shift ;;
    --logs=*) logs=${1#--logs=} ;;
    *) args+=("$1") ;;
  esac
  shift
done

python=${PYTHON:-python}
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
  || { echo "error: $python: cannot start Python to pick a free port" >&2; exit 1; }

gpus=0
if [[ $cpu -eq 0 ]] && command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
fi
one_gpu_each=0
[[ $gpus -ge $n ]] && one_gpu_each=1

command_of() {  # the environment and command line of process $1, one shell-quoted line
  local i=$1 env=(LESIONJAX_COORDINATOR=127.0.0.1:$port LESIONJAX_NUM_PROCESSES=$n LESIONJAX_PROCESS_ID=$i)
  [[ $one_gpu_each -eq 1 ]] && env+=(CUDA_VISIBLE_DEVICES=$i)
  printf '%q ' env "${env[@]}" "$python" -m lesionjax.main "${args[@]}"
}

if [[ $dry_run -eq 1 ]]; then
  for ((i = 0; i < n; i++)); do
    echo "$(command_of "$i")> $logs/proc$i.log 2>&1"
  done
  exit 0
fi

mkdir -p "$logs" || exit 1
pids=()
stop_all() {
  trap - INT TERM
  echo "launch/local.sh: stopping $n processes (SIGTERM: each saves and exits; Ctrl-C again to kill)" >&2
  kill -TERM "${pids[@]}" 2>/dev/null
  trap 'kill -KILL "${pids[@]}" 2>/dev/null' INT TERM
}
trap stop_all INT TERM

for ((i = 0; i < n; i++)); do
  # setsid: the processes are not in the terminal's process group, so Ctrl-C reaches this
  # script alone, which forwards one SIGTERM to each (not SIGINT to every grain worker too).
  # exec: the pid kept here is the Python process itself (setsid does not fork in a
  # background subshell, which is not a process group leader).
  ( eval "exec setsid $(command_of "$i")" ) >"$logs/proc$i.log" 2>&1 &
  pids+=($!)
done
echo "launch/local.sh: $n processes (coordinator 127.0.0.1:$port$([[ $one_gpu_each -eq 1 ]] && echo ', one GPU each')), logs in $logs/" >&2
tail -n +1 -F "$logs/proc0.log" 2>/dev/null &
tail_pid=$!

status=0
for pid in "${pids[@]}"; do
  while true; do
    wait "$pid"
    code=$?
    # wait returns early (status > 128) when a trapped signal arrives; wait again then.
    if kill -0 "$pid" 2>/dev/null; then continue; fi
    break
  done
  [[ $status -eq 0 && $code -ne 0 ]] && status=$code
done
sleep 0.2
kill "$tail_pid" 2>/dev/null
wait "$tail_pid" 2>/dev/null
exit "$status"

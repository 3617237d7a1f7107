#!/usr/bin/env bash
# Traces the daemon (dist/main.js) during a short loop of one verb, to see
# where a Mount+Unmount or a Remove spends its time. Needs root, strace, and
# `npx tsc -p . && npx tsc -p bench` done. Scratch directory, socket and state
# root of its own; removes them afterwards.
#
#   bench/trace.sh cycle|create|remove N MOUNTED OUTDIR
#
# Writes OUTDIR/<verb>-<mounted>.{c,tt}.strace (strace -f -c and -f -tt of
# the traced loop only), <verb>-<mounted>.cpuprofile (--cpu-prof of a
# separate, untraced run) and the loop's rate untraced, under strace, and
# under --cpu-prof (TRACES="none c tt prof" by default: pick some). The
# daemon runs as the bench runs it, without --allow-base; ALLOW_BASE=1 adds
# one (the base's parent), which costs each first Mount a second openDir.
set -euo pipefail
verb=$1 n=$2 mounted=$3 out=$(realpath -m "$4")
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
scratch=$(mktemp -d /tmp/ontop-trace-XXXXXX)
daemon_pid=
cleanup() {
  set +e  # every step runs, whatever the one before it did
  [[ -n $daemon_pid ]] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  grep -o " $scratch/[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
  grep -q " $scratch/" /proc/self/mountinfo || rm -rf "$scratch"
}
trap cleanup EXIT
mkdir -p "$scratch/base/sub"
for i in $(seq 0 15); do echo "base file $i" > "$scratch/base/file$i.txt"; done

# run_one TRACE: TRACE is c, tt, prof or none.
run_one() {
  local trace=$1 tag="$verb-$mounted" node_args=()
  [[ $trace == prof ]] && node_args=(--cpu-prof --cpu-prof-dir="$scratch/prof")
  rm -rf "$scratch/root" "$scratch/ctl"
  node "${node_args[@]}" "$here/dist/main.js" --name ontop-trace --root "$scratch/root" --socket "$scratch/s.sock" \
    ${ALLOW_BASE:+--allow-base "$scratch"} --log-level warn &
  daemon_pid=$!
  for _ in $(seq 100); do [[ -S $scratch/s.sock ]] && break; sleep 0.05; done
  mkfifo "$scratch/ctl"
  node "$here/dist-bench/bench/loop.js" --socket "$scratch/s.sock" --base "$scratch/base" --verb "$verb" --n "$n" --mounted "$mounted" --pause \
    < "$scratch/ctl" > "$scratch/rate" 2> "$scratch/loop.err" &
  local loop_pid=$!
  exec 3> "$scratch/ctl"
  until grep -q ready "$scratch/loop.err"; do sleep 0.1; done
  local strace_pid=
  case $trace in
    c) strace -f -c -p "$daemon_pid" -o "$out/$tag.c.strace" & strace_pid=$! ;;
    tt) strace -f -tt -T -p "$daemon_pid" -o "$out/$tag.tt.strace" & strace_pid=$! ;;
  esac
  [[ -n $strace_pid ]] && sleep 1
  echo >&3
  until grep -q done "$scratch/loop.err"; do sleep 0.1; done
  [[ -n $strace_pid ]] && { kill -INT "$strace_pid"; wait "$strace_pid" || true; }
  echo >&3
  exec 3>&-
  wait "$loop_pid"
  echo "$trace: $(cat "$scratch/rate")" | tee -a "$out/$tag.rates"
  kill "$daemon_pid"; wait "$daemon_pid" || true; daemon_pid=
  if [[ $trace == prof ]]; then mv "$scratch"/prof/*.cpuprofile "$out/$tag.cpuprofile"; fi
  rm -f "$scratch/ctl"
}
: > "$out/$verb-$mounted.rates"
for t in ${TRACES:-none c tt prof}; do run_one "$t"; done

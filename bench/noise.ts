// How much CPU the rest of the machine took while a phase ran: all busy
// time in /proc/stat minus the bench's own and its children's. On a small
// shared VM this is what makes two runs disagree, so every row carries it.
import fs from 'node:fs';
import os from 'node:os';

const TICKS_PER_S = 100; // USER_HZ, the unit of /proc/stat and /proc/<pid>/stat on Linux

interface Snapshot {
  at: bigint;
  busy: number;
  ours: number;
}

function machineBusy(): number {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest is already in user)
  return f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!;
}

function selfWithReapedChildren(): number {
  const stat = fs.readFileSync('/proc/self/stat', 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
  return f[11]! + f[12]! + f[13]! + f[14]!; // utime stime cutime cstime
}

/** CPU ticks of our running children (the daemon, the echo server, docker CLIs), from /proc/self/task/<tid>/children. */
function liveChildren(): number {
  let ticks = 0;
  let tasks: string[];
  try {
    tasks = fs.readdirSync('/proc/self/task');
  } catch {
    return 0;
  }
  for (const tid of tasks) {
    let pids: string[];
    try {
      pids = fs.readFileSync(`/proc/self/task/${tid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
    } catch {
      continue;
    }
    for (const pid of pids) {
      try {
        const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
        const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
        ticks += f[11]! + f[12]! + f[13]! + f[14]!;
      } catch {
        /* exited meanwhile: its time is in our cutime once reaped */
      }
    }
  }
  return ticks;
}

export class NoiseMeter {
  snapshot(): Snapshot {
    return { at: process.hrtime.bigint(), busy: machineBusy(), ours: selfWithReapedChildren() + liveChildren() };
  }

  /** CPUs' worth of time other processes used since `s` (0 = none, 2 = both of two cores). */
  othersSince(s: Snapshot): number {
    const now = this.snapshot();
    const seconds = Number(now.at - s.at) / 1e9;
    if (seconds <= 0) return 0;
    const others = now.busy - s.busy - (now.ours - s.ours);
    return Math.max(0, others / TICKS_PER_S / seconds);
  }
}

export function cpuCount(): number {
  return os.availableParallelism?.() ?? os.cpus().length;
}

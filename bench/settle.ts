// Lets the machine settle before the first phase: a set-up that has just
// written a lot (npm ci, dockerd's start, an image import) leaves dirty pages
// whose writeback competes with the daemon for the disk and the CPUs. In one
// run started straight after `.ci/run`'s set-up, the first phases came out
// 2 to 8 times slower than the same phases a minute later.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { NoiseMeter } from './noise.js';

export interface Settled {
  /** Dirty + Writeback from /proc/meminfo when the wait began and ended, MiB. */
  dirtyBeforeMiB: number;
  dirtyAfterMiB: number;
  /** CPUs' worth of time other processes used over the last second of the wait. */
  othersCpu: number;
  waitedS: number;
}

/** Dirty + Writeback pages, MiB. */
export function dirtyMiB(meminfo = fs.readFileSync('/proc/meminfo', 'utf8')): number {
  let kib = 0;
  for (const m of meminfo.matchAll(/^(Dirty|Writeback):\s+(\d+) kB$/gm)) kib += Number(m[2]);
  return kib / 1024;
}

/**
 * Runs sync(1), then waits (at most `maxS`) until at most `limitMiB` are
 * dirty or being written back and other processes use under `quietCpus`.
 */
export async function settle(noise: NoiseMeter, limitMiB = 8, quietCpus = 0.2, maxS = 60): Promise<Settled> {
  const started = Date.now();
  const dirtyBeforeMiB = dirtyMiB();
  spawnSync('sync', { stdio: 'ignore' });
  let dirty: number;
  let others: number;
  do {
    const snap = noise.snapshot();
    await sleep(1000);
    others = noise.othersSince(snap);
    dirty = dirtyMiB();
  } while ((dirty > limitMiB || others > quietCpus) && Date.now() - started < maxS * 1000);
  return { dirtyBeforeMiB, dirtyAfterMiB: dirty, othersCpu: others, waitedS: (Date.now() - started) / 1000 };
}

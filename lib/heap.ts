// The daemon's memory housekeeping: dead Buffers collected before they pile
// up, and memory given back to the kernel once a burst of work is over.
//
// Dead Buffers. A Buffer's bytes live
// outside V8's heap (malloc'd); only a mark-compact frees those of a Buffer
// that reached the old generation, and V8 schedules one by the size of its
// own heap. The daemon's heap stays small (the young generation is bounded:
// limitYoungGeneration in main.ts), so that moment can be hundreds of
// thousands of calls away, while every call that waits on a syscall carries
// a few Buffers (the request as read from the socket, a slab of Buffer's
// pool) into the old generation. Hence a full collection whenever the memory
// held by ArrayBuffers has grown by a bound since the last one.
//
// After a burst. glibc keeps memory that was freed for the next malloc, in
// the arena of the thread that freed it: after thousands of calls, megabytes
// that V8's compiler threads used while optimizing the daemon's hot
// functions, and the malloc'd bytes of dead Buffers. A daemon that goes idle
// after a burst may wait hours for the next one, so at the first idle check
// after a burst it collects in full and hands the free pages back
// (malloc_trim). A daemon kept busy never pays for it.
import v8 from 'node:v8';
import vm from 'node:vm';
import { mallocTrim } from './native.js';

/** Growth of ArrayBuffer memory that triggers a full collection: some thousands of Mount/Unmount pairs' worth. */
export const BUFFER_SLACK_BYTES = 2 * 1024 * 1024;
/** How often the ArrayBuffer total is read (process.memoryUsage: a few µs). */
export const CHECK_INTERVAL_MS = 1000;

export interface BufferWatchOptions {
  /** Bytes held by ArrayBuffers now (default: process.memoryUsage().arrayBuffers). */
  arrayBuffers?: () => number;
  /** Runs a full, blocking garbage collection (default: the process's one fullCollection()). */
  collect?: () => void;
  intervalMs?: number;
  slackBytes?: number;
}

/**
 * Checks every `intervalMs` and collects in full when ArrayBuffers hold more
 * than `slackBytes` above what they held after the last collection (or at
 * the start): dead Buffers are then freed, and live ones become the new
 * floor, so Buffers that are all in use never cause a collection per check.
 * The timer never keeps the process alive. Returns a function that stops it.
 */
export function watchBufferGarbage(opts: BufferWatchOptions = {}): () => void {
  return every(opts.intervalMs ?? CHECK_INTERVAL_MS, bufferGarbageCheck(opts));
}

/** One check of watchBufferGarbage. */
function bufferGarbageCheck(opts: BufferWatchOptions): () => void {
  const arrayBuffers = opts.arrayBuffers ?? (() => process.memoryUsage().arrayBuffers);
  const collect = opts.collect ?? theCollection;
  const slack = opts.slackBytes ?? BUFFER_SLACK_BYTES;
  let floor = arrayBuffers();
  return () => {
    const now = arrayBuffers();
    // A collection V8 made itself, or Buffers let go: the floor follows them down.
    floor = Math.min(floor, now);
    if (now <= floor + slack) return;
    collect();
    floor = arrayBuffers();
  };
}

/** Both of the daemon's checks, with their defaults, on one timer: one wake-up a second for an idle daemon. */
export function watchHeap(): () => void {
  return every(CHECK_INTERVAL_MS, bufferGarbageCheck({}), burstCheck({}));
}

/** Runs the checks every `intervalMs` on a timer that never keeps the process alive; returns a function that stops it. */
function every(intervalMs: number, ...checks: Array<() => void>): () => void {
  const timer = setInterval(() => {
    for (const check of checks) check();
  }, intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

/** A check interval in which the process used at most this share of one CPU counts as idle. */
export const IDLE_CPU_SHARE = 0.01;
/** CPU time in busy intervals that makes a burst: some thousands of calls, not dockerd's occasional Get or a Mount. */
export const BURST_CPU_MICROS = 200_000;

export interface BurstWatchOptions {
  /** CPU time the process (all its threads) has used, in µs (default: process.cpuUsage()). */
  cpuMicros?: () => number;
  /** Runs a full, blocking garbage collection (default: the process's one fullCollection()). */
  collect?: () => void;
  /** Gives malloc's free memory back to the kernel (default: native mallocTrim). */
  trim?: () => unknown;
  intervalMs?: number;
  burstMicros?: number;
}

/**
 * Checks every `intervalMs` how much CPU the process used since the last
 * check. Busy intervals add up; once they reach `burstMicros`, the first
 * idle interval collects in full (dead Buffers give their malloc'd bytes
 * back) and trims malloc's arenas, then counting starts again. The timer
 * never keeps the process alive. Returns a function that stops it.
 */
export function releaseAfterBursts(opts: BurstWatchOptions = {}): () => void {
  return every(opts.intervalMs ?? CHECK_INTERVAL_MS, burstCheck(opts));
}

/** One check of releaseAfterBursts. */
function burstCheck(opts: BurstWatchOptions): () => void {
  const cpuMicros = opts.cpuMicros ?? (() => {
    const { user, system } = process.cpuUsage();
    return user + system;
  });
  const collect = opts.collect ?? theCollection;
  const trim = opts.trim ?? mallocTrim;
  const idleMicros = (opts.intervalMs ?? CHECK_INTERVAL_MS) * 1000 * IDLE_CPU_SHARE;
  const burstMicros = opts.burstMicros ?? BURST_CPU_MICROS;
  let last = cpuMicros();
  let busy = 0;
  return () => {
    const used = cpuMicros() - last;
    last += used;
    if (used > idleMicros) busy += used;
    else if (busy >= burstMicros) {
      busy = 0;
      collect();
      trim();
      // The release's own CPU is no work of the next burst.
      last = cpuMicros();
    }
  };
}

let made: (() => void) | undefined;

/**
 * The default collector of both checks: one fullCollection() for the process, made at the first collection
 * needed (its V8 context costs an idle daemon memory it may never use; two checks must not make two).
 */
function theCollection(): void {
  (made ??= fullCollection())();
}

/**
 * V8's gc(), which node offers only with --expose-gc: the flag is set just
 * long enough to make one context that has it, so the daemon's own global
 * gets no `gc` (one given on node's command line is used as it is).
 */
export function fullCollection(existing: unknown = (globalThis as { gc?: unknown }).gc): () => void {
  if (typeof existing === 'function') return existing as () => void;
  v8.setFlagsFromString('--expose-gc');
  try {
    return vm.runInNewContext('gc') as () => void;
  } finally {
    v8.setFlagsFromString('--no-expose-gc');
  }
}

// Keeps dead Buffers from piling up in the daemon. A Buffer's bytes live
// outside V8's heap (malloc'd); only a mark-compact frees those of a Buffer
// that reached the old generation, and V8 schedules one by the size of its
// own heap. The daemon's heap stays small (the young generation is bounded:
// limitYoungGeneration in main.ts), so that moment can be hundreds of
// thousands of calls away, while every call that waits on a syscall carries
// a few Buffers (the request as read from the socket, a slab of Buffer's
// pool) into the old generation. Hence a full collection whenever the memory
// held by ArrayBuffers has grown by a bound since the last one.
import v8 from 'node:v8';
import vm from 'node:vm';

/** Growth of ArrayBuffer memory that triggers a full collection: some thousands of Mount/Unmount pairs' worth. */
export const BUFFER_SLACK_BYTES = 2 * 1024 * 1024;
/** How often the ArrayBuffer total is read (process.memoryUsage: a few µs). */
export const CHECK_INTERVAL_MS = 1000;

export interface BufferWatchOptions {
  /** Bytes held by ArrayBuffers now (default: process.memoryUsage().arrayBuffers). */
  arrayBuffers?: () => number;
  /** Runs a full, blocking garbage collection (default: fullCollection()). */
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
  const arrayBuffers = opts.arrayBuffers ?? (() => process.memoryUsage().arrayBuffers);
  // Made at the first collection needed: its V8 context costs an idle daemon memory it may never use.
  let collect = opts.collect;
  const slack = opts.slackBytes ?? BUFFER_SLACK_BYTES;
  let floor = arrayBuffers();
  const timer = setInterval(() => {
    const now = arrayBuffers();
    // A collection V8 made itself, or Buffers let go: the floor follows them down.
    floor = Math.min(floor, now);
    if (now <= floor + slack) return;
    (collect ??= fullCollection())();
    floor = arrayBuffers();
  }, opts.intervalMs ?? CHECK_INTERVAL_MS);
  timer.unref();
  return () => clearInterval(timer);
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

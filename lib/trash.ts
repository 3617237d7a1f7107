// The trash: what the daemon no longer needs (removed volumes, old upper and
// work directories) is renamed into trash/ at once and deleted in the
// background, a couple at a time, so that a Remove never waits for a large
// tree and thousands of deletions never queue the daemon's other file
// calls behind them. Deletions wait for a pause in new ones, so that a burst
// of Removes does not compete with its own deletions for the event loop and
// the thread pool. What a crash leaves there is deleted at the next start.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { randomSuffix } from './files.js';
import type { Logger } from './log.js';
import { errorFields } from './log.js';

/** Background deletions running at once; the rest wait their turn. */
const DELETIONS_AT_ONCE = 2;
/** Deletions start once nothing new was put in the trash for this long. */
export const QUIET_MS = 200;
/** Entries waiting beyond which deletions start anyway: a stream of Removes that never pauses still frees space. */
export const BACKLOG = 1000;

export class Trash {
  private readonly pending = new Set<Promise<void>>();
  private readonly waiting: string[] = [];
  private running = 0;
  private lastQueued = 0;
  private timer: NodeJS.Timeout | undefined;
  /** settled() is waiting: deletions run without waiting for a pause. */
  private flushing = 0;

  constructor(
    private readonly dir: string,
    private readonly logger: Logger,
    /** Runs before an entry is deleted: what a recursive rm cannot do well (a btrfs subvolume's destroy). */
    private readonly prepare: (p: string) => Promise<void>,
  ) {}

  /** Renames `p` into trash/ (same filesystem, so it is instant) and returns where it went; undefined if `p` is missing. */
  move(p: string, label: string): string | undefined {
    const dest = path.join(this.dir, `${label}.${randomSuffix()}`);
    try {
      fs.renameSync(p, dest);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    return dest;
  }

  /** Deletes a trash entry in the background; failures are logged and retried at the next start. */
  deleteLater(p: string): void {
    this.waiting.push(p);
    this.lastQueued = performance.now();
    this.startDeletions();
  }

  /**
   * Runs queued deletions, DELETIONS_AT_ONCE at a time: a recursive rm is a
   * stream of thread-pool calls, and thousands at once (the records of every
   * volume after a reboot) would queue every other fs call of the daemon
   * behind them.
   */
  private startDeletions(): void {
    if (this.waiting.length === 0) return;
    const wait = this.lastQueued + QUIET_MS - performance.now();
    if (wait > 0 && this.flushing === 0 && this.waiting.length < BACKLOG) {
      // One timer at a time; when it fires early (more was queued since), it sets itself again.
      this.timer ??= setTimeout(() => {
        this.timer = undefined;
        this.startDeletions();
      }, wait).unref();
      return;
    }
    while (this.running < DELETIONS_AT_ONCE && this.waiting.length > 0) {
      const p = this.waiting.shift() as string;
      this.running++;
      const job: Promise<void> = this.prepare(p)
        .then(() => fsp.rm(p, { recursive: true, force: true, maxRetries: 3 }))
        .catch((err: unknown) => this.logger.warn('could not delete from the trash; the next start tries again', { path: p, ...errorFields(err) }))
        .finally(() => {
          this.pending.delete(job);
          this.running--;
          this.startDeletions();
        });
      this.pending.add(job);
    }
  }

  /** Resolves once every background deletion, queued or running, has finished. */
  async settled(): Promise<void> {
    this.flushing++;
    try {
      this.startDeletions();
      while (this.pending.size > 0) await Promise.all(this.pending);
    } finally {
      this.flushing--;
    }
  }
}

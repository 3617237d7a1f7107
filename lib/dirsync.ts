// The sync of a directory that many calls need durable, such as volumes/
// after a rename into or out of it. Callers share syncs: those of one turn
// of the event loop wait for one fsync, made on the main thread once the
// turn's I/O callbacks have run (for a directory of the local state root
// that is cheaper than a thread-pool round trip). A caller never joins a
// sync that started before it, which may have missed its rename. A sync
// slower than SLOW_SYNC_MS (a disk busy writing back) sends the next ones to
// the thread pool, where only their callers wait, until one is fast again.
import fs from 'node:fs';
import { promisify } from 'node:util';

/** A sync slower than this moves the next ones off the main thread. */
export const SLOW_SYNC_MS = 5;

const fsync = promisify(fs.fsync);
const DIRECTORY = fs.constants.O_RDONLY | fs.constants.O_DIRECTORY;

export class DirSync {
  /** The main-thread sync that this turn's callers wait for. */
  private soon: Promise<void> | undefined;
  /** A sync in the thread pool, and the one that its late callers share after it. */
  private running: Promise<void> | undefined;
  private next: Promise<void> | undefined;
  /** The last sync took longer than slowMs. */
  private slow = false;
  /** SLOW_SYNC_MS, overridable for tests. */
  slowMs = SLOW_SYNC_MS;

  constructor(readonly dir: string) {}

  /** Resolves once an fsync of the directory that started after this call has finished. */
  sync(): Promise<void> {
    if (this.running === undefined && !this.slow) {
      this.soon ??= new Promise<void>((resolve, reject) => {
        setImmediate(() => {
          this.soon = undefined;
          const started = performance.now();
          try {
            const fd = fs.openSync(this.dir, DIRECTORY);
            try {
              fs.fsyncSync(fd);
            } finally {
              fs.closeSync(fd);
            }
            resolve();
          } catch (err) {
            reject(err as Error);
          }
          this.slow = performance.now() - started > this.slowMs;
        });
      });
      return this.soon;
    }
    if (this.running === undefined) {
      const started = performance.now();
      this.running = this.inPool().finally(() => {
        this.running = undefined;
        this.slow = performance.now() - started > this.slowMs;
      });
      return this.running;
    }
    this.next ??= this.running
      .catch(() => undefined)
      .then(() => {
        this.next = undefined;
        return this.sync();
      });
    return this.next;
  }

  private async inPool(): Promise<void> {
    const fd = fs.openSync(this.dir, DIRECTORY);
    try {
      await fsync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }
}

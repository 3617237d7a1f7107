// Who may change what. One process per state root: the daemon holds an
// exclusive flock(2) on daemon.lock for its whole life (an operator tool
// that works without the daemon takes the same lock). Within the daemon,
// every call that touches a volume waits in that volume's queue from its
// first check to its last write, so calls for one name run one at a time,
// in order of arrival; calls for different names run side by side.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { constants, flock } from './native.js';

export class VolumeQueues {
  private readonly tails = new Map<string, Promise<unknown>>();

  /** Runs `fn` once every call queued before it for `name` has finished. */
  run<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(name) ?? Promise.resolve();
    const run = prev.then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(name, tail);
    void tail.then(() => {
      if (this.tails.get(name) === tail) this.tails.delete(name);
    });
    return run;
  }

  /** Resolves once every queued call has finished. */
  async drain(): Promise<void> {
    while (this.tails.size > 0) await Promise.all(this.tails.values());
  }

  /** How many names have calls queued or running. */
  get busy(): number {
    return this.tails.size;
  }
}

/**
 * Takes an exclusive lock on `file` without waiting, kept until the handle is
 * closed (or the process ends): a second daemon on the same state root must
 * not start. Undefined when another process holds it.
 */
export async function lockExclusive(file: string): Promise<fsp.FileHandle | undefined> {
  const fh = await fsp.open(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  try {
    await flock(fh.fd, constants.LOCK_EX | constants.LOCK_NB);
    return fh;
  } catch (err) {
    await fh.close();
    // Only EAGAIN is possible for a fresh descriptor of a regular file.
    /* c8 ignore next */
    if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
    return undefined;
  }
}

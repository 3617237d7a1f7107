// Per-volume locks: an in-process queue per name (the daemon never waits on
// itself) in front of flock(2) on root/locks/<name> (another process, such as
// an admin command, is excluded too).
//
// The lock file lives outside the volume's directory so that Create can lock
// a name before its volume exists and Remove can hold it while the volume
// directory is renamed away. Remove (and a refused Create) deletes the file
// while holding it; a process that opened the old file and was waiting then
// finds, once granted, that the path no longer names its inode and starts
// over, so two holders can never lock two different files of one name.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { constants, flock } from './native.js';

export interface Held {
  /** Delete the lock file when the lock is released: the name is gone for good. */
  discard(): void;
}

export class VolumeLocks {
  private readonly tails = new Map<string, Promise<unknown>>();

  constructor(private readonly dir: string) {}

  /**
   * Runs `fn` holding the lock of `name`; calls for one name run in order of
   * arrival. `crossProcess` false takes only the in-process queue: for work
   * no other process does (start-up's sweep of mount records), where making
   * a lock file for each of 10,000 volumes would cost more than the work.
   */
  with<T>(name: string, fn: (held: Held) => Promise<T>, crossProcess = true): Promise<T> {
    const prev = this.tails.get(name) ?? Promise.resolve();
    const run = prev.then(() => (crossProcess ? this.locked(name, fn) : fn({ discard: () => {} })));
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

  private async locked<T>(name: string, fn: (held: Held) => Promise<T>): Promise<T> {
    const file = path.join(this.dir, name);
    const fd = await acquire(file);
    let discard = false;
    try {
      return await fn({ discard: () => (discard = true) });
    } finally {
      try {
        if (discard) await fsp.rm(file, { force: true });
      } finally {
        fs.closeSync(fd); // releases the flock
      }
    }
  }
}

/** Opens and locks `file` (creating it), retrying while another holder deletes it under us; returns the descriptor. */
async function acquire(file: string): Promise<number> {
  for (;;) {
    // open, fstat, stat and close are sync on purpose: single-inode calls on the local state root that cost
    // ~2 µs each against ~40 µs for a thread-pool round trip; only the flock, which may wait, goes async.
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
    let current = false;
    try {
      await flock(fd, constants.LOCK_EX);
      const held = fs.fstatSync(fd);
      const now = fs.statSync(file, { throwIfNoEntry: false });
      current = now !== undefined && now.ino === held.ino && now.dev === held.dev;
    } finally {
      // Not current: the file was deleted while we waited; lock the new one.
      if (!current) fs.closeSync(fd);
    }
    if (current) return fd;
  }
}

/**
 * Takes an exclusive lock on `file` without waiting, for the daemon's whole
 * life: a second daemon on the same state root must not start. Undefined when
 * another process holds it.
 */
export async function tryLockForever(file: string): Promise<fsp.FileHandle | undefined> {
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

/**
 * Deletes a lock file left by a killed process (a Create or Remove cut short)
 * if nobody holds it: taken without waiting and deleted while held, as
 * Remove does, so a process waiting on it starts over on a new file. False
 * when it is held (or already gone).
 */
export async function discardIfFree(file: string): Promise<boolean> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(file, fs.constants.O_RDWR);
  } catch {
    return false; // gone already
  }
  const free = await flock(fh.fd, constants.LOCK_EX | constants.LOCK_NB).then(
    () => true,
    () => false, // EAGAIN: someone holds it; it is theirs to delete
  );
  // Replaced between our open and our flock (another holder discarded it)? Then the path names a new
  // file that is not ours to delete. stat by path would show it; see acquire() for the same check.
  const ours = free && (await fsp.stat(file).then((now) => fh.stat().then((held) => now.ino === held.ino && now.dev === held.dev), () => false));
  if (ours) await fsp.rm(file, { force: true });
  await fh.close();
  return ours;
}

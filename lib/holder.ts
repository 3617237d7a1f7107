// Who holds the state root. daemon.lock is held by one process at a time:
// the daemon, or an `ontop` command working offline (no daemon answering).
// The holder writes its pid and command line into the lock file, so that a
// daemon started while a command works can wait for it (bounded) rather than
// fail, and a command can say who is in its way. Never two writers: the
// flock(2) decides; what the file says only shapes the messages and whether
// to wait.
import type fsp from 'node:fs/promises';
import { DriverError } from './errors.js';
import { readSmallFile } from './files.js';
import { lockExclusive } from './lock.js';
import type { Logger } from './log.js';

export interface Holder {
  pid: number;
  /** The command line, e.g. "ontop commit web". */
  command: string;
  /** A daemon serves the socket; a command works on the state root by itself, briefly. */
  role: 'daemon' | 'command';
}

export interface AcquireOptions {
  /** Who we are; a daemon by default. */
  holder?: { command: string; role: Holder['role'] };
  /** How long a daemon waits for a command holding the state root. Default DEFAULT_WAIT_MS. */
  waitMs?: number;
  /** Poll interval; LOCK_NB is retried rather than blocking a thread on flock. */
  pollMs?: number;
}

/** A daemon waits this long for an offline command to finish (a commit of many files takes a while). */
export const DEFAULT_WAIT_MS = 60_000;
/** A holder that does not say who it is (an older ontop, or one writing its record right now) is waited for this long. */
export const UNKNOWN_WAIT_MS = 2_000;

/** The state root is held by another process; `holder` says who, when it says. */
export class RootBusyError extends DriverError {
  constructor(
    message: string,
    readonly holder: Holder | undefined,
  ) {
    super(message);
  }
}

/** The holder recorded in the lock file, if it parses and its process lives. */
export function readHolder(file: string): Holder | undefined {
  const read = readSmallFile(file);
  if (read.text === undefined) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(read.text);
  } catch {
    return undefined;
  }
  const h = v as Partial<Holder> | null;
  if (typeof h?.pid !== 'number' || typeof h.command !== 'string' || (h.role !== 'daemon' && h.role !== 'command')) return undefined;
  return isAlive(h.pid) ? { pid: h.pid, command: h.command, role: h.role } : undefined;
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export function describeHolder(h: Holder): string {
  return `\`${h.command}\` (pid ${h.pid})`;
}

/**
 * Takes daemon.lock and records us in it. A daemon finding an offline
 * command there waits for it (up to waitMs, saying so once in the log); a
 * command never waits. Anything else holding it is refused at once.
 */
export async function acquireRoot(file: string, root: string, logger: Logger, opts: AcquireOptions = {}): Promise<fsp.FileHandle> {
  const me = opts.holder ?? { command: 'ontop', role: 'daemon' as const };
  const waitMs = opts.waitMs ?? DEFAULT_WAIT_MS;
  const started = Date.now();
  let announced: number | undefined;
  for (;;) {
    const fh = await lockExclusive(file);
    if (fh !== undefined) {
      const record = JSON.stringify({ pid: process.pid, command: me.command, role: me.role, since: new Date().toISOString() }) + '\n';
      await fh.truncate(0);
      await fh.write(record, 0);
      return fh;
    }
    const h = readHolder(file);
    if (h === undefined || h.role === 'daemon' || me.role === 'command') {
      // A holder that does not say who it is may be writing its record right now: a daemon gives it a moment.
      if (h !== undefined || me.role === 'command' || Date.now() - started >= Math.min(waitMs, UNKNOWN_WAIT_MS)) {
        throw new RootBusyError(`another ontop process is using the state root ${root}${h === undefined ? '' : `: ${describeHolder(h)}`}`, h);
      }
    } else {
      if (announced !== h.pid) {
        announced = h.pid;
        logger.warn(`waiting for ${describeHolder(h)} to release the state root`, { root, pid: h.pid, command: h.command, waitMs });
      }
      if (Date.now() - started >= waitMs) {
        throw new RootBusyError(
          `${describeHolder(h)} still holds the state root ${root} after ${Math.round(waitMs / 1000)} s: let it finish (or stop it), then start ontop again`,
          h,
        );
      }
    }
    await new Promise((r) => setTimeout(r, opts.pollMs ?? 100));
  }
}

// On-disk state under the state root: the layout, volume.json, mount records,
// the trash and the boot id. Knows files, not overlays or dockerd.
//
//   volumes/<name>/volume.json   base, volatile, createdAt, options (fsync'd)
//   volumes/<name>/upper/        the volume's changes (overlay upperdir)
//   volumes/<name>/work/         overlay workdir, made fresh for every first mount
//   volumes/<name>/merged/       the mountpoint handed to dockerd (made at the first Mount)
//   volumes/<name>/users/<ID>    one record per mount ID, holding its count (users/ made at the first Mount)
//   tmp/<name>.<hex>/            a volume being created (renamed into volumes/)
//   trash/<name>[.<kind>].<hex>  removed volumes and old layers, deleted in the background
//   locks/<name>                 flock(2) files, one per name (lib/lock.ts)
//   boot-id                      the kernel boot id seen at the last start
//   daemon.lock                  held by the running daemon
//
// Mount records are never fsync'd on purpose: they only mean something
// within one boot, and after a power loss the boot id changes and start-up
// clears them all (the kernel lost the mounts too).
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Logger } from './log.js';
import { errorFields } from './log.js';
import { checkMountId } from './names.js';

export interface VolumeMeta {
  version: 1;
  /** Real path on the host. */
  base: string;
  volatile: boolean;
  /** RFC 3339. */
  createdAt: string;
  /** The options as the user gave them. */
  options: Record<string, string>;
}

export interface VolumePaths {
  dir: string;
  meta: string;
  upper: string;
  work: string;
  merged: string;
  users: string;
}

/** Owner and mode of a directory. */
export interface Owner {
  uid: number;
  gid: number;
  mode: number;
}

/**
 * Gives `dir` this owner and mode. Used on an upper layer: the overlay's root
 * directory takes its attributes from the upper's, so a volume's root looks
 * like its base's root only if the upper is made to match.
 */
export function takeOwner(dir: string, o: Owner): void {
  // Sync on purpose: dir is on the local state root (see Store.create). mkdir made it ours: skip the chown
  // when that is already right (the common case, a root-owned base).
  if (o.uid !== process.geteuid!() || o.gid !== process.getegid!()) fs.chownSync(dir, o.uid, o.gid);
  fs.chmodSync(dir, o.mode & 0o7777);
}

const fdatasync = promisify(fs.fdatasync);
const fsync = promisify(fs.fsync);

/** Background deletions running at once; the rest wait their turn. */
const DELETIONS_AT_ONCE = 2;

export type Fault = (point: string) => void | Promise<void>;

/** Identity and version of a file as stat'ed: it changes whenever the file is replaced or written. */
export function stampOf(st: fs.BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/** Prefix of a mount record being written (renamed to its ID when complete); never a valid mount ID. */
export const TMP_RECORD = '.tmp.';

function isValidId(id: string): boolean {
  try {
    checkMountId(id);
    return true;
  } catch {
    return false;
  }
}

export function randomSuffix(): string {
  return randomBytes(8).toString('hex');
}

/**
 * Reads a small file of the state root, sync: opened non-blocking and without following a symlink, and read
 * only once fstat says it is a regular file, so that nothing put in its place (a FIFO, a device, a link) can
 * block or mislead the daemon. `problem` says in words what is wrong; `missing` when it does not exist.
 */
export function readSmallFile(file: string): { text?: string; problem?: string; missing?: true; stamp?: string } {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { missing: true, problem: 'does not exist' };
    if (code === 'ELOOP') return { problem: 'is a symbolic link, not a regular file' };
    return { problem: `cannot be read (${(err as Error).message})` };
  }
  try {
    const st = fs.fstatSync(fd, { bigint: true });
    if (!st.isFile()) {
      const kind = st.isDirectory() ? 'a directory' : st.isFIFO() ? 'a FIFO' : st.isSocket() ? 'a socket' : 'a special file';
      return { problem: `is ${kind}, not a regular file` };
    }
    return { text: fs.readFileSync(fd, 'utf8'), stamp: stampOf(st) };
  } catch (err) {
    return { problem: `cannot be read (${(err as Error).message})` };
  } finally {
    fs.closeSync(fd);
  }
}

/** Problems with a parsed volume.json; empty when it is usable. */
export function checkMeta(value: unknown): string[] {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return ['volume.json does not hold an object'];
  const m = value as Partial<Record<keyof VolumeMeta, unknown>>;
  const problems: string[] = [];
  if (m.version !== 1) problems.push(`volume.json has version ${JSON.stringify(m.version)}; this ontop understands version 1`);
  if (typeof m.base !== 'string' || !m.base.startsWith('/')) problems.push('volume.json has no absolute "base"');
  if (typeof m.volatile !== 'boolean') problems.push('volume.json has no boolean "volatile"');
  if (typeof m.createdAt !== 'string' || Number.isNaN(Date.parse(m.createdAt))) problems.push('volume.json has no valid "createdAt"');
  if (typeof m.options !== 'object' || m.options === null) problems.push('volume.json has no "options"');
  return problems;
}

export class Store {
  readonly volumes: string;
  readonly tmp: string;
  readonly trash: string;
  readonly locks: string;
  readonly bootIdFile: string;
  readonly daemonLock: string;
  private readonly pending = new Set<Promise<void>>();
  private readonly waiting: string[] = [];
  private running = 0;
  private syncRunning: Promise<void> | undefined;
  private syncNext: Promise<void> | undefined;

  constructor(
    readonly root: string,
    private readonly logger: Logger,
    private readonly fault: Fault = () => {},
  ) {
    this.volumes = path.join(root, 'volumes');
    this.tmp = path.join(root, 'tmp');
    this.trash = path.join(root, 'trash');
    this.locks = path.join(root, 'locks');
    this.bootIdFile = path.join(root, 'boot-id');
    this.daemonLock = path.join(root, 'daemon.lock');
  }

  paths(name: string): VolumePaths {
    const dir = path.join(this.volumes, name);
    return {
      dir,
      meta: path.join(dir, 'volume.json'),
      upper: path.join(dir, 'upper'),
      work: path.join(dir, 'work'),
      merged: path.join(dir, 'merged'),
      users: path.join(dir, 'users'),
    };
  }

  async init(): Promise<void> {
    for (const d of [this.volumes, this.tmp, this.trash, this.locks]) await fsp.mkdir(d, { mode: 0o700, recursive: true });
  }

  /** Names of the directories in volumes/. */
  async listNames(): Promise<string[]> {
    const entries = await fsp.readdir(this.volumes, { withFileTypes: true });
    return entries.filter((e) => e.isDirectory()).map((e) => e.name);
  }

  /**
   * Reads volume.json; never throws: what is wrong comes back as problems. Sync on purpose: a small file on
   * the local state root (~15 µs, against ~40 µs for a thread-pool round trip), read on a volume's first Get
   * or Mount. Opened non-blocking and read only if it is a regular file: a FIFO put there would otherwise
   * stop the daemon. A usable volume.json comes with its stamp (stampOf), taken from the descriptor read.
   */
  readMeta(name: string): { meta?: VolumeMeta; problems: string[]; stamp?: string } {
    const read = readSmallFile(this.paths(name).meta);
    if (read.text === undefined) return { problems: [`volume.json ${read.problem as string}`] };
    const { text, stamp } = read;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      return { problems: [`volume.json is damaged (${(err as Error).message})`] };
    }
    const problems = checkMeta(value);
    return problems.length > 0 ? { problems } : { meta: value as VolumeMeta, problems, stamp };
  }

  /**
   * Builds the volume under tmp/ and renames it into volumes/: a crash, or a
   * power loss, leaves either no volume or a whole one. The new tree
   * (volume.json, upper/ and the directory holding them) is synced before the
   * rename, and volumes/ after it. When anything fails after the rename, the
   * volume is renamed out again (to the trash) before the error is thrown, so
   * that memory (no volume) and disk agree. Only the syncs go to the thread
   * pool, the three of the tree at once.
   */
  async create(name: string, meta: VolumeMeta, upperLike: Owner): Promise<void> {
    const tmp = path.join(this.tmp, `${name}.${randomSuffix()}`);
    const dir = this.paths(name).dir;
    const fds: number[] = [];
    const open = (p: string, flags: number | string, mode?: number): number => {
      const fd = fs.openSync(p, flags, mode);
      fds.push(fd);
      return fd;
    };
    let renamed = false;
    try {
      fs.mkdirSync(tmp, { mode: 0o700 });
      // merged/, work/ and users/ are made by the first Mount: one inode each fewer for Create.
      const upper = path.join(tmp, 'upper');
      fs.mkdirSync(upper, { mode: 0o700 });
      takeOwner(upper, upperLike);
      const metaFd = open(path.join(tmp, 'volume.json'), 'wx', 0o600);
      fs.writeFileSync(metaFd, JSON.stringify(meta, null, 2) + '\n');
      const dirFlags = fs.constants.O_RDONLY | fs.constants.O_DIRECTORY;
      await Promise.all([fdatasync(metaFd), fsync(open(upper, dirFlags)), fsync(open(tmp, dirFlags))]);
      await this.fault('create:before-rename');
      fs.renameSync(tmp, dir);
      renamed = true;
      await this.fault('create:after-rename');
      await this.syncVolumesDir();
    } catch (err) {
      if (renamed) {
        // The rename happened but is not known to be durable: take the volume out of sight again. Should
        // that fail too, the volume stays, whole, and the caller is told so (err.volumeKept).
        try {
          const out = this.moveToTrash(dir, `${name}.failed`);
          if (out !== undefined) this.deleteLater(out);
        } catch (undo) {
          this.logger.error('could not take back a volume whose creation failed after its rename; it stays', { volume: name, ...errorFields(undo) });
          throw Object.assign(err as Error, { volumeKept: true });
        }
      } else {
        await fsp.rm(tmp, { recursive: true, force: true });
      }
      throw err;
    } finally {
      for (const fd of fds) fs.closeSync(fd);
    }
  }

  /**
   * fsyncs volumes/. Concurrent callers share syncs: a caller joins the next
   * sync that starts after its call, never one already running (which may
   * have missed its rename).
   */
  syncVolumesDir(): Promise<void> {
    if (this.syncRunning === undefined) {
      this.syncRunning = this.fsyncDir(this.volumes).finally(() => (this.syncRunning = undefined));
      return this.syncRunning;
    }
    this.syncNext ??= this.syncRunning
      .catch(() => undefined)
      .then(() => {
        this.syncNext = undefined;
        return this.syncVolumesDir();
      });
    return this.syncNext;
  }

  private async fsyncDir(dir: string): Promise<void> {
    // open and close are sync on purpose (see create); the fsync, which waits for the disk, is not.
    const fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    try {
      await fsync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * The mount records of a volume, and what in users/ is not a valid record
   * (damage: users/ that is no directory or cannot be read, an entry that is
   * no regular file, a name that is no mount ID, a count that is no positive
   * integer), described for a human. Only a missing users/ means "no
   * records". A damaged entry with a usable name still counts as one user: it
   * was written only while mounted. Half-written records (TMP_RECORD prefix)
   * left by a killed process never count: their rename, which would have made
   * them a record, did not happen. An entry is opened non-blocking and without
   * following a symlink, and read only once fstat says it is a regular file:
   * a FIFO or a device put there can never block the daemon.
   */
  inspectUsers(name: string): { users: Map<string, number>; damaged: string[] } {
    const dir = this.paths(name).users;
    const users = new Map<string, number>();
    const damaged: string[] = [];
    let entries: string[];
    try {
      entries = fs.readdirSync(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { users, damaged }; // made again by the next Mount
      damaged.push(`users/ cannot be read (${(err as Error).message})`);
      return { users, damaged };
    }
    for (const id of entries) {
      const file = path.join(dir, id);
      if (id.startsWith(TMP_RECORD)) {
        try {
          fs.unlinkSync(file);
        } catch {
          // Not a file (or gone): it is no record either way, and unlink is all a start does to the unknown.
        }
        continue;
      }
      const shown = JSON.stringify(id).slice(1, -1).slice(0, 80);
      const read = readSmallFile(file);
      const n = read.text !== undefined && /^[1-9][0-9]{0,8}$/.test(read.text.trim()) ? Number(read.text.trim()) : undefined;
      if (!isValidId(id)) damaged.push(`users/${shown} is not named after a mount ID`);
      else if (read.problem !== undefined) damaged.push(`users/${id} ${read.problem}`);
      else if (n === undefined) damaged.push(`users/${id} holds ${JSON.stringify(String(read.text).slice(0, 20))}, not a count`);
      users.set(id, n ?? 1);
    }
    return { users, damaged };
  }

  /**
   * Writes a record atomically (a temporary file renamed over it): a kill mid-write never leaves a torn count.
   * Sync on purpose: a record is a few bytes, never fsync'd, on the local state root: writing it and the
   * rename cost a few µs each, against ~40 µs for each thread-pool round trip of fs.promises.
   */
  async writeUser(name: string, id: string, count: number): Promise<void> {
    const dir = this.paths(name).users;
    const tmp = path.join(dir, `${TMP_RECORD}${id}.${randomSuffix()}`);
    const write = (): void => {
      fs.writeFileSync(tmp, String(count));
      try {
        fs.renameSync(tmp, path.join(dir, id));
      } catch (err) {
        fs.rmSync(tmp, { force: true });
        throw err;
      }
    };
    try {
      write();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      fs.mkdirSync(dir, { mode: 0o700 }); // not recursive: no record for a volume that is gone
      write();
    }
  }

  deleteUser(name: string, id: string): void {
    // unlink, not rm: rm answers an EPERM (an immutable users/) with a misleading ENOTDIR from a retry as a directory.
    // Sync on purpose: one unlink of a small file on the local state root (~2 µs against ~40 µs async).
    try {
      fs.unlinkSync(path.join(this.paths(name).users, id));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }

  /** Deletes these records: the users/ directory is emptied, never replaced. */
  clearUsers(name: string, ids: Iterable<string>): void {
    for (const id of ids) this.deleteUser(name, id);
  }

  /** How many records a users/ directory (or one set aside) holds; half-written ones do not count. */
  countRecords(dir: string): number {
    try {
      return fs.readdirSync(dir).filter((n) => !n.startsWith(TMP_RECORD)).length;
    } catch {
      return 0; // set aside was a file, not a directory: damage, and it is gone with the rest
    }
  }

  /**
   * Renames users/ to a unique name beside it, taking every record out of
   * sight in one step; returns the new path, or undefined if there was no
   * users/. It goes with the volume's directory.
   */
  setUsersAside(name: string): string | undefined {
    const p = this.paths(name);
    const aside = path.join(p.dir, `users.removed.${randomSuffix()}`);
    try {
      fs.renameSync(p.users, aside);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    return aside;
  }

  /** Renames `p` into trash/ (same filesystem, so it is instant) and returns where it went; undefined if `p` is missing. */
  moveToTrash(p: string, label: string): string | undefined {
    const dest = path.join(this.trash, `${label}.${randomSuffix()}`);
    try {
      fs.renameSync(p, dest); // sync on purpose: one rename within the local state root (see create)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    return dest;
  }

  /** Moves `p` (if present) to the trash, deletes it in the background, and makes `p` again, empty. */
  async freshDir(p: string, label: string, mode: number): Promise<void> {
    const old = this.moveToTrash(p, label);
    if (old !== undefined) this.deleteLater(old);
    fs.mkdirSync(p, { mode });
  }

  /**
   * freshDir for an overlay workdir no overlay uses any more (its overlay was unmounted, not detached): the
   * kernel leaves only an empty work/ inside, so removing that one entry makes it fresh in place. Anything
   * else there goes the freshDir way.
   */
  async freshWorkDir(p: string, label: string, mode: number): Promise<void> {
    // Sync on purpose: single-inode operations on the local state root. The rmdir is the dearer one (15 to
    // 90 µs measured: ext4 frees the directory's block, with a discard when mounted with -o discard), yet
    // sending it through the pool measured no faster, sequential or with 8 clients (within noise).
    try {
      fs.rmdirSync(path.join(p, 'work'));
      if (fs.readdirSync(p).length === 0) return;
    } catch {
      // Missing (the first Mount after Create), or not as the kernel leaves it: start afresh.
    }
    await this.freshDir(p, label, mode);
  }

  /** Deletes a trash entry in the background; failures are logged and retried at the next start. */
  deleteLater(p: string): void {
    this.waiting.push(p);
    this.startDeletions();
  }

  /**
   * Runs queued deletions, DELETIONS_AT_ONCE at a time: a recursive rm is a
   * stream of thread-pool calls, and thousands at once (the records of every
   * volume after a reboot) would queue every other fs call of the daemon
   * behind them.
   */
  private startDeletions(): void {
    while (this.running < DELETIONS_AT_ONCE && this.waiting.length > 0) {
      const p = this.waiting.shift() as string;
      this.running++;
      const job: Promise<void> = fsp
        .rm(p, { recursive: true, force: true, maxRetries: 3 })
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
    while (this.pending.size > 0) await Promise.all(this.pending);
  }

  /** Names of the lock files in locks/. */
  lockNames(): Promise<string[]> {
    return fsp.readdir(this.locks);
  }

  /** Entries of tmp/ (half-created volumes) and trash/ left by an earlier run. */
  async leftovers(): Promise<{ tmp: string[]; trash: string[] }> {
    const [tmp, trash] = await Promise.all([fsp.readdir(this.tmp), fsp.readdir(this.trash)]);
    return { tmp: tmp.map((n) => path.join(this.tmp, n)), trash: trash.map((n) => path.join(this.trash, n)) };
  }

  /** The boot id in `file`; undefined when it is missing. Never blocks: a FIFO there is refused, not read. */
  readBootId(file: string): string | undefined {
    const read = readSmallFile(file);
    if (read.missing) return undefined;
    if (read.problem !== undefined) throw new Error(`${file} ${read.problem}`);
    return (read.text as string).trim();
  }

  /** Replaces boot-id atomically (write, fsync, rename). */
  async writeBootId(id: string): Promise<void> {
    const tmp = `${this.bootIdFile}.${randomSuffix()}`;
    const fh = await fsp.open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(id + '\n');
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, this.bootIdFile);
  }
}

// The state root on disk: every path under it and every read and write of
// it go through here (volume.json, mount records, the trash, the boot id, the
// daemon's lock). Knows files, not overlays or dockerd. The state root is a
// local filesystem (openStore refuses others), so its calls are synchronous
// except the syncs and the background deletions (docs/architecture.md).
//
//   volumes/<name>/volume.json   base, volatile, createdAt, options (fsync'd)
//   volumes/<name>/upper/        the volume's changes (overlay upperdir); a btrfs subvolume on btrfs
//   volumes/<name>/scratch/      upper=tmpfs: the volume's tmpfs while mounted, holding upper/ and work/
//   volumes/<name>/work/         overlay workdir, made fresh for every first mount
//   volumes/<name>/merged/       the mountpoint handed to dockerd (made at the first Mount)
//   volumes/<name>/users/<ID>    one record per mount ID, holding its count (users/ made at the first Mount)
//   volumes/<name>/users/.tmp.one  holds "1"; a first use's record is a hard link to it (no record itself)
//   tmp/<name>.<hex>/            a volume being created (renamed into volumes/)
//   trash/<name>[.<kind>].<hex>  removed volumes and old layers, deleted in the background
//   boot-id                      the kernel boot id seen at the last start
//   daemon.lock                  held by the running daemon
//
// Mount records are never fsync'd on purpose: they only mean something
// within one boot, and after a power loss the boot id changes and start-up
// clears them all (the kernel lost the mounts too).
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { buildVolume } from './creation.js';
import { DirSync } from './dirsync.js';
import { DriverError } from './errors.js';
import type { Logger } from './log.js';
import type { AcquireOptions } from './holder.js';
import { acquireRoot } from './holder.js';
import type { Owner } from './files.js';
import { randomSuffix, readSmallFile, stampOf } from './files.js';
import type { Records } from './records.js';
import { addRecord, deleteRecord, ONE_RECORD, readRecords, writeRecord } from './records.js';
import { Trash } from './trash.js';
import type { VolumeMeta } from './meta.js';
import { checkMeta, upperKindOf } from './meta.js';
import { Uppers } from './uppers.js';

export type { UpperKind, VolumeMeta } from './meta.js';
export { checkMeta, layersOf, upperKindOf, UPPER_KINDS } from './meta.js';

/** What a clone adds to Create: where its upper's content comes from. */
export interface CreateExtras {
  /** A volume whose upper the new one snapshots, where both are btrfs subvolumes. */
  snapshotOf?: string;
  /** Copies content into the new upper (when it was not snapshotted), still under tmp/. */
  fill?: (upper: string) => Promise<void>;
}

export interface VolumePaths {
  dir: string;
  meta: string;
  upper: string;
  work: string;
  merged: string;
  users: string;
  /** upper=tmpfs: where the volume's tmpfs is mounted while the volume is; it holds upper/ and work/. */
  scratch: string;
}


/** Test-only: called between steps; throwing from it simulates a crash there. */
export type FaultHook = (point: string) => void | Promise<void>;

/** volume.json as read: the metadata when usable, what is wrong otherwise, and the stamp of what was read. */
export interface MetaRead {
  meta?: VolumeMeta;
  problems: string[];
  /** stampOf the file read: a first Mount re-reads it only when this changed. */
  stamp?: string;
}

/** statfs(2) f_type of filesystems that cannot hold an overlay upper layer. */
const UNFIT_FILESYSTEMS = new Map<number, string>([
  [0x794c7630, 'overlay'],
  [0x6969, 'nfs'],
  [0x65735546, 'fuse (or virtiofs)'],
  [0xff534d42, 'cifs'],
  [0xfe534d42, 'smb2'],
  [0x517b, 'smb'],
]);



export class Store {
  readonly volumes: string;
  readonly tmp: string;
  readonly trash: string;
  readonly bootIdFile: string;
  readonly daemonLock: string;
  private readonly bin: Trash;
  private readonly volumesSync: DirSync;
  /** Volumes whose users/ONE_RECORD this process wrote itself: the file their first uses' records link to. */
  private readonly ones = new Set<string>();
  readonly uppers: Uppers;

  constructor(
    readonly root: string,
    private readonly logger: Logger,
    private readonly fault: FaultHook = () => {},
  ) {
    this.volumes = path.join(root, 'volumes');
    this.volumesSync = new DirSync(this.volumes);
    this.tmp = path.join(root, 'tmp');
    this.trash = path.join(root, 'trash');
    this.uppers = new Uppers(root);
    // A volume's upper may be a btrfs subvolume: destroyed whole (one ioctl) before the rest is deleted.
    this.bin = new Trash(this.trash, logger, (p) => this.uppers.destroySubvolumes(p));
    this.bootIdFile = path.join(root, 'boot-id');
    this.daemonLock = path.join(root, 'daemon.lock');
  }

  paths(name: string): VolumePaths {
    // Concatenation, not path.join: a checked name (names.ts) has no "/" and is no "." or "..", and volumes is
    // normalized, so the result is the same; paths() runs several times in every verb.
    const dir = `${this.volumes}/${name}`;
    return {
      dir,
      meta: `${dir}/volume.json`,
      upper: `${dir}/upper`,
      work: `${dir}/work`,
      merged: `${dir}/merged`,
      users: `${dir}/users`,
      scratch: `${dir}/scratch`,
    };
  }

  /**
   * Where a volume's changes are now: upper/, or for a tmpfs volume
   * scratch/upper while its tmpfs is mounted; undefined while it is not
   * (its changes are gone). What diff and commit read.
   */
  upperPath(name: string, meta: Pick<VolumeMeta, 'upper'>): string | undefined {
    const p = this.paths(name);
    if (upperKindOf(meta) !== 'tmpfs') return p.upper;
    return this.scratchMounted(name) ? path.join(p.scratch, 'upper') : undefined;
  }

  /** True when a filesystem (the volume's tmpfs) is mounted on scratch/: its device is not the state root's. */
  scratchMounted(name: string): boolean {
    const st = fs.statSync(this.paths(name).scratch, { throwIfNoEntry: false });
    return st !== undefined && st.dev !== fs.statSync(this.root).dev;
  }

  /** Bytes a tmpfs volume's changes hold now: 0 while its tmpfs is not mounted (they are gone); undefined if unknown. */
  tmpfsUsed(name: string): number | undefined {
    try {
      if (!this.scratchMounted(name)) return 0;
      const st = fs.statfsSync(this.paths(name).scratch);
      return (st.blocks - st.bfree) * st.bsize;
    } catch {
      return undefined; // unmounted between the two calls: Get shows what it can
    }
  }

  /** Bytes a subvolume upper's quota group counts; undefined when that cannot be read (quotas off since, upper gone). */
  async subvolumeUsed(name: string): Promise<number | undefined> {
    try {
      return await this.uppers.referenced(this.paths(name).upper);
    } catch {
      return undefined;
    }
  }

  /** A volatile volume's upper, made anew for its first Mount (the last use's changes go to the trash). */
  async freshUpper(name: string, meta: VolumeMeta, like: Owner): Promise<void> {
    const p = this.paths(name);
    const old = this.moveToTrash(p.upper, `${name}.upper`);
    if (old !== undefined) this.deleteLater(old);
    await this.uppers.make(p.dir, upperKindOf(meta), meta.size, like);
  }

  /** Makes the skeleton; locks/ (per-volume lock files of earlier versions) goes. */
  init(): void {
    for (const d of [this.volumes, this.tmp, this.trash]) fs.mkdirSync(d, { mode: 0o700, recursive: true });
    fs.rmSync(path.join(this.root, 'locks'), { recursive: true, force: true });
  }

  /** device and inode of the state root: finds it through any path, a bind mount included. */
  rootId(): { dev: number; ino: number } {
    const st = fs.statSync(this.root);
    return { dev: st.dev, ino: st.ino };
  }

  /** Names of the directories in volumes/. */
  listNames(): string[] {
    return fs
      .readdirSync(this.volumes, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => e.name);
  }

  /** The stamp of volume.json now; undefined when it cannot be stat'ed. */
  metaStamp(name: string): string | undefined {
    const st = fs.statSync(this.paths(name).meta, { throwIfNoEntry: false, bigint: true });
    return st === undefined ? undefined : stampOf(st);
  }

  /** Why the upper layer cannot hold the volume's changes, or undefined when it is a directory. */
  upperProblem(name: string): string | undefined {
    const upper = this.paths(name).upper;
    try {
      return fs.statSync(upper).isDirectory() ? undefined : `the upper layer ${upper} is not a directory`;
    } catch (err) {
      return `the upper layer is missing (${(err as Error).message}): the volume's changes are lost`;
    }
  }

  /** True when `dir` is a directory holding at least one entry. */
  hasEntries(dir: string): boolean {
    try {
      const d = fs.opendirSync(dir);
      try {
        return d.readSync() !== null;
      } finally {
        d.closeSync();
      }
    } catch {
      return false;
    }
  }

  /** device and inode of merged/, or undefined when it does not exist. */
  mergedId(name: string): { dev: number; ino: number } | undefined {
    const st = fs.statSync(this.paths(name).merged, { throwIfNoEntry: false });
    return st === undefined ? undefined : { dev: st.dev, ino: st.ino };
  }

  /** "major:minor" of what is mounted on merged/, as mountinfo writes it. */
  mergedDevice(name: string): string {
    const dev = fs.statSync(this.paths(name).merged, { bigint: true }).dev;
    const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
    const minor = Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn));
    return `${major}:${minor}`;
  }

  /** Makes merged/ (the daemon's own mountpoint, made at the first Mount) if missing; its device and inode. */
  makeMerged(name: string): { dev: number; ino: number } {
    const merged = this.paths(name).merged;
    fs.mkdirSync(merged, { mode: 0o755, recursive: true });
    const st = fs.statSync(merged);
    return { dev: st.dev, ino: st.ino };
  }

  /**
   * Reads volume.json (readSmallFile: nothing put in its place can block the daemon); never throws: what is
   * wrong comes back as problems. A usable volume.json comes with the stamp of the descriptor read.
   */
  readMeta(name: string): MetaRead {
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
    if (problems.length > 0) return { problems };
    const meta = value as VolumeMeta;
    // RFC 3339 as Get must show it, made so once here rather than at every Get; only memory's copy changes.
    meta.createdAt = new Date(meta.createdAt).toISOString();
    return { meta, problems, stamp };
  }

  /** Makes the volume on disk, whole or not at all (creation.ts). */
  create(name: string, meta: VolumeMeta, upperLike: Owner, extras: CreateExtras = {}): Promise<void> {
    return buildVolume(this, { name, meta, upperLike, extras, fault: this.fault, logger: this.logger });
  }

  /** Resolves once volumes/ is synced: a rename into or out of it is durable (DirSync: callers share syncs). */
  syncVolumesDir(): Promise<void> {
    return this.volumesSync.sync();
  }

  /** The mount records of a volume and the damage among them (see readRecords). */
  inspectUsers(name: string): Records {
    return readRecords(this.paths(name).users);
  }

  /**
   * Writes the record of a mount ID's first use: a hard link to users/ONE_RECORD (addRecord), which this
   * process writes itself (atomically, over whatever file was there) before the volume's first link. Where
   * no link can be made, the record is a file of its own.
   */
  addUser(name: string, id: string): void {
    const users = this.paths(name).users;
    // A second try when the shared file went under us (a start-up sweep deletes it).
    for (let tries = 0; tries < 2; tries++) {
      try {
        if (!this.ones.has(name)) writeRecord(users, ONE_RECORD, 1);
      } catch {
        // Something ontop did not put there holds the name (a directory): the record goes without a link, or
        // fails below for a reason that is its own (no volume directory).
        break;
      }
      this.ones.add(name);
      if (addRecord(users, id)) return;
      this.ones.delete(name);
    }
    writeRecord(users, id, 1);
  }

  /** Writes a mount record with another count (the same ID mounted again, or one of several Unmounted). */
  writeUser(name: string, id: string, count: number): void {
    writeRecord(this.paths(name).users, id, count);
  }

  deleteUser(name: string, id: string): void {
    deleteRecord(this.paths(name).users, id);
  }

  /** Deletes these records: the users/ directory is emptied, never replaced. */
  clearUsers(name: string, ids: Iterable<string>): void {
    for (const id of ids) this.deleteUser(name, id);
  }

  /**
   * Renames users/ to a unique name beside it, taking every record out of
   * sight in one step; returns the new path, or undefined if there was no
   * users/. It goes with the volume's directory.
   */
  setUsersAside(name: string): string | undefined {
    this.ones.delete(name); // it goes with users/
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

  /** Puts back records set aside by setUsersAside (a Remove that could not unmount). */
  restoreUsers(name: string, aside: string): void {
    fs.renameSync(aside, this.paths(name).users);
  }

  /** Renames `p` into trash/ and returns where it went; undefined if `p` is missing. */
  moveToTrash(p: string, label: string): string | undefined {
    return this.bin.move(p, label);
  }

  /** Moves `p` (if present) to the trash, deletes it in the background, and makes `p` again, empty (0700). */
  freshDir(p: string, label: string): void {
    const old = this.moveToTrash(p, label);
    if (old !== undefined) this.deleteLater(old);
    fs.mkdirSync(p, { mode: 0o700 });
  }

  /**
   * Makes a volume's workdir fresh after an overlay that was unmounted, not detached: the kernel leaves only
   * an empty work/ inside, so removing that one entry is enough. Anything else there goes the freshDir way.
   */
  freshWorkDir(name: string): void {
    const work = this.paths(name).work;
    try {
      fs.rmdirSync(path.join(work, 'work'));
      if (fs.readdirSync(work).length === 0) return;
    } catch {
      // Missing (the first Mount after Create), or not as the kernel leaves it: start afresh.
    }
    this.freshDir(work, `${name}.work`);
  }

  /** Deletes a tree now (a half-created volume), its subvolume first. */
  async removeTree(p: string): Promise<void> {
    await this.uppers.destroySubvolumes(p);
    await fsp.rm(p, { recursive: true, force: true });
  }

  /** Deletes a trash entry in the background; failures are logged and retried at the next start. */
  deleteLater(p: string): void {
    this.bin.deleteLater(p);
  }

  /** Resolves once every background deletion, queued or running, has finished. */
  settled(): Promise<void> {
    return this.bin.settled();
  }

  /** Entries of tmp/ (half-created volumes) and trash/ left by an earlier run. */
  leftovers(): { tmp: string[]; trash: string[] } {
    const [tmp, trash] = [fs.readdirSync(this.tmp), fs.readdirSync(this.trash)];
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

/**
 * Opens the state root (made 0700 if missing) for the daemon: refuses one
 * on a filesystem that cannot hold an overlay's upper layer, makes the
 * skeleton, and takes daemon.lock. The caller releases the returned lock.
 */
export async function openStore(root: string, logger: Logger, fault?: FaultHook, lockOpts?: AcquireOptions): Promise<{ store: Store; lock: fsp.FileHandle }> {
  fs.mkdirSync(root, { recursive: true, mode: 0o700 });
  const real = fs.realpathSync(root);
  const unfit = UNFIT_FILESYSTEMS.get(fs.statfsSync(real).type);
  if (unfit !== undefined) {
    throw new DriverError(`the state root ${real} is on ${unfit}, which cannot hold an overlay's upper layer: use a directory on a local filesystem such as ext4 or xfs`);
  }
  const store = new Store(real, logger, fault);
  store.init();
  const lock = await acquireRoot(store.daemonLock, real, logger, lockOpts);
  return { store, lock };
}

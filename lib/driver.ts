// The eight verbs of Docker's volume protocol over ontop's store: validate,
// decide, reply. Also start-up recovery, which makes the state on disk agree
// with the kernel's mount table before the first request.
//
// The conceptual note that makes crashes safe: a record in users/ is a
// promise that a container uses the volume; a mounted overlay is only a side
// effect. A record is written only after its overlay is mounted and deleted
// before the overlay is unmounted, so a crash between steps leaves at worst a
// mount without users (harmless: reused or detached by the next first Mount,
// unmounted at the next start), never users without a mount. And there is
// never more than one overlay over a volume's upper layer: a first Mount
// looks for a leftover one and reuses or detaches it.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { DriverError, isDriverError } from './errors.js';
import type { Held } from './lock.js';
import { VolumeLocks, discardIfFree, tryLockForever } from './lock.js';
import type { Logger } from './log.js';
import { errorFields } from './log.js';
import type { MountEntry } from './mountinfo.js';
import { mountsAt, otherHolders, parseMountinfo, peerGroup, processesUsing, readMountinfo, splitOptions } from './mountinfo.js';
import { checkMountId, checkName } from './names.js';
import type { BaseContext } from './options.js';
import type { OpenedBase } from './options.js';
import { descriptorPath, isAllowed, openBase, parseOptions, resolveBase } from './options.js';
import { detachOverlay, isOverlayOf, mountOverlay, overlayData, unmountOverlay } from './overlay.js';
import type {
  CapabilitiesResponse,
  CreateRequest,
  Empty,
  GetResponse,
  ListResponse,
  MountRequest,
  MountpointResponse,
  NameRequest,
  VolumeDriver,
  VolumeInfo,
} from './protocol.js';
import type { VolumeMeta } from './store.js';
import { Store, stampOf, takeOwner } from './store.js';

/** Test-only: called between steps; throwing from it simulates a crash there. */
export type FaultHook = (point: string) => void | Promise<void>;

export interface DriverOptions {
  /** State root; created 0700 if missing. */
  root: string;
  logger: Logger;
  /** When non-empty, bases must lie inside one of these host trees. */
  allowBases?: string[];
  /** The host's filesystem as this process sees it (a managed plugin: e.g. /host). Default '/'. */
  hostRoot?: string;
  faults?: FaultHook;
  /** Where the kernel's boot id is read; tests point it elsewhere to simulate a reboot. */
  bootIdPath?: string;
}

export type Driver = VolumeDriver & { close(): Promise<void> };

/** statfs(2) f_type of filesystems that cannot hold an overlay upper layer. */
const UNFIT_FILESYSTEMS = new Map<number, string>([
  [0x794c7630, 'overlay'],
  [0x6969, 'nfs'],
  [0x65735546, 'fuse (or virtiofs)'],
  [0xff534d42, 'cifs'],
  [0xfe534d42, 'smb2'],
  [0x517b, 'smb'],
]);

interface RecoveryReport {
  volumes: number;
  halfCreated: number;
  trash: number;
  /** No boot id was recorded yet: a new state root (or one whose boot-id file was lost). */
  firstStart: boolean;
  rebooted: boolean;
  recordsCleared: number;
  unmounted: number;
  busy: number;
}

interface Loaded {
  meta?: VolumeMeta;
  problems: string[];
  /** volume.json's stamp (stampOf) as read: a first Mount re-reads it only when this changed. */
  stamp?: string;
}

/** The stamp (stampOf) of a file now, or undefined when it cannot be stat'ed. */
function stampAt(file: string): string | undefined {
  // Sync on purpose: one stat of a file on the local state root costs ~2 µs, a thread-pool round trip ~40 µs.
  const st = fs.statSync(file, { throwIfNoEntry: false, bigint: true });
  return st === undefined ? undefined : stampOf(st);
}

interface Volume {
  name: string;
  /** Mount ID → count; mirrors users/. Absent while no container uses the volume: idle volumes cost no Map. */
  users?: Map<string, number>;
  /** An overlay is mounted on merged/ (with users, or left over by an unmount that met EBUSY). */
  mounted: boolean;
  /**
   * volume.json, read on first need and then kept: the daemon is its only writer. Create does not fill it:
   * 10,000 volumes that nobody has asked about since would cost ~6 MiB of heap.
   */
  loaded?: Loaded;
  /** Entries of users/ found at start that are no valid record: Mount refuses until they are gone. */
  damaged?: string[];
  /**
   * "dev:ino" of merged/ while nothing was mounted on it, recorded once the mount table showed it bare. A
   * first Mount that finds merged/ still so skips reading the mount table (any mount on it, a bind mount of
   * another directory of the same filesystem included, changes one or the other).
   */
  bare?: string;
  /** "major:minor" of the overlay while mounted: finds it in other mount namespaces once it left ours. */
  device?: string;
}

function userCount(v: Volume): number {
  let n = 0;
  for (const c of v.users?.values() ?? []) n += c;
  return n;
}

function code(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException).code;
}

/** "process 12 (sh), process 40 (nginx)", at most five named. */
function describeHolders(holders: Array<{ pid: number; command?: string }>): string {
  const seen = new Map<number, string | undefined>();
  for (const h of holders) seen.set(h.pid, h.command);
  const named = [...seen].slice(0, 5).map(([pid, cmd]) => (cmd === undefined ? `process ${pid}` : `process ${pid} (${cmd})`));
  return named.join(', ') + (seen.size > 5 ? ` and ${seen.size - 5} more` : '');
}

/** True when the mount is an overlay over this upper or this work directory. */
function usesLayers(e: MountEntry, upper: string, work: string): boolean {
  if (e.fstype !== 'overlay') return false;
  const o = splitOptions(e.superOptions);
  return o.get('upperdir') === upper || o.get('workdir') === work;
}

/** "major:minor" of the filesystem mounted at `p`, as mountinfo writes it; undefined when it cannot be stat'ed. */
function deviceOf(p: string): string | undefined {
  const st = fs.statSync(p, { throwIfNoEntry: false, bigint: true });
  if (st === undefined) return undefined;
  const dev = st.dev;
  const major = Number(((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn));
  const minor = Number((dev & 0xffn) | ((dev >> 12n) & ~0xffn));
  return `${major}:${minor}`;
}

/** Opens the state root, recovers from whatever the last run left, and returns the driver. */
export async function openDriver(opts: DriverOptions): Promise<Driver> {
  const logger = opts.logger;
  await fsp.mkdir(opts.root, { recursive: true, mode: 0o700 });
  const root = await fsp.realpath(opts.root);
  const fsType = UNFIT_FILESYSTEMS.get((await fsp.statfs(root)).type);
  if (fsType !== undefined) {
    throw new DriverError(
      `the state root ${root} is on ${fsType}, which cannot hold an overlay's upper layer: use a directory on a local filesystem such as ext4 or xfs`,
    );
  }
  const store = new Store(root, logger, opts.faults);
  await store.init();
  const daemonLock = await tryLockForever(store.daemonLock);
  if (daemonLock === undefined) throw new DriverError(`another ontop process is using the state root ${root}`);
  try {
    const rootStat = await fsp.stat(root);
    const driver = new OntopDriver(store, logger, {
      hostRoot: await fsp.realpath(opts.hostRoot ?? '/'),
      stateRoot: root,
      stateRootId: { dev: rootStat.dev, ino: rootStat.ino },
      allowBases: opts.allowBases ?? [],
    }, opts.faults ?? (() => {}), daemonLock);
    await driver.recover(opts.bootIdPath ?? '/proc/sys/kernel/random/boot_id');
    return driver;
  } catch (err) {
    await daemonLock.close();
    throw err;
  }
}

class OntopDriver implements Driver {
  private readonly volumes = new Map<string, Volume>();
  private readonly locks: VolumeLocks;
  private closing: Promise<void> | undefined;
  private sweeping: Promise<void> | undefined;

  constructor(
    private readonly store: Store,
    private readonly logger: Logger,
    private readonly ctx: BaseContext,
    private readonly fault: FaultHook,
    private readonly daemonLock: fsp.FileHandle,
  ) {
    this.locks = new VolumeLocks(store.locks);
  }

  // ---- start-up -----------------------------------------------------------

  /**
   * Makes the state agree with the kernel before the first request.
   *
   * Volumes with an overlay mounted now are settled here, whatever the boot
   * id says: an overlay mounted on merged/ was mounted in this boot, so its
   * records are kept (and without any, it is unmounted). After a reboot the
   * records of every other volume are cleared before the first call is
   * served (the kernel lost those mounts), and the new boot id is written
   * then too: a start killed at any point never takes this boot's records or
   * overlays for the last boot's. Without a reboot, records of volumes with
   * no overlay can only be left by an unmount done by hand; a background
   * sweep clears them, each under its volume's queue, so that opening stays
   * O(one readdir) for 10,000 volumes.
   */
  async recover(bootIdPath: string): Promise<void> {
    const store = this.store;
    const started = Date.now();
    const { tmp, trash } = await store.leftovers();
    await Promise.all(tmp.map((p) => fsp.rm(p, { recursive: true, force: true })));
    for (const p of trash) store.deleteLater(p);

    for (const name of await store.listNames()) {
      try {
        this.volumes.set(checkName(name), { name, mounted: false });
      } catch {
        this.logger.warn('ignoring a directory in volumes/ that is not a valid volume name', { path: path.join(store.volumes, name) });
      }
    }
    const bootNow = this.readBootId(bootIdPath);
    if (bootNow === undefined) this.logger.warn('the kernel boot id cannot be read; reconciling with the mount table only', { path: bootIdPath });
    const bootSeen = this.readBootId(store.bootIdFile);
    const rebooted = bootNow !== undefined && bootSeen !== undefined && bootNow !== bootSeen;
    const table = await readMountinfo();

    // Mounts on a volume's merged/, counted (a stack counts each layer), from one read of the table.
    const stacks = new Map<string, MountEntry[]>();
    for (const e of parseMountinfo(table)) {
      if (e.mountPoint.startsWith(store.volumes + '/')) stacks.set(e.mountPoint, [...(stacks.get(e.mountPoint) ?? []), e]);
    }
    const report: RecoveryReport = {
      volumes: this.volumes.size,
      halfCreated: tmp.length,
      trash: trash.length,
      firstStart: bootSeen === undefined,
      rebooted,
      recordsCleared: 0,
      unmounted: 0,
      busy: 0,
    };
    const later: string[] = [];
    await Promise.all(
      [...this.volumes.values()].map(async (vol) => {
        const stack = stacks.get(store.paths(vol.name).merged) ?? [];
        if (stack.length > 0) await this.reconcile(vol, stack, report);
        else if (bootNow !== undefined && bootNow !== bootSeen) this.clearAfterReboot(vol, report);
        else later.push(vol.name);
      }),
    );
    if (bootNow !== undefined && bootNow !== bootSeen) {
      try {
        await store.writeBootId(bootNow);
      } catch (err) {
        // Only costs a second clearing of records with no overlay at the next start, which finds nothing new.
        this.logger.warn('could not record the boot id', { path: store.bootIdFile, ...errorFields(err) });
      }
    }
    this.logger.info('state root recovered', { root: store.root, ms: Date.now() - started, ...report });
    this.sweeping = this.sweep(later, report);
  }

  /** A boot id, or undefined when it is missing or cannot be read (logged): damage never stops a start. */
  private readBootId(file: string): string | undefined {
    try {
      return this.store.readBootId(file);
    } catch (err) {
      this.logger.warn('a boot id file is damaged; taken as missing', { path: file, ...errorFields(err) });
      return undefined;
    }
  }

  /** After a reboot: the records of a volume without an overlay are all stale; set aside in one rename. */
  private clearAfterReboot(vol: Volume, report: RecoveryReport): void {
    try {
      const aside = this.store.setUsersAside(vol.name);
      if (aside === undefined) return;
      report.recordsCleared += this.store.countRecords(aside);
      this.store.deleteLater(aside);
    } catch (err) {
      // Left in place they are cleared by the next start's sweep (no overlay, no reboot); until then a Mount
      // adds its own record beside them and an Unmount removes only its own.
      this.logger.warn('could not clear the mount records of the last boot', { volume: vol.name, ...errorFields(err) });
    }
  }

  /** Clears the stale records of volumes without an overlay; stops early when the driver closes. */
  private async sweep(names: string[], report: RecoveryReport): Promise<void> {
    const started = Date.now();
    const before = report.recordsCleared;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < names.length && this.closing === undefined) {
        const name = names[next++] as string;
        await this.locks.with(
          name,
          async () => {
            const vol = this.volumes.get(name);
            if (vol !== undefined) await this.reconcile(vol, [], report);
          },
          false,
        ).catch((err: unknown) => this.logger.warn('could not clear stale mount records; the next start tries again', { volume: name, ...errorFields(err) }));
      }
    };
    await Promise.all(Array.from({ length: 16 }, worker));
    // Lock files of names without a volume were left by a Create or Remove that was killed.
    let locksCleared = 0;
    for (const name of await this.store.lockNames()) {
      if (this.volumes.has(name) || this.closing !== undefined) continue;
      await this.locks.with(
        name,
        async () => {
          if (!this.volumes.has(name) && (await discardIfFree(path.join(this.store.locks, name)))) locksCleared++;
        },
        false,
      );
    }
    this.logger.info('mount records reconciled', { volumes: names.length, recordsCleared: report.recordsCleared - before, locksCleared, ms: Date.now() - started });
  }

  /**
   * Decides one volume from its records and the mounts stacked on its
   * merged/ (bottom first). With an overlay mounted, the records are kept:
   * that overlay was mounted in this boot. With none, every record is stale,
   * except the IDs a Mount has added since start (in memory).
   */
  private async reconcile(vol: Volume, stack: MountEntry[], report: RecoveryReport): Promise<void> {
    const { users: records, damaged } = this.store.inspectUsers(vol.name);
    if (stack.length === 0) {
      const stale = [...records.keys()].filter((id) => vol.users?.has(id) !== true);
      if (stale.length > 0) {
        this.logger.error('volume had users but its overlay is gone: the containers that used it lost it (was it unmounted by hand?); clearing the records', {
          volume: vol.name,
          ids: stale,
        });
      }
      report.recordsCleared += stale.length;
      try {
        this.store.clearUsers(vol.name, stale);
      } catch (err) {
        // What could not be cleared and is no record (a directory) stays as damage until someone deletes it.
        const left = this.store.inspectUsers(vol.name);
        if (left.damaged.length > 0) vol.damaged = left.damaged;
        throw err;
      }
      return;
    }
    if (damaged.length > 0) {
      vol.damaged = damaged;
      this.logger.error('volume has damaged mount records; it is refused for new mounts until they are deleted', { volume: vol.name, damaged });
    }
    for (const [id, count] of records) {
      try {
        (vol.users ??= new Map()).set(checkMountId(id), count);
      } catch {
        this.logger.warn('ignoring a mount record with an invalid name', { volume: vol.name, id });
      }
    }
    const merged = this.store.paths(vol.name).merged;
    let stacked = stack.length;
    // Damage means users cannot be counted: the overlay stays, as if used.
    while (stacked > 0 && vol.users === undefined && vol.damaged === undefined) {
      try {
        await unmountOverlay(merged);
        report.unmounted++;
        stacked--;
      } catch (err) {
        this.logger.warn('a leftover overlay with no users is busy; the next Mount reuses it or says what holds it', { volume: vol.name, ...errorFields(err) });
        report.busy++;
        break;
      }
    }
    if (stacked > 0) {
      vol.mounted = true;
      vol.device = (stack[stacked - 1] as MountEntry).device;
    }
  }

  /**
   * Refuses new calls, stops the sweep at the next volume, waits for the calls
   * queued or running and for background deletions, and always releases
   * daemon.lock, whatever failed before. Not bounded here: a call may wait on
   * a hung base; main bounds the whole stop.
   */
  async close(): Promise<void> {
    this.closing ??= (async () => {
      try {
        await this.sweeping?.catch((err: unknown) => this.logger.warn('the sweep of mount records failed', errorFields(err)));
        await this.locks.drain();
        await this.store.settled();
      } finally {
        await this.daemonLock.close();
      }
    })();
    return this.closing;
  }

  // ---- helpers -------------------------------------------------------------

  /** The volume, or a DriverError that says it does not exist. */
  private known(name: string): Volume {
    const vol = this.volumes.get(name);
    if (vol === undefined) throw new DriverError(`no such volume: ${name} (see docker volume ls)`);
    return vol;
  }

  /** volume.json as cached, or read now (sync: see Store.readMeta), with the upper layer checked. */
  private load(vol: Volume): Loaded {
    if (vol.loaded !== undefined) return vol.loaded;
    const p = this.store.paths(vol.name);
    const loaded: Loaded = this.store.readMeta(vol.name);
    if (loaded.meta !== undefined && !loaded.meta.volatile) {
      // Sync: one stat on the local state root.
      let problem: string | undefined;
      try {
        if (!fs.statSync(p.upper).isDirectory()) problem = `the upper layer ${p.upper} is not a directory`;
      } catch (err) {
        problem = `the upper layer is missing (${(err as Error).message}): the volume's changes are lost`;
      }
      if (problem !== undefined) loaded.problems.push(problem);
    }
    vol.loaded = loaded;
    return loaded;
  }

  /**
   * Runs a changing verb under the volume's lock. Refusals pass through; any
   * other failure is logged with its details and reported in words.
   */
  private async locked<T>(verb: string, name: string, fn: (held: Held) => Promise<T>): Promise<T> {
    if (this.closing !== undefined) throw new DriverError('ontop is shutting down; try again once it is back');
    try {
      return await this.locks.with(name, fn);
    } catch (err) {
      if (isDriverError(err)) throw err;
      this.logger.error(`${verb} failed`, { volume: name, ...errorFields(err, true) });
      throw new DriverError(`${verb} of volume ${name} failed: ${this.explain(err)}`, { cause: err });
    }
  }

  /** A system error in words a user can act on; the raw message is kept for the details. */
  private explain(err: unknown): string {
    const message = (err as Error).message;
    switch (code(err)) {
      case 'ENOSPC':
      case 'EDQUOT':
        return `no space left on the state root's filesystem (${this.store.root}): free some space or inodes there, then try again (${message})`;
      case 'EPERM':
      case 'EACCES':
      case 'EROFS':
        return `ontop may not change its state under ${this.store.root} (is a directory there immutable, see lsattr, or the filesystem read-only?): ${message}`;
      default:
        return message;
    }
  }

  /** Re-checks, holding the lock, that the volume still exists; if not, the lock file made for nothing goes too. */
  private stillKnown(name: string, held: Held): Volume {
    const vol = this.volumes.get(name);
    if (vol === undefined) held.discard();
    return this.known(name);
  }

  private info(vol: Volume): VolumeInfo {
    return vol.mounted ? { Name: vol.name, Mountpoint: this.store.paths(vol.name).merged } : { Name: vol.name };
  }

  /**
   * The base opened to a descriptor, after checking through that descriptor
   * that it still is what Create resolved and still may be a base. The
   * overlay is mounted from the descriptor, so a path swapped for a symlink
   * after the check changes nothing. The caller closes `fd`.
   */
  private async baseForMount(name: string, meta: VolumeMeta): Promise<OpenedBase> {
    const problem = `volume ${name} cannot be mounted: its base ${meta.base}`;
    let base: OpenedBase;
    try {
      base = await openBase(meta.base, this.ctx);
    } catch (err) {
      if (code(err) === 'ENOTDIR') throw new DriverError(`${problem} is no longer a directory: restore it, or remove the volume`);
      throw new DriverError(`${problem} is gone (${(err as Error).message}): restore it, or remove the volume`);
    }
    try {
      if (base.host !== meta.base) {
        throw new DriverError(`${problem} now resolves to ${base.host} (a symlink changed): restore it, or remove the volume and create it again`);
      }
      if (base.unfit !== undefined) throw new DriverError(`${problem} ${base.unfit}`);
      if (!(await isAllowed(base.host, this.ctx))) {
        // Created under another --allow-base: the administrator's current choice wins.
        throw new DriverError(`${problem} is outside the allowed base directories (${this.ctx.allowBases.join(', ')}): remove the volume, or ask the administrator to allow it`);
      }
      return base;
    } catch (err) {
      fs.closeSync(base.fd);
      throw err;
    }
  }

  /** True when merged/ is still a mount point (another device than the volume's directory). */
  private async isMountPoint(name: string): Promise<boolean> {
    const p = this.store.paths(name);
    const [merged, dir] = await Promise.all([fsp.stat(p.merged), fsp.stat(p.dir)]);
    return merged.dev !== dir.dev;
  }

  /** "dev:ino" of merged/, or undefined when it cannot be stat'ed. */
  private mergedId(merged: string): string | undefined {
    // Sync on purpose: one stat on the local state root (~2 µs), on every first Mount.
    const st = fs.statSync(merged, { throwIfNoEntry: false });
    return st === undefined ? undefined : `${st.dev}:${st.ino}`;
  }

  /** True when the cached volume.json is healthy, unchanged on disk, and (unless volatile) its upper layer is a directory. */
  private stillFresh(vol: Volume): boolean {
    if (vol.loaded === undefined) return false;
    const { meta, problems, stamp } = vol.loaded;
    if (meta === undefined || problems.length > 0 || stamp === undefined) return false;
    const p = this.store.paths(vol.name);
    if (stampAt(p.meta) !== stamp) return false;
    return meta.volatile || fs.statSync(p.upper, { throwIfNoEntry: false })?.isDirectory() === true;
  }

  // ---- verbs ---------------------------------------------------------------

  async create(req: CreateRequest): Promise<Empty> {
    const name = checkName(req?.Name);
    const opts = parseOptions(req?.Opts);
    const base = await resolveBase(opts.base, this.ctx);
    const p = this.store.paths(name);
    overlayData({ lower: descriptorPath(2 ** 31 - 1), upper: p.upper, work: p.work }); // refuses now, not at the first Mount
    return this.locked('create', name, async (held) => {
      const existing = this.volumes.get(name);
      if (existing !== undefined) {
        const { meta, problems } = this.load(existing);
        if (meta === undefined) {
          throw new DriverError(`volume ${name} already exists but is damaged (${problems.join('; ')}): remove it first`);
        }
        const diffs: string[] = [];
        if (meta.base !== base.host) diffs.push(`base is ${meta.base}, not ${base.host}`);
        if (meta.volatile !== opts.volatile) diffs.push(`volatile is ${meta.volatile}, not ${opts.volatile}`);
        if (diffs.length > 0) {
          throw new DriverError(`volume ${name} already exists with other options (${diffs.join('; ')}): remove it first, or choose another name`);
        }
        return {};
      }
      const meta: VolumeMeta = {
        version: 1,
        base: base.host,
        volatile: opts.volatile,
        createdAt: new Date().toISOString(),
        options: { ...(req.Opts as Record<string, string>) },
      };
      try {
        await this.store.create(name, meta, base.owner);
      } catch (err) {
        // Memory follows disk: a volume the store could not take back exists, and is known.
        if ((err as { volumeKept?: boolean }).volumeKept === true) this.volumes.set(name, { name, mounted: false });
        else held.discard();
        throw err;
      }
      this.volumes.set(name, { name, mounted: false });
      this.logger.info('volume created', { volume: name, base: meta.base, volatile: meta.volatile });
      return {};
    });
  }

  async mount(req: MountRequest): Promise<MountpointResponse> {
    const name = checkName(req?.Name);
    const id = checkMountId(req?.ID);
    this.known(name);
    return this.locked('mount', name, async (held) => {
      const vol = this.stillKnown(name, held);
      if (vol.damaged !== undefined) {
        throw new DriverError(
          `volume ${name} cannot be mounted: its mount records are damaged (${vol.damaged.join('; ')}), so ontop cannot tell which containers use it. Remove it (docker volume rm ${name}), or stop ontop, delete those entries from ${this.store.paths(name).users} and start it again`,
        );
      }
      const p = this.store.paths(name);
      if (userCount(vol) === 0 || !vol.mounted || !(await this.isMountPoint(name))) {
        if (userCount(vol) > 0) {
          this.logger.error('volume has users but its overlay is gone (unmounted by hand?); mounting it again', { volume: name });
        }
        await this.firstMount(vol);
      }
      const count = (vol.users?.get(id) ?? 0) + 1;
      await this.store.writeUser(name, id, count);
      (vol.users ??= new Map()).set(id, count);
      await this.fault('mount:after-record');
      this.logger.debug('mounted', { volume: name, id, count, users: userCount(vol) });
      return { Mountpoint: p.merged };
    });
  }

  /** Mounts the overlay for the first user, or adopts a leftover one. */
  private async firstMount(vol: Volume): Promise<void> {
    const name = vol.name;
    // volume.json must be right at this moment: re-read unless unchanged (one stat), healthy and its upper still there.
    if (!this.stillFresh(vol)) vol.loaded = undefined;
    const { meta, problems } = this.load(vol);
    if (meta === undefined || (problems.length > 0 && !meta.volatile)) {
      throw new DriverError(`volume ${name} cannot be mounted: ${problems.join('; ')}. Remove it (docker volume rm ${name}) and create it again`);
    }
    const base = await this.baseForMount(name, meta);
    try {
      await this.mountFresh(vol, meta, base);
    } finally {
      fs.closeSync(base.fd);
    }
  }

  /** firstMount once the base is open: settles what is on merged/, then mounts (or reuses) the overlay. */
  private async mountFresh(vol: Volume, meta: VolumeMeta, base: OpenedBase): Promise<void> {
    const name = vol.name;
    const p = this.store.paths(name);

    if (userCount(vol) > 0 && vol.device !== undefined) {
      // Users, but the overlay left our mount table (unmounted by hand): the containers may still write
      // through it in their own namespaces. A second overlay over the same upper is never safe.
      const holders = await otherHolders(vol.device, undefined);
      if (holders.length > 0) {
        throw new DriverError(
          `volume ${name} cannot be mounted: its overlay was unmounted from ${p.merged} by hand, but processes still use it (${describeHolders(holders)}); a second overlay over the same changes is not safe. Stop them, then try again`,
        );
      }
    }
    // Nothing can be mounted on a merged/ that does not exist (a volume's first Mount: Create leaves it to
    // this point), nor on one that is still the bare directory the daemon unmounted: in both cases skip
    // reading the whole mount table (the kernel formats every mount's options).
    const mergedNow = this.mergedId(p.merged);
    const missing = !vol.mounted && mergedNow === undefined;
    const bare = !vol.mounted && mergedNow !== undefined && mergedNow === vol.bare;
    if (!bare && !missing) {
      const reused = await this.clearLeftovers(name, mountsAt(await readMountinfo(), p.merged), meta.volatile);
      if (reused !== undefined) {
        this.logger.info('reusing the overlay left mounted by an earlier run', { volume: name });
        vol.mounted = true;
        vol.device = reused.device;
        return;
      }
    }
    vol.mounted = false;
    if (meta.volatile) {
      // The last use's changes have stayed in upper/ until now, for an operator to recover.
      await this.store.freshDir(p.upper, `${name}.upper`, 0o700);
      takeOwner(p.upper, base.owner);
    }
    if (bare) await this.store.freshWorkDir(p.work, `${name}.work`, 0o700);
    else {
      // After a detach (ours, or one by hand that also took merged/ away) the old workdir may still be in use
      // by the detached overlay: set it aside whole.
      await this.store.freshDir(p.work, `${name}.work`, 0o700);
      // Made here, not by Create (see Store.create); an admin may also have deleted it. Sync: the local state root.
      fs.mkdirSync(p.merged, { mode: 0o755, recursive: true });
      vol.bare = this.mergedId(p.merged);
    }
    await this.fault('mount:before-mount');
    try {
      await mountOverlay({ lower: descriptorPath(base.fd), upper: p.upper, work: p.work }, p.merged);
    } catch (err) {
      this.logger.error('mounting the overlay failed', { volume: name, ...errorFields(err) });
      throw new DriverError(`volume ${name} cannot be mounted: ${(err as Error).message}`, { cause: err });
    }
    vol.mounted = true;
    vol.device = deviceOf(p.merged);
    await this.fault('mount:after-mount');
    this.logger.info('overlay mounted', { volume: name, base: meta.base, volatile: meta.volatile });
  }

  /**
   * Makes merged/ ready for the first user: a lone overlay of this volume
   * left by an earlier run is reused (returned) unless the volume is
   * volatile; anything else is taken away, top first. A plain unmount first;
   * one that is busy is detached when it does not use this volume's upper or
   * work directory, or when the volume is volatile (its new overlay gets a
   * fresh upper and work). A busy overlay over the upper of a volume that
   * keeps its changes is never detached: a second overlay over the same upper
   * is not safe, so the Mount is refused, naming what holds it.
   */
  private async clearLeftovers(name: string, stack: MountEntry[], volatile: boolean): Promise<MountEntry | undefined> {
    const p = this.store.paths(name);
    for (let top = stack.length - 1; top >= 0; top--) {
      const e = stack[top] as MountEntry;
      if (top === 0 && !volatile && isOverlayOf(e, p.upper)) return e;
      try {
        await unmountOverlay(p.merged);
        this.logger.info('unmounted a leftover mount', { volume: name, fstype: e.fstype, source: e.source });
        continue;
      } catch (err) {
        if (code(err) === 'EINVAL') return undefined; // gone meanwhile (unmounted by hand)
        if (code(err) !== 'EBUSY') throw err;
      }
      if (!volatile && usesLayers(e, p.upper, p.work)) {
        const holders = await processesUsing(p.merged);
        throw new DriverError(
          `volume ${name} cannot be mounted: an earlier overlay of it is still mounted on ${p.merged} and in use (${holders.length > 0 ? describeHolders(holders) : 'by a process ontop cannot see'}); a second overlay over the same changes is not safe. Stop what uses it, then try again`,
        );
      }
      // Detached, never unmounted: a host process still holds files in it.
      this.logger.warn('detaching a busy leftover mount before mounting afresh', { volume: name, fstype: e.fstype, source: e.source });
      await detachOverlay(p.merged);
    }
    return undefined;
  }

  async unmount(req: MountRequest): Promise<Empty> {
    const name = checkName(req?.Name);
    const id = checkMountId(req?.ID);
    this.known(name);
    return this.locked('unmount', name, async (held) => {
      const vol = this.stillKnown(name, held);
      const users = vol.users;
      const count = users?.get(id);
      if (users === undefined || count === undefined) {
        this.logger.warn('Unmount for a mount ID that has no record; nothing to do', { volume: name, id });
        return {};
      }
      if (count > 1) {
        await this.store.writeUser(name, id, count - 1);
        users.set(id, count - 1);
        return {};
      }
      await this.store.deleteUser(name, id);
      users.delete(id);
      if (users.size === 0) vol.users = undefined;
      await this.fault('unmount:after-unrecord');
      if (vol.users !== undefined) return {};
      const merged = this.store.paths(name).merged;
      try {
        await unmountOverlay(merged);
      } catch (err) {
        if (code(err) === 'EBUSY') {
          this.logger.warn('a host process holds a file open in the volume; its overlay stays mounted until the next Mount or start', {
            volume: name,
            ...errorFields(err),
          });
          return {};
        }
        if (code(err) !== 'EINVAL') throw err;
        this.logger.warn('the overlay was already unmounted', { volume: name, ...errorFields(err) });
      }
      vol.mounted = false;
      this.logger.info('overlay unmounted', { volume: name });
      return {};
    });
  }

  async remove(req: NameRequest): Promise<Empty> {
    const name = checkName(req?.Name);
    this.known(name);
    return this.locked('remove', name, async (held) => {
      const vol = this.stillKnown(name, held);
      const p = this.store.paths(name);
      const stack = mountsAt(await readMountinfo(), p.merged);
      const top = stack[stack.length - 1];
      if (top !== undefined) {
        const holders = await otherHolders(top.device, peerGroup(top));
        if (holders.length > 0) {
          throw new DriverError(
            `volume ${name} is in use: its overlay is still mounted in another mount namespace (${describeHolders(holders)}); stop what uses it, then remove it again`,
          );
        }
      }
      if (vol.users !== undefined) {
        this.logger.warn('removing a volume that still had mount records (left by a crash or a lost Unmount)', { volume: name, ids: [...vol.users.keys()] });
      }
      // Records go before the overlay, as in Unmount: set aside in one rename (damaged ones too), so that
      // if the rename of the volume fails later no record outlives its mount; put back if the unmount fails.
      const aside = await this.store.setUsersAside(name);
      if (stack.length > 0) await this.fault('remove:before-unmount');
      try {
        for (let i = 0; i < stack.length; i++) {
          try {
            await unmountOverlay(p.merged);
          } catch (err) {
            if (code(err) === 'EBUSY') {
              const holders = await processesUsing(p.merged);
              throw new DriverError(
                `volume ${name} is in use by ${holders.length > 0 ? describeHolders(holders) : 'a host process'}: a file or directory below ${p.merged} is open; close it, then remove the volume again`,
              );
            }
            if (code(err) !== 'EINVAL') throw err;
            break; // already unmounted (by hand, in the meantime)
          }
        }
      } catch (err) {
        if (aside !== undefined) await fsp.rename(aside, p.users);
        throw err;
      }
      vol.users = undefined;
      vol.damaged = undefined;
      vol.mounted = false;
      const trashed = await this.store.moveToTrash(p.dir, name);
      this.volumes.delete(name);
      held.discard();
      await this.fault('remove:after-rename');
      await this.store.syncVolumesDir();
      if (trashed !== undefined) this.store.deleteLater(trashed);
      this.logger.info('volume removed', { volume: name });
      return {};
    });
  }

  async path(req: NameRequest): Promise<MountpointResponse> {
    const vol = this.known(checkName(req?.Name));
    return { Mountpoint: this.info(vol).Mountpoint ?? '' };
  }

  async get(req: NameRequest): Promise<GetResponse> {
    const vol = this.known(checkName(req?.Name));
    const { meta, problems } = this.load(vol);
    const p = this.store.paths(vol.name);
    const users = userCount(vol);
    const status: Record<string, unknown> = {
      base: meta?.base,
      volatile: meta?.volatile,
      mounted: vol.mounted,
      users,
      upper: p.upper,
    };
    if (meta?.volatile && users === 0) status.lastChanges = `changes of the last use kept until the next mount at ${p.upper}`;
    const all = [...problems, ...(vol.damaged ?? [])];
    if (all.length > 0) status.problems = all;
    const volume: VolumeInfo = this.info(vol);
    if (meta !== undefined) volume.CreatedAt = new Date(meta.createdAt).toISOString();
    volume.Status = status;
    return { Volume: volume };
  }

  async list(): Promise<ListResponse> {
    const out: VolumeInfo[] = [];
    for (const vol of this.volumes.values()) out.push(this.info(vol));
    return { Volumes: out };
  }

  async capabilities(): Promise<CapabilitiesResponse> {
    return { Capabilities: { Scope: 'local' } };
  }
}

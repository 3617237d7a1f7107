// The eight verbs of Docker's volume protocol: validate, queue, decide, reply.
// Each verb checks the name (and mount ID) first, then waits in the volume's
// queue (lock.ts), decides from the volume table (volumes.ts), and leaves the
// kernel to the mounter (mounter.ts) and the disk to the store (store.ts).
// Start-up recovery lives in recovery.ts.
//
// The conceptual note that makes crashes safe: a record in users/ is a
// promise that a container uses the volume; a mounted overlay is only a side
// effect. A record is written only after its overlay is mounted and deleted
// before the overlay is unmounted, so a crash between steps leaves at worst a
// mount without users (reused by the next first Mount, unmounted at the next
// start), never users without a mount.
import fs from 'node:fs';
import type fsp from 'node:fs/promises';
import { DriverError, errnoCode, isDriverError } from './errors.js';
import { VolumeQueues } from './lock.js';
import type { Logger } from './log.js';
import { errorFields } from './log.js';
import { Mounter } from './mounter.js';
import { checkMountId, checkName } from './names.js';
import type { BaseContext } from './options.js';
import { descriptorPath, parseOptions, resolveLayers, tmpfsSize } from './options.js';
import { overlayData } from './overlay.js';
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
} from './protocol.js';
import { recover } from './recovery.js';
import type { Owner } from './files.js';
import type { AcquireOptions } from './holder.js';
import { Operations } from './operations.js';
import type { CloneArgs, CloneResult, CommitArgs, CommitResult, DiffResult, InfoResult, LsResult, NameArgs, OnProgress, Operator, ResetResult } from './operator.js';
import type { CreateExtras, FaultHook, Store, UpperKind, VolumeMeta } from './store.js';
import { layersOf, openStore, upperKindOf } from './store.js';
import type { Volume } from './volumes.js';
import { VolumeTable, userCount } from './volumes.js';

export type { FaultHook } from './store.js';

export interface DriverOptions {
  /** State root; created 0700 if missing. */
  root: string;
  logger: Logger;
  /** The driver name dockerd knows this daemon by (`-d NAME`), for messages. Default 'ontop'. */
  name?: string;
  /** When non-empty, bases must lie inside one of these host trees. */
  allowBases?: string[];
  /** The host's filesystem as this process sees it (a managed plugin: e.g. /host). Default '/'. */
  hostRoot?: string;
  faults?: FaultHook;
  /** Where the kernel's boot id is read; tests point it elsewhere to simulate a reboot. */
  bootIdPath?: string;
  /** Who takes daemon.lock (an offline command says so), and how long a daemon waits for a command holding it. */
  lock?: AcquireOptions;
}

export type Driver = VolumeDriver & Operator & { close(): Promise<void> };

/** Opens the state root, recovers from whatever the last run left, and returns the driver. */
export async function openDriver(opts: DriverOptions): Promise<Driver> {
  const { store, lock } = await openStore(opts.root, opts.logger, opts.faults, opts.lock);
  try {
    const ctx: BaseContext = {
      hostRoot: fs.realpathSync(opts.hostRoot ?? '/'),
      stateRoot: store.root,
      stateRootId: store.rootId(),
      allowBases: opts.allowBases ?? [],
    };
    const driver = new OntopDriver(store, opts, ctx, lock);
    await driver.start(opts.bootIdPath ?? '/proc/sys/kernel/random/boot_id');
    return driver;
  } catch (err) {
    await lock.close();
    throw err;
  }
}

class OntopDriver implements Driver {
  private readonly volumes: VolumeTable;
  private readonly queues = new VolumeQueues();
  private readonly mounter: Mounter;
  private readonly logger: Logger;
  private readonly fault: FaultHook;
  private readonly driverName: string;
  private readonly ops: Operations;
  private closing: Promise<void> | undefined;
  private sweeping: Promise<void> | undefined;

  constructor(
    private readonly store: Store,
    opts: DriverOptions,
    private readonly ctx: BaseContext,
    private readonly rootLock: fsp.FileHandle,
  ) {
    this.logger = opts.logger;
    this.fault = opts.faults ?? (() => {});
    this.driverName = opts.name ?? 'ontop';
    this.volumes = new VolumeTable(store);
    this.mounter = new Mounter(store, ctx, this.logger, this.fault);
    this.ops = new Operations({
      store,
      volumes: this.volumes,
      ctx,
      logger: this.logger,
      driverName: this.driverName,
      queued: (verb, name, fn, alsoHold) => this.queued(verb, name, fn, alsoHold),
      addVolume: (name, meta, owner, extras) => this.addVolume(name, meta, owner, extras),
    });
  }

  async start(bootIdPath: string): Promise<void> {
    const deps = { store: this.store, volumes: this.volumes, queues: this.queues, logger: this.logger, closing: () => this.closing !== undefined };
    this.sweeping = (await recover(deps, bootIdPath)).sweep;
  }

  /**
   * Refuses new calls, stops the sweep at the next volume, waits for the calls
   * queued or running and for background deletions, and always releases
   * daemon.lock. Not bounded here: a call may wait on a hung base; main bounds
   * the whole stop.
   */
  async close(): Promise<void> {
    this.closing ??= (async () => {
      try {
        await this.sweeping?.catch((err: unknown) => this.logger.warn('the sweep of mount records failed', errorFields(err)));
        await this.queues.drain();
        await this.store.settled();
      } finally {
        await this.rootLock.close();
      }
    })();
    return this.closing;
  }

  /**
   * Runs a changing verb in the volume's queue (and in alsoHold's too). Refusals pass through; any
   * other failure is logged with its details and reported in words.
   */
  private async queued<T>(verb: string, name: string, fn: () => Promise<T>, alsoHold?: string): Promise<T> {
    if (this.closing !== undefined) throw new DriverError('ontop is shutting down; try again once it is back');
    try {
      if (alsoHold === undefined) return await this.queues.run(name, fn);
      // Two queues (a clone's source and target), always taken in name order: two clones cannot wait on each other.
      const [first, second] = [name, alsoHold].sort() as [string, string];
      return await this.queues.run(first, () => this.queues.run(second, fn));
    } catch (err) {
      if (isDriverError(err)) throw err;
      this.logger.error(`${verb} failed`, { volume: name, ...errorFields(err, true) });
      throw new DriverError(`${verb} of volume ${name} failed: ${this.explain(err)}`, { cause: err });
    }
  }

  /** A system error in words a user can act on; the raw message is kept for the details. */
  private explain(err: unknown): string {
    const message = (err as Error).message;
    switch (errnoCode(err)) {
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

  async create(req: CreateRequest): Promise<Empty> {
    const name = checkName(req?.Name);
    const opts = parseOptions(req?.Opts, this.driverName);
    if (opts.from !== undefined) {
      const given = { ...(req.Opts as Record<string, string>) };
      await this.ops.cloneVolume({ name, opts: { ...opts, from: opts.from }, volatileGiven: given.volatile !== undefined, given, idempotent: true });
      return {};
    }
    const layers = await resolveLayers(opts.layers, this.ctx);
    const base = layers[0] as (typeof layers)[number];
    const p = this.store.paths(name);
    // Refuses now, not at the first Mount. A stack goes one layer per call (lowerdir+), with no string to outgrow.
    if (layers.length === 1) overlayData({ lower: descriptorPath(2 ** 31 - 1), upper: p.upper, work: p.work, volatile: opts.volatile });
    const kind: UpperKind = opts.upper === 'tmpfs' ? 'tmpfs' : this.store.uppers.diskKind();
    if (opts.size !== undefined && kind === 'disk') {
      throw new DriverError(
        `option size cannot bound a disk upper on the filesystem of the state root ${this.store.root}: it needs btrfs (with quotas on), where each volume's changes are a subvolume with a limit. Use upper=tmpfs for changes in memory, or put the state root on btrfs`,
      );
    }
    const size = kind === 'tmpfs' ? tmpfsSize(opts.size) : opts.size;
    return this.queued('create', name, async () => {
      const existing = this.volumes.find(name);
      if (existing !== undefined) {
        const { meta, problems } = this.volumes.load(existing);
        if (meta === undefined) {
          throw new DriverError(`volume ${name} already exists but is damaged (${problems.join('; ')}): remove it first`);
        }
        const diffs: string[] = [];
        const had = layersOf(meta).join(':');
        const want = layers.map((l) => l.host).join(':');
        if (had !== want) diffs.push(`base is ${had}, not ${want}`);
        if (meta.volatile !== opts.volatile) diffs.push(`volatile is ${meta.volatile}, not ${opts.volatile}`);
        if ((upperKindOf(meta) === 'tmpfs') !== (kind === 'tmpfs')) diffs.push(`upper is ${upperKindOf(meta) === 'tmpfs' ? 'tmpfs' : 'disk'}, not ${opts.upper}`);
        if (meta.size !== size) diffs.push(`size is ${meta.size ?? 'unlimited'}, not ${size ?? 'unlimited'}`);
        if (diffs.length > 0) {
          throw new DriverError(`volume ${name} already exists with other options (${diffs.join('; ')}): remove it first, or choose another name`);
        }
        return {};
      }
      const meta: VolumeMeta = {
        version: 1,
        base: base.host,
        ...(layers.length > 1 ? { layers: layers.map((l) => l.host) } : {}),
        volatile: opts.volatile,
        ...(kind === 'disk' ? {} : { upper: kind }),
        ...(size === undefined ? {} : { size }),
        createdAt: new Date().toISOString(),
        options: { ...(req.Opts as Record<string, string>) },
      };
      await this.addVolume(name, meta, base.owner);
      this.logger.info('volume created', { volume: name, base: meta.base, volatile: meta.volatile, upper: kind, ...(layers.length > 1 ? { layers: layers.length } : {}), ...(size === undefined ? {} : { size }) });
      return {};
    });
  }

  /** Makes the volume on disk (store.create), then in the table. `fill` puts content in its upper first (a clone). */
  private async addVolume(name: string, meta: VolumeMeta, owner: Owner, extras: CreateExtras = {}): Promise<void> {
    try {
      await this.store.create(name, meta, owner, extras);
    } catch (err) {
      // Memory follows disk: a volume the store could not take back exists, and is known.
      if ((err as { volumeKept?: boolean }).volumeKept === true) this.volumes.add(name);
      throw err;
    }
    this.volumes.add(name);
  }

  async mount(req: MountRequest): Promise<MountpointResponse> {
    const name = checkName(req?.Name);
    const id = checkMountId(req?.ID);
    this.volumes.known(name);
    return this.queued('mount', name, async () => {
      const vol = this.volumes.known(name); // removed while this call waited?
      if (vol.damaged !== undefined) {
        throw new DriverError(
          `volume ${name} cannot be mounted: its mount records are damaged (${vol.damaged.join('; ')}), so ontop cannot tell which containers use it. Remove it (docker volume rm ${name}), or stop ontop, delete those entries from ${this.store.paths(name).users} and start it again`,
        );
      }
      // Records hold positive counts: a volume has users exactly when it has records (no sum over them all).
      const hasUsers = vol.users !== undefined && vol.users.size > 0;
      if (!hasUsers || !vol.mounted || this.mounter.mergedState(vol) !== 'mounted') {
        if (hasUsers) {
          this.logger.error('volume has users but its overlay is gone (unmounted by hand?); mounting it again', { volume: name });
        }
        await this.ops.settleCommit(name);
        await this.mounter.firstMount(vol, this.currentMeta(vol));
      }
      const count = (vol.users?.get(id) ?? 0) + 1;
      if (count === 1) this.store.addUser(name, id);
      else this.store.writeUser(name, id, count);
      (vol.users ??= new Map()).set(id, count);
      await this.fault('mount:after-record');
      if (this.logger.enabled('debug')) this.logger.debug('mounted', { volume: name, id, count, users: userCount(vol) });
      return { Mountpoint: this.store.paths(name).merged };
    });
  }

  /** volume.json as it is now, or a refusal saying why the volume cannot be mounted. */
  private currentMeta(vol: Volume): VolumeMeta {
    const { meta, problems } = this.volumes.reload(vol);
    if (meta === undefined || (problems.length > 0 && !meta.volatile)) {
      throw new DriverError(`volume ${vol.name} cannot be mounted: ${problems.join('; ')}. Remove it (docker volume rm ${vol.name}) and create it again`);
    }
    return meta;
  }

  async unmount(req: MountRequest): Promise<Empty> {
    const name = checkName(req?.Name);
    const id = checkMountId(req?.ID);
    this.volumes.known(name);
    return this.queued('unmount', name, async () => {
      const vol = this.volumes.known(name);
      const users = vol.users;
      const count = users?.get(id);
      if (users === undefined || count === undefined) {
        this.logger.warn('Unmount for a mount ID that has no record; nothing to do', { volume: name, id });
        return {};
      }
      if (count > 1) {
        this.store.writeUser(name, id, count - 1);
        users.set(id, count - 1);
        return {};
      }
      this.store.deleteUser(name, id);
      users.delete(id);
      if (users.size > 0) return {};
      vol.users = undefined;
      await this.fault('unmount:after-unrecord');
      await this.mounter.lastUserGone(vol);
      return {};
    });
  }

  async remove(req: NameRequest): Promise<Empty> {
    const name = checkName(req?.Name);
    this.volumes.known(name);
    return this.queued('remove', name, async () => {
      const vol = this.volumes.known(name);
      const stack = await this.mounter.stackForRemove(vol);
      if (vol.users !== undefined) {
        this.logger.warn('removing a volume that still had mount records (left by a crash or a lost Unmount)', { volume: name, ids: [...vol.users.keys()] });
      }
      // Records go before the overlay, as in Unmount: set aside in one rename (damaged ones too), so that
      // if the rename of the volume fails later no record outlives its mount; put back if the unmount fails.
      // Without merged/ (never mounted) there is no users/ to set aside: a Mount makes merged/ first.
      const aside = stack === undefined ? undefined : this.store.setUsersAside(name);
      const layers = stack?.length ?? 0;
      if (layers > 0) await this.fault('remove:before-unmount');
      try {
        await this.mounter.takeDown(name, layers);
      } catch (err) {
        if (aside !== undefined) this.store.restoreUsers(name, aside);
        throw err;
      }
      vol.users = undefined;
      vol.damaged = undefined;
      vol.mounted = false;
      // A tmpfs volume's tmpfs must not stay behind (nor be deleted file by file in the trash).
      await this.mounter.releaseScratch(name);
      const trashed = this.store.moveToTrash(this.store.paths(name).dir, name);
      this.volumes.delete(name);
      await this.fault('remove:after-rename');
      await this.store.syncVolumesDir();
      if (trashed !== undefined) this.store.deleteLater(trashed);
      this.logger.info('volume removed', { volume: name });
      return {};
    });
  }

  async path(req: NameRequest): Promise<MountpointResponse> {
    const vol = this.volumes.known(checkName(req?.Name));
    return { Mountpoint: this.volumes.info(vol).Mountpoint ?? '' };
  }

  async get(req: NameRequest): Promise<GetResponse> {
    const vol = this.volumes.known(checkName(req?.Name));
    const volume = this.volumes.describe(vol);
    const quota = this.volumes.addQuotaUse(vol, volume);
    if (quota !== undefined) await quota;
    return { Volume: volume };
  }

  async list(): Promise<ListResponse> {
    return { Volumes: [...this.volumes.all()].map((vol) => this.volumes.info(vol)) };
  }

  async capabilities(): Promise<CapabilitiesResponse> {
    return { Capabilities: { Scope: 'local' } };
  }

  // The operator's verbs (operations.ts).
  info(): Promise<InfoResult> {
    return this.ops.info();
  }

  ls(): Promise<LsResult> {
    return this.ops.ls();
  }

  diff(args: NameArgs): Promise<DiffResult> {
    return this.ops.diff(args);
  }

  reset(args: NameArgs): Promise<ResetResult> {
    return this.ops.reset(args);
  }

  commit(args: CommitArgs, onProgress?: OnProgress): Promise<CommitResult> {
    return this.ops.commit(args, onProgress);
  }

  clone(args: CloneArgs, onProgress?: OnProgress): Promise<CloneResult> {
    return this.ops.clone(args, onProgress);
  }
}

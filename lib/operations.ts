// The operator's verbs on volumes (ls, diff, reset, commit, clone, and the
// from= option of Create): checks, queues and refusals here; the walking and
// copying of layers in changes.ts. Each verb that reads or writes a volume's
// layers runs in that volume's queue, the one dockerd's calls wait in, so a
// Mount never interleaves with a commit. What changes a volume's layers
// (reset, commit, a clone's source) is refused while anything uses it.
import fs from 'node:fs';
import path from 'node:path';
import type { Change } from './changes.js';
import { jsonPath } from './changes/paths.js';
import { version } from './config.js';
import { DriverError, errnoCode } from './errors.js';
import type { Owner } from './files.js';
import type { Logger } from './log.js';
import { checkName } from './names.js';
import type { BaseContext, OpenedBase, VolumeOptions } from './options.js';
import { closeLayers, descriptorPath, openRecordedLayers, parseOptions, resolveBase, resolveLayers } from './options.js';
import type {
  ChangeJson,
  CloneArgs,
  CloneResult,
  CommitArgs,
  CommitResult,
  DiffResult,
  InfoResult,
  LsResult,
  LsRow,
  NameArgs,
  OnProgress,
  Operator,
  Progress,
  ResetResult,
} from './operator.js';
import { overlayData } from './overlay.js';
import type { CreateExtras, Store, VolumeMeta } from './store.js';
import { layersOf, upperKindOf } from './store.js';
import type { Volume, VolumeTable } from './volumes.js';
import { userCount } from './volumes.js';

export interface OperationsDeps {
  store: Store;
  volumes: VolumeTable;
  ctx: BaseContext;
  logger: Logger;
  driverName: string;
  /** Makes a volume on disk and in the table (the driver's addVolume()); `extras` gives its upper a content first. */
  addVolume(name: string, meta: VolumeMeta, owner: Owner, extras?: CreateExtras): Promise<void>;
  /** Runs `fn` in the volume's queue, and in alsoHold's too (the driver's queued()). */
  queued<T>(verb: string, name: string, fn: () => Promise<T>, alsoHold?: string): Promise<T>;
}

/** A clone asked for through Create's from= (or by `ontop clone`). */
export interface CloneRequest {
  name: string;
  opts: VolumeOptions & { from: string };
  /** Whether volatile was given; the source's is taken otherwise. */
  volatileGiven: boolean;
  /** The options as the user gave them, kept in volume.json. */
  given: Record<string, string>;
  /** Create is idempotent: an existing clone of the same source with the same options is success. */
  idempotent: boolean;
}

const NO_PROGRESS: Progress = { files: 0, bytes: 0 };

/**
 * The opened base as a path the engine can walk: its descriptor, so that a
 * path swapped after the checks changes nothing. "/." makes lstat(2) see the
 * directory, not /proc's magic link.
 */
function through(base: OpenedBase): string {
  return `${descriptorPath(base.fd)}/.`;
}

/**
 * The changes engine, loaded at the first operator call: a daemon that only
 * serves dockerd never needs it, and does not carry its code.
 */
let engineLoaded: Promise<typeof import('./changes.js')> | undefined;
function engine(): Promise<typeof import('./changes.js')> {
  engineLoaded ??= import('./changes.js');
  return engineLoaded;
}

function toJson(changes: Change[]): ChangeJson[] {
  return changes.map((c) => ({ kind: c.kind, ...jsonPath(c.path) }));
}

export class Operations implements Operator {
  constructor(private readonly d: OperationsDeps) {}

  async info(): Promise<InfoResult> {
    return { name: this.d.driverName, root: this.d.store.root, pid: process.pid, version: version() };
  }

  /** Every volume, read without waiting in queues: a hung Mount elsewhere never holds up a listing. */
  async ls(): Promise<LsResult> {
    const rows: LsRow[] = [];
    const byName = new Map([...this.d.volumes.all()].map((v) => [v.name, v]));
    for (const name of [...byName.keys()].sort()) {
      const vol = byName.get(name)!;
      const loaded = this.d.volumes.load(vol);
      const meta = loaded.meta;
      const problems = [...loaded.problems]; // a copy: what ls finds is not the volume's recorded state
      const row: LsRow = { name, users: userCount(vol), mounted: vol.mounted };
      if (meta !== undefined) {
        Object.assign(row, { base: meta.base, volatile: meta.volatile, upper: upperKindOf(meta), created: new Date(meta.createdAt).toISOString() });
        if (meta.layers !== undefined) row.layers = meta.layers;
        if (meta.size !== undefined) row.limit = meta.size;
      }
      try {
        const upper = meta === undefined ? this.d.store.paths(name).upper : this.d.store.upperPath(name, meta);
        row.size = upper === undefined ? NO_PROGRESS : await (await engine()).sizeOfChanges(upper);
      } catch (err) {
        // Missing when the volume is damaged (reported below) or was removed while we listed.
        if (problems.length === 0 && this.d.volumes.find(name) === vol) problems.push(`its changes cannot be read: ${(err as Error).message}`);
      }
      const all = [...problems, ...(vol.damaged ?? [])];
      if (all.length > 0) row.problems = all;
      rows.push(row);
    }
    return { volumes: rows };
  }

  async diff(args: NameArgs): Promise<DiffResult> {
    const name = this.known(args?.name);
    return this.d.queued('diff', name, async () => {
      const vol = this.d.volumes.known(name);
      const meta = this.usable(vol, 'its changes cannot be read');
      const upper = this.d.store.upperPath(name, meta);
      if (upper === undefined) return { changes: [] };
      const layers = await this.openRecordedLayers(name, meta, 'cannot be compared with its base');
      try {
        return { changes: toJson(await (await engine()).diffChanges(upper, layers.map(through))) };
      } finally {
        closeLayers(layers);
      }
    });
  }

  async reset(args: NameArgs): Promise<ResetResult> {
    const name = this.known(args?.name);
    return this.d.queued('reset', name, async () => {
      const vol = this.d.volumes.known(name);
      this.idle(vol, 'reset');
      const meta = this.usable(vol, 'it cannot be reset');
      // The upper's root takes the base root's owner and mode again, as a fresh upper does; without a base, only emptied.
      const upper = this.d.store.upperPath(name, meta);
      const layers = upper === undefined ? [] : await this.openRecordedLayers(name, meta, 'cannot be reset').catch(() => []);
      try {
        // The upper's root takes the top layer's owner and mode again, as a fresh upper does.
        if (upper !== undefined) await (await engine()).clearChanges(upper, layers[0] === undefined ? undefined : through(layers[0]));
      } finally {
        closeLayers(layers);
      }
      const work = this.d.store.moveToTrash(this.d.store.paths(name).work, `${name}.work`);
      if (work !== undefined) this.d.store.deleteLater(work);
      this.d.logger.info('volume reset', { volume: name });
      return { name };
    });
  }

  async commit(args: CommitArgs, onProgress?: OnProgress): Promise<CommitResult> {
    const name = this.known(args?.name);
    const dryRun = args.dryRun === true;
    return this.d.queued('commit', name, async () => {
      const vol = this.d.volumes.known(name);
      this.idle(vol, 'committed');
      const meta = this.usable(vol, 'it cannot be committed');
      const stack = layersOf(meta);
      if (stack.length > 1) {
        throw new DriverError(
          `volume ${name} stacks ${stack.length} bases, and a commit writes one: a deletion of what a lower layer holds has no place in the top one. Copy what you need out of the volume instead`,
        );
      }
      const upper = this.d.store.upperPath(name, meta);
      if (upper === undefined) return { name, base: meta.base, dryRun, changes: [], progress: NO_PROGRESS };
      const [base] = (await this.openRecordedLayers(name, meta, 'cannot take a commit')) as [OpenedBase];
      try {
        // The path, not the descriptor: the journal records paths in the base, and a commit finished by
        // another process (after a kill) must find them there. It was checked just now through the descriptor.
        const local = base.local;
        if (!dryRun) this.writable(name, meta.base, local);
        const done = await (await engine()).commitChanges({
          upper,
          base: local,
          journal: this.journalOf(name),
          dryRun,
          ...(onProgress === undefined ? {} : { onProgress }),
        });
        if (!dryRun) this.d.logger.info('volume committed', { volume: name, base: meta.base, changes: done.changes.length, ...done.progress });
        return { name, base: meta.base, dryRun, changes: toJson(done.changes), progress: done.progress };
      } finally {
        fs.closeSync(base.fd);
      }
    });
  }

  /** `ontop clone SOURCE NAME`: as Create with from=SOURCE, but an existing NAME is refused. */
  async clone(args: CloneArgs, onProgress?: OnProgress): Promise<CloneResult> {
    const given: Record<string, string> = { from: args?.source };
    if (args?.volatile !== undefined) given.volatile = args.volatile;
    const opts = parseOptions(given, this.d.driverName) as VolumeOptions & { from: string };
    const name = checkName(args.name);
    return this.cloneVolume({ name, opts, volatileGiven: args.volatile !== undefined, given, idempotent: false }, onProgress);
  }

  /**
   * A new volume over the source's base holding a copy of its changes, made
   * under tmp/ and renamed into place whole (store.create): on any failure,
   * no volume. Both volumes' queues are held.
   */
  async cloneVolume(req: CloneRequest, onProgress?: OnProgress): Promise<CloneResult> {
    const { name, opts } = req;
    let source: string;
    try {
      source = checkName(opts.from);
    } catch (err) {
      throw new DriverError(`option from: ${(err as Error).message}`);
    }
    if (source === name) throw new DriverError(`from=${source} names the volume being created: give another volume to copy`);
    this.d.volumes.known(source);
    const wanted = opts.layers.length === 0 ? undefined : (await resolveLayers(opts.layers, this.d.ctx)).map((l) => l.host).join(':');
    return this.d.queued(
      'clone',
      name,
      async () => {
        const src = this.d.volumes.known(source);
        const meta = this.usable(src, 'it cannot be cloned');
        const layers = layersOf(meta);
        if (wanted !== undefined && wanted !== layers.join(':')) {
          throw new DriverError(`from=${source} makes a volume over ${source}'s base ${layers.join(':')}, and base=${opts.base} is another: leave base out`);
        }
        const volatile = req.volatileGiven ? opts.volatile : meta.volatile;
        const p = this.d.store.paths(name);
        // Refuses now, not at the first Mount, as Create does; a stack's layers go one per call, with no string to outgrow.
        if (layers.length === 1) overlayData({ lower: descriptorPath(2 ** 31 - 1), upper: p.upper, work: p.work, volatile });
        const existing = this.d.volumes.find(name);
        if (existing !== undefined) return this.existingClone(existing, req, source, meta, volatile);
        this.idle(src, 'cloned');
        let owner: Owner;
        try {
          owner = (await resolveBase(meta.base, this.d.ctx)).owner;
        } catch (err) {
          throw new DriverError(`volume ${source} cannot be cloned: its ${(err as Error).message}`, { cause: err });
        }
        // The same shape as the source: its layers, upper kind and size limit; a tmpfs source, idle, has no changes.
        const newMeta: VolumeMeta = {
          version: 1,
          base: meta.base,
          ...(meta.layers === undefined ? {} : { layers: meta.layers }),
          volatile,
          ...(meta.upper === undefined ? {} : { upper: meta.upper }),
          ...(meta.size === undefined ? {} : { size: meta.size }),
          createdAt: new Date().toISOString(),
          options: { ...req.given },
        };
        const from = this.d.store.upperPath(source, meta);
        let progress: Progress = NO_PROGRESS;
        await this.d.addVolume(name, newMeta, owner, {
          snapshotOf: source,
          ...(from === undefined ? {} : { fill: async (upper: string) => void (progress = await (await engine()).copyChanges(from, upper, onProgress)) }),
        });
        this.d.logger.info('volume created', { volume: name, base: meta.base, volatile, from: source, ...progress });
        return { name, source, base: meta.base, volatile, progress };
      },
      source,
    );
  }

  private existingClone(existing: Volume, req: CloneRequest, source: string, srcMeta: VolumeMeta, volatile: boolean): CloneResult {
    const name = req.name;
    const { meta } = this.d.volumes.load(existing);
    if (!req.idempotent) throw new DriverError(`volume ${name} already exists: choose another name, or remove it first`);
    const diffs: string[] = [];
    if (meta === undefined) diffs.push('it is damaged');
    else {
      if (meta.options.from !== source) diffs.push(`it is not a clone of ${source}`);
      const [had, want] = [layersOf(meta).join(':'), layersOf(srcMeta).join(':')];
      if (had !== want) diffs.push(`its base is ${had}, not ${want}`);
      if (meta.volatile !== volatile) diffs.push(`volatile is ${meta.volatile}, not ${volatile}`);
    }
    if (diffs.length > 0) throw new DriverError(`volume ${name} already exists (${diffs.join('; ')}): remove it first, or choose another name`);
    return { name, source, base: srcMeta.base, volatile, progress: { files: 0, bytes: 0 } };
  }

  /**
   * Undoes what a commit killed midway left in the base (its temporary
   * files, listed in its journal) before a container sees the view; the next
   * `ontop commit` finishes the work. One stat when there is nothing to do.
   */
  async settleCommit(name: string): Promise<void> {
    const journal = this.journalOf(name);
    if (!fs.existsSync(journal)) return;
    this.d.logger.warn('a commit of this volume was interrupted; undoing its temporary files in the base before mounting (ontop commit finishes it)', { volume: name });
    await (await engine()).recoverCommit(journal);
  }

  private journalOf(name: string): string {
    return path.join(this.d.store.paths(name).dir, 'commit.journal');
  }

  /** A valid name of a volume that exists, checked before queueing. */
  private known(value: unknown): string {
    const name = checkName(value);
    this.d.volumes.known(name);
    return name;
  }

  /** volume.json, or a refusal for a damaged volume. */
  private usable(vol: Volume, what: string): VolumeMeta {
    const { meta, problems } = this.d.volumes.reload(vol);
    if (meta === undefined || problems.length > 0) {
      throw new DriverError(`volume ${vol.name} is damaged (${problems.join('; ')}): ${what}. Remove it (docker volume rm ${vol.name})`);
    }
    return meta;
  }

  /** Refuses while a container uses the volume, or an overlay is still mounted over its changes. */
  private idle(vol: Volume, what: string): void {
    const name = vol.name;
    if (vol.damaged !== undefined) {
      throw new DriverError(`volume ${name} cannot be ${what}: its mount records are damaged (${vol.damaged.join('; ')}), so ontop cannot tell whether containers use it`);
    }
    const users = userCount(vol);
    if (users > 0) throw new DriverError(`volume ${name} is in use by ${users} mount${users === 1 ? '' : 's'}; stop its containers first`);
    if (vol.mounted) {
      throw new DriverError(
        `volume ${name} cannot be ${what}: its overlay is still mounted on ${this.d.store.paths(name).merged} (an unmount failed: something on the host holds it; see the log). Stop what holds it, then try again`,
      );
    }
  }

  /** The recorded layers, top first, opened and checked as a first Mount does it; the caller closes them (closeLayers). */
  private openRecordedLayers(name: string, meta: VolumeMeta, what: string): Promise<OpenedBase[]> {
    return openRecordedLayers(layersOf(meta), this.d.ctx, (layer) => `volume ${name} ${what}: its base ${layer}`);
  }

  /** Refuses a commit into a base that cannot be written, before anything is written. */
  private writable(name: string, host: string, local: string): void {
    try {
      fs.accessSync(local, fs.constants.W_OK);
    } catch (err) {
      const why = errnoCode(err) === 'EROFS' ? 'is on a read-only filesystem' : `cannot be written (${(err as Error).message})`;
      throw new DriverError(`volume ${name} cannot be committed: its base ${host} ${why}; nothing was changed`);
    }
  }
}

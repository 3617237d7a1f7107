// The mounter: everything between a volume and the kernel's mount table. It
// opens the base to mount (and checks it through its descriptor), decides
// what a first Mount does with whatever is on merged/ (reuse, unmount,
// detach, or refuse), mounts and unmounts the overlay, and answers the one
// question the verbs ask: is this volume's overlay mounted?
//
// Never two overlays over one upper layer, in any mount namespace: a busy
// leftover over the upper of a volume that keeps its changes is refused with
// the processes that hold it; a volatile volume detaches it and starts on a
// fresh upper and work.
import fs from 'node:fs';
import { DriverError, errnoCode } from './errors.js';
import type { Logger } from './log.js';
import { errorFields } from './log.js';
import type { MountEntry } from './mountinfo.js';
import { mountsAt, otherHolders, peerGroup, processesUsing, readMountinfo, splitOptions } from './mountinfo.js';
import type { BaseContext, OpenedBase } from './options.js';
import { closeLayers, descriptorPath, openRecordedLayers, tmpfsSize } from './options.js';
import { detachOverlay, isOverlayOf, mountOverlay, OVERLAY_SOURCE, unmountOverlay } from './overlay.js';
import type { Owner } from './files.js';
import { copyOwnerAndMode } from './files.js';
import { mount } from './native.js';
import type { FaultHook, Store, VolumeMeta } from './store.js';
import { layersOf, upperKindOf } from './store.js';
import type { Volume } from './volumes.js';
import { userCount } from './volumes.js';

/** "process 12 (sh), process 40 (nginx)", at most five named. */
export function describeHolders(holders: Array<{ pid: number; command?: string }>): string {
  const seen = new Map<number, string | undefined>();
  for (const h of holders) seen.set(h.pid, h.command);
  const named = [...seen].slice(0, 5).map(([pid, cmd]) => (cmd === undefined ? `process ${pid}` : `process ${pid} (${cmd})`));
  return named.join(', ') + (seen.size > 5 ? ` and ${seen.size - 5} more` : '');
}

/** True when the mount is an overlay over this upper layer, whoever mounted it. */
function usesUpper(e: MountEntry, upper: string): boolean {
  return e.fstype === 'overlay' && splitOptions(e.superOptions).get('upperdir') === upper;
}

/**
 * What is on a volume's merged/, from one stat: `missing` (never made, or
 * deleted), `bare` (the directory the daemon left, nothing on it),
 * `mounted` (another filesystem on it: an overlay, or something else), or
 * `unknown` (same filesystem, but not known to be bare: only the mount
 * table can tell).
 */
export type MergedState = 'missing' | 'bare' | 'mounted' | 'unknown';

/**
 * Detaches whatever is mounted on a volume's scratch/ (its tmpfs, or a stack
 * of them a crash left): a tmpfs holds nothing to keep, and a detach never
 * fails with EBUSY (an overlay still over it keeps it alive until it goes).
 * Returns how many it detached.
 */
export async function releaseScratch(store: Store, name: string): Promise<number> {
  let n = 0;
  while (store.scratchMounted(name)) {
    await detachOverlay(store.paths(name).scratch);
    n++;
  }
  return n;
}

export class Mounter {
  constructor(
    private readonly store: Store,
    private readonly ctx: BaseContext,
    private readonly logger: Logger,
    private readonly fault: FaultHook,
  ) {}

  /** The one answer to "is something mounted on this volume's merged/?". */
  mergedState(vol: Volume): MergedState {
    const id = this.store.mergedId(vol.name);
    if (id === undefined) return 'missing';
    if (id.dev !== this.ctx.stateRootId.dev) return 'mounted';
    return `${id.dev}:${id.ino}` === vol.bareId ? 'bare' : 'unknown';
  }

  /**
   * Mounts the overlay for a volume's first user, or adopts one left by an
   * earlier run. `meta` is volume.json as it is now.
   */
  async firstMount(vol: Volume, meta: VolumeMeta): Promise<void> {
    const layers = await openRecordedLayers(layersOf(meta), this.ctx, (layer) => `volume ${vol.name} cannot be mounted: its base ${layer}`);
    try {
      await this.mountOver(vol, meta, layers);
    } finally {
      closeLayers(layers);
    }
  }

  private async mountOver(vol: Volume, meta: VolumeMeta, layers: OpenedBase[]): Promise<void> {
    const name = vol.name;
    const base = layers[0] as OpenedBase;
    const tmpfs = upperKindOf(meta) === 'tmpfs';
    const p = this.store.paths(name);
    if (userCount(vol) > 0 && vol.device !== undefined) {
      // Users, but the overlay left our mount table (unmounted by hand): the containers may still write
      // through it in their own namespaces.
      const holders = await otherHolders(vol.device, undefined);
      if (holders.length > 0) {
        throw new DriverError(
          `volume ${name} cannot be mounted: its overlay was unmounted from ${p.merged} by hand, but processes still use it (${describeHolders(holders)}); a second overlay over the same changes is not safe. Stop them, then try again`,
        );
      }
    }
    // The mount table is read only when something may be on merged/ (the kernel formats every mount's
    // options): not when merged/ is missing or still the bare directory the daemon left.
    const state = this.mergedState(vol);
    const bare = !vol.mounted && state === 'bare';
    if (vol.mounted || state === 'mounted' || state === 'unknown') {
      const reused = await this.clearLeftovers(name, mountsAt(await readMountinfo(), p.merged), meta.volatile);
      if (reused !== undefined) {
        this.logger.info('reusing the overlay left mounted by an earlier run', { volume: name });
        vol.mounted = true;
        vol.device = reused.device;
        return;
      }
    }
    vol.mounted = false;
    // A tmpfs volume's upper and work are made on a fresh tmpfs; they never touch the state root.
    const dirs = tmpfs ? await this.freshScratch(name, meta, base.owner) : { upper: p.upper, work: p.work };
    if (meta.volatile && !tmpfs) {
      // The last use's changes have stayed in upper/ until now, for an operator to recover.
      await this.store.freshUpper(name, meta, base.owner);
    }
    if (bare) {
      if (!tmpfs) this.store.freshWorkDir(name);
    } else {
      // After a detach (ours, or one by hand that also took merged/ away) the old workdir may still be in use
      // by the detached overlay: set it aside whole.
      if (!tmpfs) this.store.freshDir(p.work, `${name}.work`);
      const id = this.store.makeMerged(name);
      vol.bareId = `${id.dev}:${id.ino}`;
    }
    await this.fault('mount:before-mount');
    try {
      await mountOverlay({ lower: layers.map((l) => descriptorPath(l.fd)), upper: dirs.upper, work: dirs.work, volatile: meta.volatile }, p.merged);
    } catch (err) {
      if (tmpfs) await releaseScratch(this.store, name);
      this.logger.error('mounting the overlay failed', { volume: name, ...errorFields(err) });
      throw new DriverError(`volume ${name} cannot be mounted: ${(err as Error).message}`, { cause: err });
    }
    vol.mounted = true;
    vol.device = this.store.mergedDevice(name);
    await this.fault('mount:after-mount');
    this.logger.info('overlay mounted', { volume: name, base: meta.base, volatile: meta.volatile });
  }

  /**
   * A fresh tmpfs on scratch/ for a tmpfs volume's first Mount, with upper/
   * (owned like the base) and work/ on it; whatever an earlier use left
   * mounted there is detached first.
   */
  private async freshScratch(name: string, meta: VolumeMeta, owner: Owner): Promise<{ upper: string; work: string }> {
    const scratch = this.store.paths(name).scratch;
    await releaseScratch(this.store, name);
    fs.mkdirSync(scratch, { mode: 0o700, recursive: true });
    // Numbers only: no byte a user typed reaches this option string.
    await mount(OVERLAY_SOURCE, scratch, 'tmpfs', 0, `size=${meta.size ?? tmpfsSize(undefined)},mode=0700`);
    const dirs = { upper: `${scratch}/upper`, work: `${scratch}/work` };
    fs.mkdirSync(dirs.upper, { mode: 0o700 });
    copyOwnerAndMode(dirs.upper, owner);
    fs.mkdirSync(dirs.work, { mode: 0o700 });
    return dirs;
  }

  /** Detaches a tmpfs volume's tmpfs, if mounted (Remove: never leave it behind). */
  releaseScratch(name: string): Promise<number> {
    return releaseScratch(this.store, name);
  }

  /**
   * Makes merged/ ready for the first user: a lone overlay of this volume
   * left by an earlier run is reused (returned) unless the volume is
   * volatile; anything else is taken away, top first. A plain unmount first;
   * one that is busy is detached when it does not use this volume's upper,
   * or when the volume is volatile (its new overlay gets a fresh upper and
   * work). A busy overlay over the upper of a volume that
   * keeps its changes is never detached: the Mount is refused, naming what
   * holds it.
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
        // Gone between the table read and here (unmounted by hand): a race no test can time.
        /* c8 ignore next */
        if (errnoCode(err) === 'EINVAL') return undefined;
        if (errnoCode(err) !== 'EBUSY') throw err;
      }
      if (!volatile && usesUpper(e, p.upper)) {
        const holders = await processesUsing(p.merged);
        throw new DriverError(
          `volume ${name} cannot be mounted: an earlier overlay of it is still mounted on ${p.merged} and in use (${holders.length > 0 ? describeHolders(holders) : 'by a mount below it, or a process ontop cannot see'}); a second overlay over the same changes is not safe. Stop what uses it, then try again`,
        );
      }
      // Detached, never unmounted: a host process still holds files in it.
      this.logger.warn('detaching a busy leftover mount before mounting afresh', { volume: name, fstype: e.fstype, source: e.source });
      await detachOverlay(p.merged);
    }
    return undefined;
  }

  /**
   * After the last user's record is gone: unmounts the overlay. A host
   * process holding a file in it keeps it mounted (EBUSY): the next first
   * Mount reuses or detaches it.
   */
  async lastUserGone(vol: Volume): Promise<void> {
    const name = vol.name;
    try {
      await unmountOverlay(this.store.paths(name).merged);
    } catch (err) {
      if (errnoCode(err) === 'EBUSY') {
        this.logger.warn('a host process holds a file open in the volume; its overlay stays mounted until the next Mount or start', {
          volume: name,
          ...errorFields(err),
        });
        return;
      }
      if (errnoCode(err) !== 'EINVAL') throw err;
      this.logger.warn('the overlay was already unmounted', { volume: name, ...errorFields(err) });
    }
    vol.mounted = false;
    // A tmpfs volume's changes go with its last user. Asked of every volume (one stat of a missing scratch/):
    // volume.json may not be loaded (a volume whose users a start took over).
    await releaseScratch(this.store, name);
    this.logger.info('overlay unmounted', { volume: name });
  }

  /**
   * What is stacked on merged/ now (bottom first), refused when another mount namespace still holds the top;
   * undefined when merged/ is missing: no Mount got as far as making it, so none wrote a record either.
   */
  async stackForRemove(vol: Volume): Promise<MountEntry[] | undefined> {
    const name = vol.name;
    // Nothing can be stacked on a merged/ that is missing or still the bare directory the daemon left: the
    // mount table (which grows with every mount on the host) is not read for an idle volume.
    const state = this.mergedState(vol);
    if (!vol.mounted && state === 'missing') return undefined;
    if (!vol.mounted && state === 'bare') return [];
    const stack = mountsAt(await readMountinfo(), this.store.paths(name).merged);
    const top = stack[stack.length - 1];
    if (top !== undefined) {
      const holders = await otherHolders(top.device, peerGroup(top));
      if (holders.length > 0) {
        throw new DriverError(
          `volume ${name} is in use: its overlay is still mounted in another mount namespace (${describeHolders(holders)}); stop what uses it, then remove it again`,
        );
      }
    }
    return stack;
  }

  /** Unmounts `layers` mounts from merged/ for Remove; a busy one refuses, naming the processes. */
  async takeDown(name: string, layers: number): Promise<void> {
    const merged = this.store.paths(name).merged;
    for (let i = 0; i < layers; i++) {
      try {
        await unmountOverlay(merged);
      } catch (err) {
        if (errnoCode(err) === 'EBUSY') {
          const holders = await processesUsing(merged);
          throw new DriverError(
            holders.length > 0
              ? `volume ${name} is in use by ${describeHolders(holders)}: a file or directory below ${merged} is open; close it, then remove the volume again`
              : `volume ${name} is in use: something is mounted below ${merged}, or a process ontop cannot see holds it; unmount or stop it, then remove the volume again`,
          );
        }
        // EINVAL: unmounted by hand between the table read and here, a race no test can time; nothing else
        // but EBUSY can come from a plain unmount of a mount point we just saw.
        /* c8 ignore next 2 */
        if (errnoCode(err) !== 'EINVAL') throw err;
        return;
      }
    }
  }
}

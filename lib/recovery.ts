// Start-up recovery: makes the state root agree with the kernel before the
// first call is served. Half-created volumes go, the trash is emptied in the
// background, and every volume's mount records are reconciled with the
// mount table and the kernel's boot id.
//
// Volumes with an overlay mounted now are settled before serving, whatever
// the boot id says: an overlay on merged/ was mounted in this boot, so its
// records are kept (and without any, it is unmounted). After a reboot the
// records of every other volume are cleared before serving (the kernel lost
// those mounts) and the new boot id is written then too, so a start killed
// at any point never takes this boot's records or overlays for the last
// boot's. Without a reboot, records of volumes with no overlay can only be
// left by an unmount done by hand; a background sweep clears them, each in
// its volume's queue, so that a start stays one readdir for 10,000 volumes.
import path from 'node:path';
import type { VolumeQueues } from './lock.js';
import type { Logger } from './log.js';
import { errorFields } from './log.js';
import type { MountEntry } from './mountinfo.js';
import { parseMountinfo, readMountinfo } from './mountinfo.js';
import { releaseScratch } from './mounter.js';
import { checkMountId, isValidName } from './names.js';
import { unmountOverlay } from './overlay.js';
import { countRecords } from './records.js';
import type { Store } from './store.js';
import type { Volume, VolumeTable } from './volumes.js';

export interface RecoveryReport {
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

export interface RecoveryDeps {
  store: Store;
  volumes: VolumeTable;
  queues: VolumeQueues;
  logger: Logger;
  /** True once the driver is closing: the sweep stops at the next volume. */
  closing(): boolean;
}

/** Recovers the state root; resolves before serving may start, with the background sweep still running. */
export async function recover(deps: RecoveryDeps, bootIdPath: string): Promise<{ sweep: Promise<void> }> {
  const { store, volumes, logger } = deps;
  const started = Date.now();
  const { tmp, trash } = store.leftovers();
  await Promise.all(tmp.map((p) => store.removeTree(p)));
  for (const p of trash) store.deleteLater(p);

  for (const name of store.listNames()) {
    if (isValidName(name)) volumes.add(name);
    else logger.warn('ignoring a directory in volumes/ that is not a valid volume name', { path: path.join(store.volumes, name) });
  }
  const bootNow = readBootId(deps, bootIdPath);
  if (bootNow === undefined) logger.warn('the kernel boot id cannot be read; reconciling with the mount table only', { path: bootIdPath });
  const bootSeen = readBootId(deps, store.bootIdFile);
  const newBoot = bootNow !== undefined && bootNow !== bootSeen;

  // Mounts on each volume's merged/, bottom first, from one read of the table.
  // Mounts on each volume's merged/, bottom first, from one read of the table; scratch/ holds a tmpfs volume's tmpfs.
  const stacks = new Map<string, MountEntry[]>();
  const scratches = new Set<string>();
  for (const e of parseMountinfo(await readMountinfo())) {
    if (e.mountPoint.startsWith(store.volumes + '/')) stacks.set(e.mountPoint, [...(stacks.get(e.mountPoint) ?? []), e]);
    if (e.mountPoint.endsWith('/scratch')) scratches.add(e.mountPoint);
  }
  const report: RecoveryReport = {
    volumes: volumes.size,
    halfCreated: tmp.length,
    trash: trash.length,
    firstStart: bootSeen === undefined,
    rebooted: newBoot && bootSeen !== undefined,
    recordsCleared: 0,
    unmounted: 0,
    busy: 0,
  };
  const later: string[] = [];
  await Promise.all(
    [...volumes.all()].map(async (vol) => {
      const stack = stacks.get(store.paths(vol.name).merged) ?? [];
      if (stack.length > 0) await reconcile(deps, vol, stack, report);
      else if (newBoot) clearLastBoot(deps, vol, report);
      else later.push(vol.name);
      // A tmpfs with no overlay over it (a crash between the two mounts, or the overlay unmounted by now)
      // holds changes that are gone anyway: released before serving, as leftover overlays are.
      if (!vol.mounted && scratches.has(store.paths(vol.name).scratch)) report.unmounted += await releaseScratch(store, vol.name);
    }),
  );
  if (newBoot) {
    try {
      await store.writeBootId(bootNow);
    } catch (err) {
      // Only costs a second clearing of records with no overlay at the next start, which finds nothing new.
      logger.warn('could not record the boot id', { path: store.bootIdFile, ...errorFields(err) });
    }
  }
  logger.info('state root recovered', { root: store.root, ms: Date.now() - started, ...report });
  return { sweep: sweep(deps, later, report) };
}

/** A boot id, or undefined when it is missing or cannot be read (logged): damage never stops a start. */
function readBootId({ store, logger }: RecoveryDeps, file: string): string | undefined {
  try {
    return store.readBootId(file);
  } catch (err) {
    logger.warn('a boot id file is damaged; taken as missing', { path: file, ...errorFields(err) });
    return undefined;
  }
}

/** After a reboot: the records of a volume without an overlay are all stale; set aside in one rename. */
function clearLastBoot({ store, logger }: RecoveryDeps, vol: Volume, report: RecoveryReport): void {
  try {
    const aside = store.setUsersAside(vol.name);
    if (aside === undefined) return;
    report.recordsCleared += countRecords(aside);
    store.deleteLater(aside);
  } catch (err) {
    // Left in place they are cleared by the next start's sweep (no overlay, no reboot); until then a Mount
    // adds its own record beside them and an Unmount removes only its own.
    logger.warn('could not clear the mount records of the last boot', { volume: vol.name, ...errorFields(err) });
  }
}

/** Clears the stale records of volumes without an overlay, 16 volumes at a time; stops when the driver closes. */
async function sweep(deps: RecoveryDeps, names: string[], report: RecoveryReport): Promise<void> {
  const { volumes, queues, logger } = deps;
  const started = Date.now();
  const before = report.recordsCleared;
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < names.length && !deps.closing()) {
      const name = names[next++] as string;
      await queues
        .run(name, async () => {
          const vol = volumes.find(name);
          if (vol !== undefined) await reconcile(deps, vol, [], report);
        })
        .catch((err: unknown) => logger.warn('could not clear stale mount records; the next start tries again', { volume: name, ...errorFields(err) }));
    }
  };
  await Promise.all(Array.from({ length: 16 }, worker));
  logger.info('mount records reconciled', { volumes: names.length, recordsCleared: report.recordsCleared - before, ms: Date.now() - started });
}

/**
 * Decides one volume from its records and the mounts stacked on its
 * merged/ (bottom first). With an overlay mounted, the records are kept:
 * that overlay was mounted in this boot. With none, every record is stale,
 * except the IDs a Mount has added since start (in memory).
 */
async function reconcile({ store, logger }: RecoveryDeps, vol: Volume, stack: MountEntry[], report: RecoveryReport): Promise<void> {
  const { users: records, damaged } = store.inspectUsers(vol.name);
  if (stack.length === 0) {
    const stale = [...records.keys()].filter((id) => vol.users?.has(id) !== true);
    if (stale.length > 0) {
      logger.error('volume had users but its overlay is gone: the containers that used it lost it (was it unmounted by hand?); clearing the records', {
        volume: vol.name,
        ids: stale,
      });
    }
    report.recordsCleared += stale.length;
    try {
      store.clearUsers(vol.name, stale);
    } catch (err) {
      // What could not be cleared and is no record (a directory) stays as damage until someone deletes it.
      const left = store.inspectUsers(vol.name);
      if (left.damaged.length > 0) vol.damaged = left.damaged;
      throw err;
    }
    return;
  }
  if (damaged.length > 0) {
    vol.damaged = damaged;
    logger.error('volume has damaged mount records; it is refused for new mounts until they are deleted', { volume: vol.name, damaged });
  }
  for (const [id, count] of records) {
    try {
      (vol.users ??= new Map()).set(checkMountId(id), count);
    } catch {
      logger.warn('ignoring a mount record with an invalid name', { volume: vol.name, id });
    }
  }
  const merged = store.paths(vol.name).merged;
  let stacked = stack.length;
  // Damage means users cannot be counted: the overlay stays, as if used.
  while (stacked > 0 && vol.users === undefined && vol.damaged === undefined) {
    try {
      await unmountOverlay(merged);
      report.unmounted++;
      stacked--;
    } catch (err) {
      logger.warn('a leftover overlay with no users is busy; the next Mount reuses it or says what holds it', { volume: vol.name, ...errorFields(err) });
      report.busy++;
      break;
    }
  }
  if (stacked > 0) {
    vol.mounted = true;
    vol.device = (stack[stacked - 1] as MountEntry).device;
  }
}

// Making a volume on disk: built under tmp/ and renamed into volumes/, so
// that a crash, or a power loss, leaves either no volume or a whole one. The
// new tree (volume.json, upper/ and the directory holding them) is synced
// before the rename, and volumes/ after it. When anything fails after the
// rename, the volume is renamed out again (to the trash) before the error is
// thrown, so that memory (no volume) and disk agree. The tree's three syncs
// go to the thread pool at once; volumes/ is synced as Store.syncVolumesDir
// does it. A clone's upper is a snapshot of its source's
// (`extras.snapshotOf`) where both are btrfs subvolumes, else `extras.fill`
// copies the source's changes into it while it is still under tmp/: if
// either fails, no volume appears.
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Owner } from './files.js';
import { randomSuffix } from './files.js';
import type { Logger } from './log.js';
import { errorFields } from './log.js';
import type { VolumeMeta } from './meta.js';
import { upperKindOf } from './meta.js';
import type { CreateExtras, FaultHook, Store } from './store.js';

const fdatasync = promisify(fs.fdatasync);
const fsync = promisify(fs.fsync);

export interface Creation {
  name: string;
  meta: VolumeMeta;
  /** Owner and mode the upper layer takes (its base's root's). */
  upperLike: Owner;
  extras: CreateExtras;
  fault: FaultHook;
  logger: Logger;
}

export async function buildVolume(store: Store, c: Creation): Promise<void> {
  const { name, meta, extras } = c;
  const kind = upperKindOf(meta);
  const tmp = path.join(store.tmp, `${name}.${randomSuffix()}`);
  const dir = store.paths(name).dir;
  const fds: number[] = [];
  const open = (p: string, flags: number | string, mode?: number): number => {
    const fd = fs.openSync(p, flags, mode);
    fds.push(fd);
    return fd;
  };
  let renamed = false;
  try {
    fs.mkdirSync(tmp, { mode: 0o700 });
    // merged/, work/ and users/ are made by the first Mount: one inode each fewer for Create. A tmpfs
    // volume's upper is made on its tmpfs at each first Mount.
    const { snapshotOf, fill } = extras;
    const snapped = kind === 'btrfs-subvolume' && snapshotOf !== undefined && (await store.uppers.snapshot(store.paths(snapshotOf).upper, path.join(tmp, 'upper'), meta.size));
    const upper = kind === 'tmpfs' ? undefined : snapped ? path.join(tmp, 'upper') : await store.uppers.make(tmp, kind, meta.size, c.upperLike);
    if (upper !== undefined && !snapped && fill !== undefined) await fill(upper);
    const metaFd = open(path.join(tmp, 'volume.json'), 'wx', 0o600);
    fs.writeFileSync(metaFd, JSON.stringify(meta, null, 2) + '\n');
    const dirFlags = fs.constants.O_RDONLY | fs.constants.O_DIRECTORY;
    await Promise.all([fdatasync(metaFd), ...(upper === undefined ? [] : [fsync(open(upper, dirFlags))]), fsync(open(tmp, dirFlags))]);
    await c.fault('create:before-rename');
    fs.renameSync(tmp, dir);
    renamed = true;
    await c.fault('create:after-rename');
    await store.syncVolumesDir();
  } catch (err) {
    if (renamed) {
      // The rename happened but is not known to be durable: take the volume out of sight again. Should
      // that fail too, the volume stays, whole, and the caller is told so (err.volumeKept).
      try {
        const out = store.moveToTrash(dir, `${name}.failed`);
        if (out !== undefined) store.deleteLater(out);
      } catch (undo) {
        c.logger.error('could not take back a volume whose creation failed after its rename; it stays', { volume: name, ...errorFields(undo) });
        throw Object.assign(err as Error, { volumeKept: true });
      }
    } else {
      await store.removeTree(tmp);
    }
    throw err;
  } finally {
    for (const fd of fds) fs.closeSync(fd);
  }
}

// The upper layers ontop makes on the state root: a plain directory, or on
// btrfs a subvolume of its own (limited by a quota group when the volume has
// a size), snapshotted for a clone and destroyed in one ioctl. All through
// the addon's btrfs calls; never a `btrfs` process.
import fs from 'node:fs';
import path from 'node:path';
import { DriverError, errnoCode } from './errors.js';
import type { Owner } from './files.js';
import { copyOwnerAndMode } from './files.js';
import type { UpperKind } from './meta.js';
import { parseMountinfo, readMountinfo } from './mountinfo.js';
import { btrfsId, qgroupLimit, snapshot, subvolCreate, subvolDestroy } from './native.js';

/** statfs(2) f_type of btrfs. */
export const BTRFS_MAGIC = 0x9123683e;

/** On btrfs the root directory of a subvolume, and only it, has inode 256 (BTRFS_FIRST_FREE_OBJECTID). */
const SUBVOLUME_ROOT_INO = 256;

export class Uppers {
  private btrfs: boolean | undefined;

  /** `root`: the state root, a real path. */
  constructor(private readonly root: string) {}

  /** True when the state root is on btrfs: every volume's upper is then a subvolume of its own. */
  get onBtrfs(): boolean {
    this.btrfs ??= fs.statfsSync(this.root).type === BTRFS_MAGIC;
    return this.btrfs;
  }

  /** The upper kind a new disk volume gets here. */
  diskKind(): UpperKind {
    return this.onBtrfs ? 'btrfs-subvolume' : 'disk';
  }

  /**
   * Makes `dir/upper` for a volume's changes: a subvolume with its quota
   * group limited to `size` on btrfs, a plain directory elsewhere. Quotas
   * off: refused, naming the command that turns them on (never ontop's to
   * run: a filesystem-wide change with a cost).
   */
  async make(dir: string, kind: UpperKind, size: number | undefined, like: Owner): Promise<string> {
    const upper = path.join(dir, 'upper');
    if (kind !== 'btrfs-subvolume') fs.mkdirSync(upper, { mode: 0o700 });
    else {
      await subvolCreate(dir, 'upper');
      if (size !== undefined) await this.limit(upper, size);
    }
    copyOwnerAndMode(upper, like);
    return upper;
  }

  private async limit(subvolume: string, size: number): Promise<void> {
    try {
      await qgroupLimit(subvolume, size);
    } catch (err) {
      if (errnoCode(err) !== 'ENOTCONN') throw err;
      throw new DriverError(
        `option size needs btrfs quotas, which are off on the filesystem of the state root ${this.root}: turn them on with \`btrfs quota enable ${await this.rootMountpoint()}\` (a filesystem-wide change, never made by ontop), or use upper=tmpfs`,
      );
    }
  }

  /** The mount point of the filesystem holding the state root, from the mount table. */
  async rootMountpoint(): Promise<string> {
    const within = parseMountinfo(await readMountinfo())
      .map((e) => e.mountPoint)
      .filter((m) => m === '/' || this.root === m || this.root.startsWith(m + '/'));
    return within.reduce((a, b) => (b.length > a.length ? b : a), '/');
  }

  /**
   * Makes `dst` (missing; its parent on the state root) a snapshot of the
   * upper `src`, limited to `size` when given. False, with nothing done, when
   * `src` is no btrfs subvolume: the caller copies instead. The snapshot is
   * of the upper as it is at that instant.
   */
  async snapshot(src: string, dst: string, size?: number): Promise<boolean> {
    if (!this.isSubvolume(src)) return false;
    await snapshot(src, path.dirname(dst), path.basename(dst));
    if (size !== undefined) await this.limit(dst, size);
    return true;
  }

  /** Bytes the subvolume `upper` holds, as its quota group counts them. */
  async referenced(upper: string): Promise<number> {
    const id = await btrfsId(upper);
    return Number(fs.readFileSync(`/sys/fs/btrfs/${id.fsid}/qgroups/0_${id.subvolume}/referenced`, 'utf8'));
  }

  /** True when `p` is the root of a btrfs subvolume (not following a symlink). */
  isSubvolume(p: string): boolean {
    if (!this.onBtrfs) return false;
    const st = fs.lstatSync(p, { throwIfNoEntry: false });
    return st !== undefined && st.isDirectory() && st.ino === SUBVOLUME_ROOT_INO;
  }

  /**
   * Destroys the subvolumes a tree to be deleted may hold: the tree itself (an
   * old upper) or its upper/ (a volume). One ioctl each, however full; a
   * recursive rm could delete one only after emptying it, file by file.
   */
  async destroySubvolumes(p: string): Promise<void> {
    for (const sub of [p, path.join(p, 'upper')]) {
      if (this.isSubvolume(sub)) await subvolDestroy(path.dirname(sub), path.basename(sub));
    }
  }
}

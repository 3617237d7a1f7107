// copy (clone, from=) and clear (reset): an upper layer copied exactly into
// another, and an upper layer emptied in place.
import type { BigIntStats } from 'node:fs';
import fsp from 'node:fs/promises';
import { lremovexattr, syncfs } from '../native.js';
import { CHUNK, copyMetadata, everything, gate, join, listXattrs, lstat, makeCopy, readdirSorted, removeTree } from './files.js';
import type { Progress } from './types.js';

/** The upper root's identity of its overlay (uuid=auto): not a change; a copy is another overlay. */
const UUID = 'trusted.overlay.uuid';

// ---------------------------------------------------------------------------
// copy (clone, from=)

/**
 * Copies the upper layer `src` into `dst`, an existing empty directory,
 * exactly: whiteouts (as 0:0 character devices), every xattr including
 * overlayfs's own (they are the semantics here: opaque, whiteout), owner,
 * mode, ns times, symlinks, special files, and hard links within the tree;
 * `dst` itself gets `src`'s metadata but trusted.overlay.uuid, which
 * identifies the source's overlay. Ends with syncfs(2), so the copy is on
 * disk before the caller renames it into place.
 */
export async function copyChanges(src: string, dst: string, onProgress?: (p: Progress) => void): Promise<Progress> {
  const progress: Progress = { files: 0, bytes: 0 };
  const links = new Map<string, Buffer>();
  const buffer = Buffer.allocUnsafe(CHUNK);
  const copyDir = async (s: Buffer, d: Buffer, st: BigIntStats, keep: (name: Buffer) => boolean = everything): Promise<void> => {
    for (const name of await readdirSorted(s)) {
      const sc = join(s, name);
      const dc = join(d, name);
      const cst = await lstat(sc);
      if (cst.isDirectory()) {
        await fsp.mkdir(dc, { mode: 0o700 });
        await copyDir(sc, dc, cst);
        continue;
      }
      // Whiteouts that share one inode (as this kernel makes them) stay shared.
      const key = `${cst.dev}:${cst.ino}`;
      const first = cst.nlink > 1n ? links.get(key) : undefined;
      if (first !== undefined) {
        await fsp.link(first, dc);
      } else {
        await makeCopy(sc, dc, cst, buffer);
        await copyMetadata(sc, dc, cst, everything, false);
        if (cst.nlink > 1n) links.set(key, dc);
        if (cst.isFile()) progress.bytes += Number(cst.size);
      }
      progress.files++;
      onProgress?.({ ...progress });
    }
    await copyMetadata(s, d, st, keep, false);
  };
  const d = Buffer.from(dst);
  await copyDir(Buffer.from(src), d, await lstat(Buffer.from(src)), (name) => name.toString('latin1') !== UUID);
  await gate(() => syncfs(d));
  return progress;
}

// ---------------------------------------------------------------------------
// clear (reset)

/**
 * Empties `upper` in place: every entry below it is deleted (symlinks are
 * never followed), and its own xattrs go too (overlayfs's, such as opaque,
 * and any a container set on the volume's root), all but security.* labels
 * and the overlay's uuid.
 * With `base`, the upper root also takes the base root's owner and mode, as
 * a fresh upper does, so the view is the pristine base.
 */
export async function clearChanges(upper: string, base?: string): Promise<void> {
  const u = Buffer.from(upper);
  for (const name of await fsp.readdir(u, { encoding: 'buffer' })) await removeTree(join(u, name));
  for (const name of await listXattrs(u)) {
    const s = name.toString('latin1');
    if (!s.startsWith('security.') && s !== UUID) await gate(() => lremovexattr(u, name));
  }
  if (base === undefined) return;
  const st = await fsp.stat(base);
  await fsp.chown(u, st.uid, st.gid);
  await fsp.chmod(u, st.mode & 0o7777);
}

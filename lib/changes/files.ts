// The low-level file work the changes engine shares: Buffer paths, lstat,
// overlayfs's xattrs (whiteout, opaque), times, the limits on concurrent
// calls into the addon, deleting a tree, fsync, and copying one entry with
// its metadata.
import fs from 'node:fs';
import type { BigIntStats } from 'node:fs';
import fsp from 'node:fs/promises';
import { errnoCode } from '../errors.js';
import { constants, lgetxattr, llistxattr, lremovexattr, lsetxattr, mknod, utimensat } from '../native.js';

export const OPAQUE = 'trusted.overlay.opaque';
const WHITEOUT_XATTR = 'trusted.overlay.whiteout';
/** overlayfs's own xattrs: the semantics of an upper layer, never a base's. */
const OVERLAY_PREFIXES = ['trusted.overlay.', 'user.overlay.'];
const SLASH = Buffer.from('/');

// ---------------------------------------------------------------------------
// Small helpers on Buffer paths

export function join(dir: Buffer, name: Buffer): Buffer {
  return Buffer.concat([dir, SLASH, name]);
}

export function parentOf(p: Buffer): Buffer {
  return p.subarray(0, p.lastIndexOf(0x2f));
}

export function byBytes(a: Buffer, b: Buffer): number {
  return Buffer.compare(a, b);
}

export function lstat(p: Buffer): Promise<BigIntStats> {
  return fsp.lstat(p, { bigint: true });
}

export async function lstatOrNull(p: Buffer): Promise<BigIntStats | null> {
  try {
    return await lstat(p);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return null;
    throw err;
  }
}

export async function readdirSorted(p: Buffer): Promise<Buffer[]> {
  return (await fsp.readdir(p, { encoding: 'buffer' })).sort(byBytes);
}

/** An xattr's value, or undefined when it is not set (or the filesystem has none). */
async function xattr(p: Buffer, name: string): Promise<Buffer | undefined> {
  try {
    return await gate(() => lgetxattr(p, name));
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'ENODATA' || code === 'ENOTSUP') return undefined;
    throw err;
  }
}

function isOverlayXattr(name: Buffer): boolean {
  const s = name.toString('latin1');
  return OVERLAY_PREFIXES.some((prefix) => s.startsWith(prefix));
}

export function listXattrs(p: Buffer): Promise<Buffer[]> {
  // A filesystem without xattrs lists none rather than failing.
  return gate(() => llistxattr(p));
}

export async function isWhiteout(p: Buffer, st: BigIntStats): Promise<boolean> {
  if (st.isCharacterDevice()) return st.rdev === 0n;
  return st.isFile() && st.size === 0n && (await xattr(p, WHITEOUT_XATTR)) !== undefined;
}

export async function isOpaque(p: Buffer): Promise<boolean> {
  return (await xattr(p, OPAQUE))?.toString('latin1') === 'y';
}

export function timesOf(st: BigIntStats): Times {
  return { atimeNs: st.atimeNs, mtimeNs: st.mtimeNs };
}

export interface Times {
  atimeNs: bigint;
  mtimeNs: bigint;
}

export function setTimes(p: Buffer, t: Times): Promise<void> {
  return gate(() => utimensat(p, t.atimeNs, t.mtimeNs, constants.AT_SYMLINK_NOFOLLOW));
}

// The addon runs at most threadLimit calls at once for the whole daemon
// (mounts included), so the engine keeps its own share small.
const GATE_LIMIT = 8;
let gateUsed = 0;
const gateQueue: Array<() => void> = [];

export async function gate<T>(call: () => Promise<T>): Promise<T> {
  if (gateUsed >= GATE_LIMIT) await new Promise<void>((resolve) => gateQueue.push(resolve));
  else gateUsed++;
  try {
    return await call();
  } finally {
    const next = gateQueue.shift();
    if (next) next();
    else gateUsed--;
  }
}

/** Runs `fn` on every item, at most `limit` at once, results in order. */
export async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

export const PARALLEL = 16;

/** For a clean-up whose failure must not hide the failure that called for it. */
export const ignore = (): void => undefined;

/** Deletes `p` and, for a directory, everything below it; never follows a symlink. Missing is fine. */
export async function removeTree(p: Buffer): Promise<void> {
  const st = await lstatOrNull(p);
  if (st === null) return;
  if (st.isDirectory()) {
    for (const name of await fsp.readdir(p, { encoding: 'buffer' })) await removeTree(join(p, name));
    await fsp.rmdir(p);
  } else {
    await fsp.unlink(p);
  }
}

export async function fsyncPath(p: Buffer): Promise<void> {
  const fh = await fsp.open(p, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------
// Metadata

/** major and minor of a dev_t, as glibc's major(3) and minor(3) split it. */
function devParts(rdev: bigint): [number, number] {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  return [Number(major), Number(minor)];
}

/**
 * Gives `dst` the xattrs of `src` (those `keep` accepts). With `prune`, also
 * removes from `dst` what `src` lacks, but never a security.* label, which
 * the base's own policy sets.
 */
async function copyXattrs(src: Buffer, dst: Buffer, keep: (name: Buffer) => boolean, prune: boolean): Promise<void> {
  const names = (await listXattrs(src)).filter(keep);
  for (const name of names) {
    const value = await gate(() => lgetxattr(src, name));
    await gate(() => lsetxattr(dst, name, value));
  }
  if (!prune) return;
  const wanted = new Set(names.map((n) => n.toString('latin1')));
  for (const name of await listXattrs(dst)) {
    const s = name.toString('latin1');
    if (wanted.has(s) || !keep(name) || s.startsWith('security.')) continue;
    await gate(() => lremovexattr(dst, name));
  }
}

/** Owner, mode, xattrs and times of `st` (read from `src`) onto `dst`, in the order that keeps each: chown clears set-id bits and capabilities. */
export async function copyMetadata(src: Buffer, dst: Buffer, st: BigIntStats, keep: (name: Buffer) => boolean, prune: boolean): Promise<void> {
  await fsp.lchown(dst, Number(st.uid), Number(st.gid));
  if (!st.isSymbolicLink()) await fsp.chmod(dst, Number(st.mode) & 0o7777);
  await copyXattrs(src, dst, keep, prune);
  await setTimes(dst, timesOf(st));
}

/** Bytes moved per read and write when copying a file; one buffer per commit or copy. */
export const CHUNK = 1 << 20;

/**
 * Makes `dst`, which must not exist, a copy of what `src` is: a file's bytes,
 * a symlink's target, a special file's type and device number. It stays
 * private (a file 0600, a special file no permission at all, owned by this
 * process) until copyMetadata gives it its owner and mode, so that a set-id
 * file is never, even briefly, a set-id file of root's.
 */
export async function makeCopy(src: Buffer, dst: Buffer, st: BigIntStats, buf: Buffer): Promise<void> {
  if (st.isSymbolicLink()) return fsp.symlink(await fsp.readlink(src, { encoding: 'buffer' }), dst);
  if (!st.isFile()) return gate(() => mknod(dst, Number(st.mode) & fs.constants.S_IFMT, ...devParts(st.rdev)));
  const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
  const from = await fsp.open(src, O_RDONLY | O_NOFOLLOW);
  try {
    const to = await fsp.open(dst, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
    try {
      for (;;) {
        const { bytesRead } = await from.read(buf, 0, buf.length, null);
        if (bytesRead === 0) break;
        // A write may be short (the disk filling up); the next one then fails.
        for (let done = 0; done < bytesRead; ) {
          const { bytesWritten } = await to.write(buf, done, bytesRead - done, null).catch((err: Error) => {
            throw Object.assign(err, { dest: dst });
          });
          done += bytesWritten;
        }
      }
    } finally {
      await to.close();
    }
  } finally {
    await from.close();
  }
}

export const notOverlay = (name: Buffer) => !isOverlayXattr(name);
export const everything = () => true;

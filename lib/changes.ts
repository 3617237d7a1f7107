// A volume's changes, read and written from its upper layer: what they are
// against the bases (diff), how much they hold (size), writing them into the
// base (commit, the only code that ever writes a base), copying them into
// another upper (clone) and dropping them (reset). Works on directories given
// as paths; knows nothing of volumes, the store or the daemon.
//
// With redirect_dir and metacopy off (overlay.ts), the upper layer alone says
// what changed: a whiteout (a 0:0 character device, or a file with the xattr
// trusted.overlay.whiteout) deletes, an opaque directory (trusted.overlay.
// opaque=y) hides the lower one whole, anything else is new or changed whole.
//
// Names are bytes, not strings: every path here is a Buffer, so a name that
// is not UTF-8 is read, compared and written exactly.
//
// Anything that touches a base runs on fs.promises (libuv's pool) and the
// addon's threads, never on the event loop.
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { BigIntStats } from 'node:fs';
import fsp from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { DriverError, errnoCode } from './errors.js';
import { constants, lgetxattr, llistxattr, lremovexattr, lsetxattr, mknod, syncfs, utimensat } from './native.js';

export type ChangeKind = 'A' | 'C' | 'D';

/** One changed path: raw bytes relative to the volume's root, starting with '/'. */
export interface Change {
  kind: ChangeKind;
  path: Buffer;
}

/** Files and bytes: what changes hold, or how far a commit or a copy has come. */
export interface Progress {
  files: number;
  bytes: number;
}

const OPAQUE = 'trusted.overlay.opaque';
const WHITEOUT_XATTR = 'trusted.overlay.whiteout';
/** overlayfs's own xattrs: the semantics of an upper layer, never a base's. */
const OVERLAY_PREFIXES = ['trusted.overlay.', 'user.overlay.'];
/** The upper root's identity of its overlay (uuid=auto): not a change; a copy is another overlay. */
const UUID = 'trusted.overlay.uuid';
const SLASH = Buffer.from('/');
const TEMP_PREFIX = '.ontop-commit-';

// ---------------------------------------------------------------------------
// Printing paths

/** Length of the valid UTF-8 sequence at b[i] (1 to 4), or 0 when the byte there starts none. */
function utf8Length(b: Buffer, i: number): number {
  const c = b[i]!;
  if (c < 0x80) return 1;
  let n: number;
  let min: number;
  if (c >= 0xc2 && c <= 0xdf) [n, min] = [2, 0x80];
  else if (c >= 0xe0 && c <= 0xef) [n, min] = [3, 0x800];
  else if (c >= 0xf0 && c <= 0xf4) [n, min] = [4, 0x10000];
  else return 0;
  if (i + n > b.length) return 0;
  let cp = c & (0xff >> (n + 1));
  for (let k = 1; k < n; k++) {
    const cc = b[i + k]!;
    if ((cc & 0xc0) !== 0x80) return 0;
    cp = (cp << 6) | (cc & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

function isUtf8(b: Buffer): boolean {
  for (let i = 0; i < b.length; ) {
    const n = utf8Length(b, i);
    if (n === 0) return false;
    i += n;
  }
  return true;
}

/** Characters that would break a line or hide what follows: C0, DEL, C1, and the Unicode line and paragraph separators. */
function isControl(cp: number): boolean {
  return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp === 0x2028 || cp === 0x2029;
}

const ESCAPES: Record<number, string> = { 0x0a: '\\n', 0x09: '\\t', 0x0d: '\\r', 0x22: '\\"', 0x5c: '\\\\' };

/**
 * A path on one line, unambiguously. Printed as it is when it is valid UTF-8
 * and holds no control character, `"` or `\`; otherwise as a C-style quoted
 * string: `"` around it, `\n`, `\t`, `\r`, `\"` and `\\` for those bytes,
 * `\xHH` (always two lowercase hex digits) for every other control character
 * (each byte of its UTF-8 form) and every byte that is not part of valid
 * UTF-8, and every other character as itself. A plain path never starts
 * with `"`, so the two forms cannot be confused.
 */
export function formatPath(p: Buffer): string {
  const s = p.toString('utf8');
  let plain = isUtf8(p);
  if (plain) {
    for (const ch of s) {
      const cp = ch.codePointAt(0)!;
      if (isControl(cp) || cp === 0x22 || cp === 0x5c) {
        plain = false;
        break;
      }
    }
  }
  if (plain) return s;
  let out = '"';
  for (let i = 0; i < p.length; ) {
    const n = utf8Length(p, i);
    if (n === 0) {
      out += '\\x' + p[i]!.toString(16).padStart(2, '0');
      i++;
      continue;
    }
    const ch = p.toString('utf8', i, i + n);
    const cp = ch.codePointAt(0)!;
    const esc = ESCAPES[cp];
    if (esc !== undefined) out += esc;
    else if (isControl(cp)) for (let k = i; k < i + n; k++) out += '\\x' + p[k]!.toString(16).padStart(2, '0');
    else out += ch;
    i += n;
  }
  return out + '"';
}

/**
 * A path for JSON output: `path` is the text (with U+FFFD for bytes that are
 * not UTF-8); `pathBase64` holds the exact bytes, and is present exactly when
 * the bytes are not valid UTF-8.
 */
export function jsonPath(p: Buffer): { path: string; pathBase64?: string } {
  return isUtf8(p) ? { path: p.toString('utf8') } : { path: p.toString('utf8'), pathBase64: p.toString('base64') };
}

// ---------------------------------------------------------------------------
// Small helpers on Buffer paths

function join(dir: Buffer, name: Buffer): Buffer {
  return Buffer.concat([dir, SLASH, name]);
}

function parentOf(p: Buffer): Buffer {
  return p.subarray(0, p.lastIndexOf(0x2f));
}

function byBytes(a: Buffer, b: Buffer): number {
  return Buffer.compare(a, b);
}

function lstat(p: Buffer): Promise<BigIntStats> {
  return fsp.lstat(p, { bigint: true });
}

async function lstatOrNull(p: Buffer): Promise<BigIntStats | null> {
  try {
    return await lstat(p);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return null;
    throw err;
  }
}

async function readdirSorted(p: Buffer): Promise<Buffer[]> {
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

function listXattrs(p: Buffer): Promise<Buffer[]> {
  // A filesystem without xattrs lists none rather than failing.
  return gate(() => llistxattr(p));
}

async function isWhiteout(p: Buffer, st: BigIntStats): Promise<boolean> {
  if (st.isCharacterDevice()) return st.rdev === 0n;
  return st.isFile() && st.size === 0n && (await xattr(p, WHITEOUT_XATTR)) !== undefined;
}

async function isOpaque(p: Buffer): Promise<boolean> {
  return (await xattr(p, OPAQUE))?.toString('latin1') === 'y';
}

function timesOf(st: BigIntStats): Times {
  return { atimeNs: st.atimeNs, mtimeNs: st.mtimeNs };
}

interface Times {
  atimeNs: bigint;
  mtimeNs: bigint;
}

function setTimes(p: Buffer, t: Times): Promise<void> {
  return gate(() => utimensat(p, t.atimeNs, t.mtimeNs, constants.AT_SYMLINK_NOFOLLOW));
}

// The addon runs at most threadLimit calls at once for the whole daemon
// (mounts included), so the engine keeps its own share small.
const GATE_LIMIT = 8;
let gateUsed = 0;
const gateQueue: Array<() => void> = [];

async function gate<T>(call: () => Promise<T>): Promise<T> {
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
async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
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

const PARALLEL = 16;

/** For a clean-up whose failure must not hide the failure that called for it. */
const ignore = (): void => undefined;

/** Deletes `p` and, for a directory, everything below it; never follows a symlink. Missing is fine. */
async function removeTree(p: Buffer): Promise<void> {
  const st = await lstatOrNull(p);
  if (st === null) return;
  if (st.isDirectory()) {
    for (const name of await fsp.readdir(p, { encoding: 'buffer' })) await removeTree(join(p, name));
    await fsp.rmdir(p);
  } else {
    await fsp.unlink(p);
  }
}

async function fsyncPath(p: Buffer): Promise<void> {
  const fh = await fsp.open(p, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

// ---------------------------------------------------------------------------
// diff

/** The lower directories merged at one path, top first; exists when any lower has the path. */
interface Lower {
  exists: boolean;
  dirs: Buffer[];
}

/**
 * What the lowers (top first) hold at `name` below `dirs`: a whiteout in a
 * lower hides the path and everything below it, a non-directory hides the
 * lowers below it, an opaque directory hides the directories below it.
 */
async function lowerChild(dirs: Buffer[], name: Buffer): Promise<Lower> {
  const found: Buffer[] = [];
  for (let i = 0; i < dirs.length; i++) {
    const p = join(dirs[i]!, name);
    const st = await lstatOrNull(p);
    if (st === null) continue;
    if (st.isCharacterDevice() && st.rdev === 0n) break;
    if (!st.isDirectory()) return { exists: true, dirs: found };
    found.push(p);
    if (i + 1 < dirs.length && (await isOpaque(p))) break;
  }
  return { exists: found.length > 0, dirs: found };
}

/**
 * How an upper directory's entries read: `plain` against the lowers merged
 * there; `opaque` below an opaque directory (the lowers are hidden, and only
 * compared: only in a lower is D, only in the upper A, in both C); `added`
 * below a directory no lower has (everything is A).
 */
type Mode = 'plain' | 'opaque' | 'added';

async function diffDir(upper: Buffer, rel: Buffer, lowers: Buffer[], mode: Mode, out: Change[]): Promise<void> {
  const names = await fsp.readdir(upper, { encoding: 'buffer' });
  const seen = new Set<string>();
  await mapLimit(names, PARALLEL, async (name) => {
    seen.add(name.toString('latin1'));
    const p = join(upper, name);
    const r = join(rel, name);
    const st = await lstat(p);
    const whiteout = await isWhiteout(p, st);
    if (mode === 'added') {
      if (whiteout) return;
      out.push({ kind: 'A', path: r });
      if (st.isDirectory()) await diffDir(p, r, [], 'added', out);
      return;
    }
    const lower = await lowerChild(lowers, name);
    if (whiteout) {
      // A whiteout over nothing changes nothing in the view.
      if (lower.exists) out.push({ kind: 'D', path: r });
      return;
    }
    out.push({ kind: lower.exists ? 'C' : 'A', path: r });
    if (!st.isDirectory()) return;
    if (!lower.exists) await diffDir(p, r, [], 'added', out);
    else if (mode === 'opaque' || (await isOpaque(p))) await diffDir(p, r, lower.dirs, 'opaque', out);
    else await diffDir(p, r, lower.dirs, 'plain', out);
  });
  if (mode !== 'opaque') return;
  const hidden = new Map<string, Buffer>();
  for (const dir of lowers) {
    for (const name of await fsp.readdir(dir, { encoding: 'buffer' })) {
      const key = name.toString('latin1');
      if (!seen.has(key)) hidden.set(key, name);
    }
  }
  await mapLimit([...hidden.values()], PARALLEL, async (name) => {
    if ((await lowerChild(lowers, name)).exists) out.push({ kind: 'D', path: join(rel, name) });
  });
}

/**
 * The changes in `upper` against `lowers` (top first), sorted by the bytes
 * of their full paths. A whiteout is D (when a lower has that path: one over
 * nothing changes nothing); an opaque directory is C when a lower has its
 * path, else A, and below it every path only in the lowers is D, only in the
 * upper A, in both C (a D directory is listed alone, as docker diff does);
 * any other entry a lower has is C (content or metadata, copied-up parents
 * included), else A, and everything below an A directory is A.
 */
export async function diffChanges(upper: string, lowers: string[]): Promise<Change[]> {
  const out: Change[] = [];
  const root = Buffer.from(upper);
  const lowerDirs = lowers.map((l) => Buffer.from(l));
  await diffDir(root, Buffer.alloc(0), lowerDirs, (await isOpaque(root)) ? 'opaque' : 'plain', out);
  return out.sort((a, b) => byBytes(a.path, b.path));
}

/**
 * What the changes hold: `files` counts every entry that is neither a
 * directory nor a whiteout, a hard-linked file once; `bytes` is the sum of
 * their apparent sizes (a file's length, a symlink's target).
 */
export async function sizeOfChanges(upper: string): Promise<Progress> {
  const total: Progress = { files: 0, bytes: 0 };
  const linked = new Set<string>();
  const walk = async (dir: Buffer): Promise<void> => {
    await mapLimit(await fsp.readdir(dir, { encoding: 'buffer' }), PARALLEL, async (name) => {
      const p = join(dir, name);
      const st = await lstat(p);
      if (st.isDirectory()) return walk(p);
      if (await isWhiteout(p, st)) return;
      if (st.nlink > 1n) {
        const key = `${st.dev}:${st.ino}`;
        if (linked.has(key)) return;
        linked.add(key);
      }
      total.files++;
      total.bytes += Number(st.size);
    });
  };
  await walk(Buffer.from(upper));
  return total;
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
async function copyMetadata(src: Buffer, dst: Buffer, st: BigIntStats, keep: (name: Buffer) => boolean, prune: boolean): Promise<void> {
  await fsp.lchown(dst, Number(st.uid), Number(st.gid));
  if (!st.isSymbolicLink()) await fsp.chmod(dst, Number(st.mode) & 0o7777);
  await copyXattrs(src, dst, keep, prune);
  await setTimes(dst, timesOf(st));
}

const notOverlay = (name: Buffer) => !isOverlayXattr(name);
const everything = () => true;

// ---------------------------------------------------------------------------
// commit

/**
 * One line of the commit journal, JSON, paths in base64:
 * - `{t}`: a temp file about to be made in the base; a re-run deletes it.
 * - `{d, a, m}`: an upper directory's times before the commit removed
 *   anything from it; a re-run puts them back (removing an entry moves a
 *   directory's mtime, which the view shows).
 * - `{x}` then `{go}`: upper entries left for the end (hard links) whose
 *   removal began; a re-run finishes it, since the base then holds them all.
 * Each line is synced before what it announces is done.
 */
interface JournalLine {
  t?: string;
  d?: string;
  a?: string;
  m?: string;
  x?: string;
  go?: true;
}

async function readJournal(journal: string): Promise<JournalLine[] | null> {
  let text: string;
  try {
    text = await fsp.readFile(journal, 'utf8');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return null;
    throw err;
  }
  const lines: JournalLine[] = [];
  for (const line of text.split('\n')) {
    // A line cut short by a kill was never synced: what it announced never happened.
    try {
      const parsed: unknown = JSON.parse(line);
      if (typeof parsed === 'object' && parsed !== null) lines.push(parsed as JournalLine);
    } catch {
      continue;
    }
  }
  return lines;
}

async function ignoreMissing(p: Promise<unknown>): Promise<void> {
  try {
    await p;
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') throw err;
  }
}

/**
 * Finishes what an interrupted commit left, from its journal: deletes the
 * temp files it made in the base, completes the removal of hard-linked
 * upper files if it had begun, and puts back the times of the upper
 * directories it removed entries from; then deletes the journal. After this
 * the view (base + upper) is exactly what it was before the commit began.
 * Safe to run again if interrupted. Resolves to false when there was no
 * journal. commitChanges does this first; run it before mounting a volume
 * whose commit may have been interrupted (the temps are visible in the view).
 */
export async function recoverCommit(journal: string): Promise<boolean> {
  const lines = await readJournal(journal);
  if (lines === null) return false;
  const b = (s: string) => Buffer.from(s, 'base64');
  for (const l of lines) if (typeof l.t === 'string') await ignoreMissing(fsp.unlink(b(l.t)));
  if (lines.some((l) => l.go === true)) {
    for (const l of lines) {
      if (typeof l.x !== 'string') continue;
      const p = b(l.x);
      const st = await lstatOrNull(p);
      if (st?.isDirectory()) await ignoreMissing(fsp.rmdir(p));
      else if (st !== null) await ignoreMissing(fsp.unlink(p));
    }
  }
  for (const l of lines) {
    if (typeof l.d !== 'string' || typeof l.a !== 'string' || typeof l.m !== 'string') continue;
    await ignoreMissing(setTimes(b(l.d), { atimeNs: BigInt(l.a), mtimeNs: BigInt(l.m) }));
  }
  await ignoreMissing(fsp.unlink(journal));
  return true;
}

class Journal {
  private constructor(
    private readonly path: string,
    private readonly fh: FileHandle,
  ) {}

  /** An empty journal, its directory entry on disk before any line is announced. */
  static async create(path: string): Promise<Journal> {
    await fsp.writeFile(path, '', { mode: 0o600 });
    await fsyncPath(parentOf(Buffer.from(path)));
    return new Journal(path, await fsp.open(path, 'a'));
  }

  async add(...lines: JournalLine[]): Promise<void> {
    try {
      await this.fh.appendFile(lines.map((l) => JSON.stringify(l) + '\n').join(''));
      await this.fh.datasync();
    } catch (err) {
      throw new Error(`cannot write the commit journal ${this.path}: ${(err as Error).message}`, { cause: err });
    }
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

interface Pending {
  path: Buffer;
  dir: boolean;
}

/**
 * How many removals from one upper directory wait for a single fsync of the
 * base directory: few enough that a commit interrupted again and again in a
 * large directory still moves on.
 */
const BATCH = 32;

class Committer {
  readonly progress: Progress = { files: 0, bytes: 0 };
  /** Upper inode (dev:ino) of a hard-linked file → the base path it was first copied to. */
  private readonly links = new Map<string, Buffer>();
  /** Hard-linked upper files, and the upper directories holding them, removed only at the end. */
  private readonly deferred: Buffer[] = [];
  private readonly deferredDirs: Buffer[] = [];
  /** Each upper directory's times as the walk found them. */
  private readonly times = new Map<string, Times>();
  private readonly journaled = new Set<string>();

  constructor(
    private readonly journal: Journal,
    private readonly onProgress?: (p: Progress) => void,
  ) {}

  /**
   * Commits the upper directory `u` into the base directory `b`. The base
   * directory is made (or made a directory) first, emptied of its children
   * when `u` is opaque, its entries are committed, and its metadata is set
   * last, times after children. Leaves removing `u` itself to the caller.
   */
  async dir(u: Buffer, b: Buffer, ust: BigIntStats, root: boolean): Promise<void> {
    this.times.set(u.toString('latin1'), timesOf(ust));
    let bst = await lstatOrNull(b);
    if (bst !== null && !bst.isDirectory()) {
      // The upper directory hides whatever the base has here.
      await fsp.unlink(b);
      bst = null;
    }
    if (bst === null) {
      await fsp.mkdir(b, { mode: 0o700 });
      await fsyncPath(parentOf(b));
    }
    if (await isOpaque(u)) {
      for (const name of await fsp.readdir(b, { encoding: 'buffer' })) await removeTree(join(b, name));
      await fsyncPath(b);
      await gate(() => lremovexattr(u, OPAQUE));
    }
    const pending: Pending[] = [];
    try {
      for (const name of await readdirSorted(u)) {
        const uc = join(u, name);
        const bc = join(b, name);
        const st = await lstat(uc);
        if (st.isDirectory()) {
          await this.dir(uc, bc, st, false);
          pending.push({ path: uc, dir: true });
        } else if (await this.entry(uc, bc, st)) {
          pending.push({ path: uc, dir: false });
        }
        if (pending.length >= BATCH) await this.flush(u, b, pending);
      }
    } catch (err) {
      // What is already in the base leaves the upper, so a failure reports
      // (and keeps) every change it completed; the first failure is the one to report.
      await this.flush(u, b, pending).catch(ignore);
      throw err;
    }
    await this.flush(u, b, pending);
    // The upper root was made by ontop, not copied up: its xattrs only add to the base's.
    await copyMetadata(u, b, ust, notOverlay, !root);
    await fsyncPath(b);
  }

  /** Commits one non-directory; true when its upper entry can go now, false when it stays until the end (a hard link). */
  private async entry(uc: Buffer, bc: Buffer, st: BigIntStats): Promise<boolean> {
    if (await isWhiteout(uc, st)) {
      await removeTree(bc);
      return true;
    }
    if (st.nlink === 1n) {
      await this.place(uc, bc, st);
      return true;
    }
    // Upper nlink > 1: a hard link among the changes. Its upper entries stay
    // until the end, so a re-run still sees every path of the group.
    const key = `${st.dev}:${st.ino}`;
    const first = this.links.get(key);
    if (first === undefined) {
      await this.place(uc, bc, st);
      this.links.set(key, bc);
    } else {
      await this.link(first, bc);
    }
    this.deferred.push(uc);
    return false;
  }

  /**
   * Makes the new `bc` as a temp file beside it (`make` creates it, complete
   * and synced), announced in the journal first, then renames it over `bc`;
   * a directory there is deleted first (rename cannot replace one with a
   * file). On failure the temp is deleted.
   */
  private async install(bc: Buffer, bytes: number, make: (tmp: Buffer) => Promise<void>): Promise<void> {
    const tmp = join(parentOf(bc), Buffer.from(TEMP_PREFIX + crypto.randomBytes(8).toString('hex')));
    await this.journal.add({ t: tmp.toString('base64') });
    try {
      await make(tmp);
      if ((await lstatOrNull(bc))?.isDirectory()) await removeTree(bc);
      await fsp.rename(tmp, bc);
    } catch (err) {
      await fsp.unlink(tmp).catch(ignore);
      throw err;
    }
    this.progress.files++;
    this.progress.bytes += bytes;
    this.onProgress?.({ ...this.progress });
  }

  /** A copy of the upper's `uc` (file, symlink or special file) replaces the base's `bc`, atomically. */
  private async place(uc: Buffer, bc: Buffer, st: BigIntStats): Promise<void> {
    await this.install(bc, st.isFile() ? Number(st.size) : 0, async (tmp) => {
      if (st.isFile()) {
        await fsp.copyFile(uc, tmp, fs.constants.COPYFILE_EXCL | fs.constants.COPYFILE_FICLONE);
      } else if (st.isSymbolicLink()) {
        await fsp.symlink(await fsp.readlink(uc, { encoding: 'buffer' }), tmp);
      } else {
        await gate(() => mknod(tmp, Number(st.mode), ...devParts(st.rdev)));
      }
      await copyMetadata(uc, tmp, st, notOverlay, true);
      if (st.isFile()) await fsyncPath(tmp);
    });
  }

  /** The base's `bc` becomes a hard link of `first`, which this commit has just placed in the base. */
  private link(first: Buffer, bc: Buffer): Promise<void> {
    return this.install(bc, 0, (tmp) => fsp.link(first, tmp));
  }

  private async noteTimes(u: Buffer): Promise<Times> {
    const key = u.toString('latin1');
    const t = this.times.get(key)!;
    if (!this.journaled.has(key)) {
      await this.journal.add({ d: u.toString('base64'), a: String(t.atimeNs), m: String(t.mtimeNs) });
      this.journaled.add(key);
    }
    return t;
  }

  /**
   * Removes committed entries from the upper directory `u`, once what
   * replaced them in the base directory `b` is on disk; then puts back the
   * times of `u`, which the removals moved.
   */
  private async flush(u: Buffer, b: Buffer, pending: Pending[]): Promise<void> {
    if (pending.length === 0) return;
    await fsyncPath(b);
    const t = await this.noteTimes(u);
    try {
      for (const p of pending) {
        if (!p.dir) {
          await fsp.unlink(p.path);
          continue;
        }
        try {
          await fsp.rmdir(p.path);
        } catch (err) {
          if (errnoCode(err) !== 'ENOTEMPTY') throw err;
          this.deferredDirs.push(p.path);
        }
      }
    } finally {
      pending.length = 0;
      await setTimes(u, t);
    }
  }

  /** Removes the hard-linked upper files and the directories that held them, deepest first. */
  async finish(): Promise<void> {
    if (this.deferred.length === 0) return;
    const depth = (p: Buffer) => p.reduce((n, c) => n + (c === 0x2f ? 1 : 0), 0);
    const dirs = [...this.deferredDirs].sort((a, b) => depth(b) - depth(a));
    const entries = [...this.deferred, ...dirs];
    const parents = new Map<string, Buffer>();
    for (const p of entries) parents.set(parentOf(p).toString('latin1'), parentOf(p));
    for (const p of parents.values()) await this.noteTimes(p);
    await this.journal.add(...entries.map((p) => ({ x: p.toString('base64') })), { go: true });
    for (const p of this.deferred) await fsp.unlink(p);
    for (const p of dirs) await fsp.rmdir(p);
    for (const p of parents.values()) await ignoreMissing(setTimes(p, this.times.get(p.toString('latin1'))!));
  }
}

const CAUSES: Record<string, string> = {
  EROFS: 'the base is read-only (EROFS)',
  ENOSPC: "the base's filesystem is full (ENOSPC)",
  EDQUOT: "the base's disk quota is used up (EDQUOT)",
};

/** Why a commit stopped, on one line. */
function describeCause(err: unknown, base: Buffer): string {
  const e = err as NodeJS.ErrnoException & { dest?: string | Buffer };
  const code = errnoCode(err);
  // copyfile names the source as `path` and the file it writes as `dest`.
  const inBase = [e.dest, e.path].map((p) => (p === undefined ? undefined : Buffer.from(p))).find((p) => p?.subarray(0, base.length).equals(base));
  if (code !== undefined && inBase !== undefined) {
    if (CAUSES[code] !== undefined) return CAUSES[code]!;
    if (code === 'EACCES' || code === 'EPERM') return `permission denied (${code}) on ${formatPath(inBase)}`;
    if (code === 'ENOTSUP') return `the base's filesystem does not support ${e.syscall!.includes('xattr') ? 'extended attributes' : e.syscall} (ENOTSUP)`;
  }
  return String(e.message).replace(/[\r\n]+/g, ' ');
}

/**
 * Writes the changes in `upper` into `base`, the only operation that ever
 * writes a base; afterwards `upper` is empty (the directory itself stays)
 * and the view (base + upper) is what it was.
 *
 * Resumable by construction: each change is applied to the base first and
 * only then removed from the upper, so the view is the same at every step,
 * and a re-run continues with what is left. New and changed files go to a
 * temp file in their base directory (`.ontop-commit-<random>`, announced in
 * `journal` first) with content, owner, mode, xattrs (all but overlayfs's
 * own) and ns-exact times, are fsync'd and renamed over the target; the
 * base directory is fsync'd before the upper entries go. Whiteouts delete,
 * opaque directories empty the base directory first; hard links among the
 * changes stay links. `journal` (in the state root) is deleted at the end;
 * a re-run first undoes what it lists (recoverCommit).
 *
 * A failure is a DriverError saying how many of the changes were committed,
 * that the rest stay in the volume, and why; the view is unchanged.
 * `dryRun` returns the plan (as diffChanges) and writes nothing.
 */
export async function commitChanges(o: {
  upper: string;
  base: string;
  journal: string;
  dryRun?: boolean;
  onProgress?: (p: Progress) => void;
}): Promise<{ changes: Change[]; progress: Progress }> {
  const bst = await lstatOrNull(Buffer.from(o.base));
  if (bst === null || !bst.isDirectory()) throw new DriverError(`the base ${formatPath(Buffer.from(o.base))} is gone or not a directory: nothing was committed`);
  if (!o.dryRun) await recoverCommit(o.journal);
  const changes = await diffChanges(o.upper, [o.base]);
  if (o.dryRun) return { changes, progress: { files: 0, bytes: 0 } };
  const upper = Buffer.from(o.upper);
  const base = Buffer.from(o.base);
  let journal: Journal | undefined;
  let committer: Committer | undefined;
  try {
    journal = await Journal.create(o.journal);
    committer = new Committer(journal, o.onProgress);
    await committer.dir(upper, base, await lstat(upper), true);
    await committer.finish();
    await journal.close();
    journal = undefined;
    await fsp.unlink(o.journal);
  } catch (err) {
    // Undoes what was under way; if it cannot, the journal stays for the next run.
    await journal?.close().catch(ignore);
    await recoverCommit(o.journal).catch(ignore);
    const left = await diffChanges(o.upper, [o.base]).then(
      (l) => String(Math.max(0, changes.length - l.length)),
      /* c8 ignore next: the upper was just read; only an I/O error (EIO) could stop reading it now */
      () => 'some',
    );
    throw new DriverError(
      `committed ${left} of ${changes.length} changes; the rest stay in the volume; run commit again to finish: ${describeCause(err, base)}`,
      { cause: err },
    );
  }
  return { changes, progress: committer.progress };
}

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
        if (cst.isFile()) await fsp.copyFile(sc, dc, fs.constants.COPYFILE_EXCL | fs.constants.COPYFILE_FICLONE);
        else if (cst.isSymbolicLink()) await fsp.symlink(await fsp.readlink(sc, { encoding: 'buffer' }), dc);
        else await gate(() => mknod(dc, Number(cst.mode), ...devParts(cst.rdev)));
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

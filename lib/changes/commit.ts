// commit: writing an upper layer's changes into the base, the only code that
// ever writes a base; each step announced in the journal (journal.ts) first,
// so that an interrupted commit is undone and a re-run continues.
import crypto from 'node:crypto';
import type { BigIntStats } from 'node:fs';
import fsp from 'node:fs/promises';
import { DriverError, errnoCode } from '../errors.js';
import { lremovexattr } from '../native.js';
import { diffChanges } from './diff.js';
import {
  CHUNK,
  copyMetadata,
  fsyncPath,
  gate,
  ignore,
  isOpaque,
  isWhiteout,
  join,
  lstat,
  lstatOrNull,
  makeCopy,
  notOverlay,
  OPAQUE,
  parentOf,
  readdirSorted,
  removeTree,
  setTimes,
  timesOf,
} from './files.js';
import type { Times } from './files.js';
import { Journal, recoverCommit, tolerate } from './journal.js';
import { formatPath } from './paths.js';
import type { Change, Progress } from './types.js';

const TEMP_PREFIX = '.ontop-commit-';

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
  private readonly buffer = Buffer.allocUnsafe(CHUNK);
  /** Temp names announced in the journal and not used yet, all in one base directory. */
  private spare: Buffer[] = [];
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
   * A fresh temp name in the base directory `dir`, already in the journal.
   * Names are announced BATCH at a time, with one sync: a name announced and
   * never used is never made, and recovery finds nothing to delete there.
   */
  private async temp(dir: Buffer): Promise<Buffer> {
    if (this.spare.length === 0 || !parentOf(this.spare[0]!).equals(dir)) {
      this.spare = Array.from({ length: BATCH }, () => join(dir, Buffer.from(TEMP_PREFIX + crypto.randomBytes(8).toString('hex'))));
      await this.journal.add(...this.spare.map((p) => ({ t: p.toString('base64') })));
    }
    return this.spare.shift()!;
  }

  /**
   * Makes the new `bc` as a temp file beside it (`make` creates it, complete
   * and synced), announced in the journal first, then renames it over `bc`;
   * a directory there is deleted first (rename cannot replace one with a
   * file). On failure the temp is deleted.
   */
  private async install(bc: Buffer, bytes: number, make: (tmp: Buffer) => Promise<void>): Promise<void> {
    const tmp = await this.temp(parentOf(bc));
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
      await makeCopy(uc, tmp, st, this.buffer);
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
    for (const p of parents.values()) await tolerate(setTimes(p, this.times.get(p.toString('latin1'))!));
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
    // ext4 without ea_inode holds a value of about one block; tmpfs, xfs and btrfs uppers hold more.
    if (code === 'ENOSPC' && e.syscall === 'lsetxattr') return "the base's filesystem has no room for an extended attribute (ENOSPC): it is full, or the value is larger than it holds";
    if (CAUSES[code] !== undefined) return CAUSES[code]!;
    if (code === 'EACCES' || code === 'EPERM') return `permission denied (${code}) on ${formatPath(inBase)}`;
    // lsetxattr on a filesystem without xattrs, most likely; the syscall says which.
    if (code === 'ENOTSUP') return `the base's filesystem does not support ${e.syscall} (ENOTSUP)`;
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
  const shownBase = formatPath(Buffer.from(o.base));
  // Resolved once: a base given as a symlink is committed into its target, never replaced.
  const base = await fsp.realpath(o.base, { encoding: 'buffer' }).catch((err: NodeJS.ErrnoException) => {
    throw new DriverError(`the base ${shownBase} cannot be reached (${err.code}): nothing was committed`, { cause: err });
  });
  if (!(await lstat(base)).isDirectory()) throw new DriverError(`the base ${shownBase} is not a directory: nothing was committed`);
  if (!o.dryRun) {
    await recoverCommit(o.journal).catch((err: Error) => {
      throw new DriverError(
        `an earlier commit stopped midway and what it left cannot be cleared up (${describeCause(err, base)}): nothing was committed`,
        { cause: err },
      );
    });
  }
  const upper = Buffer.from(o.upper);
  const changes = await diffChanges(upper, [base]);
  const nothing = { changes, progress: { files: 0, bytes: 0 } };
  if (o.dryRun) return nothing;
  // No change and nothing to tidy: the base is not touched at all, not even its root's times.
  if (changes.length === 0 && (await fsp.readdir(upper)).length === 0) return nothing;
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
    const left = await diffChanges(upper, [base]).then(
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

// diff and size: what an upper layer changes against its lowers, read from
// the upper alone (whiteouts, opaque directories), and how many files and
// bytes those changes hold.
import fsp from 'node:fs/promises';
import { byBytes, isOpaque, isWhiteout, join, lstat, lstatOrNull, mapLimit, PARALLEL } from './files.js';
import type { Change, Progress } from './types.js';

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
export async function diffChanges(upper: string | Buffer, lowers: Array<string | Buffer>): Promise<Change[]> {
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

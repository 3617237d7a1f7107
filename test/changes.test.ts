// The changes engine against the real kernel: every kind of change made
// through a mounted overlay, then diff, commit (and its dry run), copy and
// clear, each checked against what the overlay showed; a commit killed at
// seeded random points, a full base and a read-only base.
import t from 'tap';
import type { Test } from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import {
  clearChanges,
  commitChanges,
  copyChanges,
  diffChanges,
  formatPath,
  jsonPath,
  recoverCommit,
  sizeOfChanges,
} from '../lib/changes.js';
import type { Change } from '../lib/changes.js';
import { mountOverlay, unmountOverlay } from '../lib/overlay.js';
import { constants, lgetxattr, llistxattr, lsetxattr, mknod, mount as sysMount, umount2 } from '../lib/native.js';
import { env } from './helpers/tmp.js';
import type { Env } from './helpers/tmp.js';
import { seeded } from './helpers/seed.js';

const B = (s: string) => Buffer.from(s);
const bytes = (...parts: Array<string | number[]>) => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : Buffer.from(p))));
const MS_BIND = 4096;
const MS_REMOUNT = 32;

// ---------------------------------------------------------------------------
// Printing paths

t.test('formatPath prints plain UTF-8 as it is and quotes anything else C-style, one line each', async (t) => {
  t.equal(formatPath(B('/a/b c/é.txt')), '/a/b c/é.txt', 'spaces and non-ASCII letters stay plain');
  t.equal(formatPath(B('/new\nline')), '"/new\\nline"');
  t.equal(formatPath(B('/t\tr\r')), '"/t\\tr\\r"');
  t.equal(formatPath(B('/q"b\\s')), '"/q\\"b\\\\s"');
  t.equal(formatPath(bytes('/bad', [0xff], 'x')), '"/bad\\xffx"', 'a byte that is not UTF-8 is \\xHH');
  t.equal(formatPath(bytes('/esc', [0x1b], '[0m')), '"/esc\\x1b[0m"', 'other control characters are \\xHH');
  t.equal(formatPath(B('/del\x7f')), '"/del\\x7f"');
  t.equal(formatPath(B('/c1\u0085')), '"/c1\\xc2\\x85"', 'a C1 control is escaped byte by byte');
  t.equal(formatPath(B('/ls\u2028x')), '"/ls\\xe2\\x80\\xa8x"', 'the Unicode line separator too');
  t.equal(formatPath(bytes('/mix é', [0xc3], '\n')), '"/mix é\\xc3\\n"', 'valid characters stay as they are inside quotes');
  t.equal(formatPath(bytes('/over', [0xc0, 0xaf])), '"/over\\xc0\\xaf"', 'an overlong encoding is not UTF-8');
  t.equal(formatPath(bytes('/sur', [0xed, 0xa0, 0x80])), '"/sur\\xed\\xa0\\x80"', 'nor is a surrogate');
  t.equal(formatPath(bytes('/big', [0xf4, 0x90, 0x80, 0x80])), '"/big\\xf4\\x90\\x80\\x80"', 'nor a code point past U+10FFFF');
  t.equal(formatPath(bytes('/cut', [0xe2, 0x82])), '"/cut\\xe2\\x82"', 'nor a sequence cut short');
  t.equal(formatPath(bytes('/cont', [0xe2, 0x41, 0x41])), '"/contâ\\x41A"'.replace('â\\x41', '\\xe2A'), 'nor one with a bad continuation byte');
  t.equal(formatPath(B('/emoji 😀')), '/emoji 😀', 'four-byte characters stay plain');
  t.equal(formatPath(B('/')), '/');
  const all = new Set<string>();
  for (let b = 0; b < 256; b++) all.add(formatPath(bytes('/', [b])));
  t.equal(all.size, 256, 'no two one-byte names print alike');
  for (const s of all) t.notMatch(s, /[\n\r]/, 'never more than one line');
});

t.test('jsonPath gives the text, and the exact bytes in base64 only when they are not UTF-8', async (t) => {
  t.same(jsonPath(B('/a\nb "c"')), { path: '/a\nb "c"' });
  t.notOk('pathBase64' in jsonPath(B('/é')));
  const bad = bytes('/x', [0xff, 0xfe]);
  t.same(jsonPath(bad), { path: '/x\ufffd\ufffd', pathBase64: bad.toString('base64') });
  t.same(Buffer.from(jsonPath(bad).pathBase64!, 'base64'), bad);
});

// ---------------------------------------------------------------------------
// Trees

interface Entry {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  mtime?: string;
  sha?: string;
  target?: string;
  rdev?: number;
  xattrs: string[];
  links?: string;
}

interface SnapOptions {
  /** Leave out directory mtimes. */
  noDirTimes?: boolean;
  /** Leave out these names (bytes as latin1). */
  skip?: (name: Buffer) => boolean;
}

function typeOf(st: fs.BigIntStats): string {
  if (st.isDirectory()) return 'dir';
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isCharacterDevice()) return 'chr';
  return 'other';
}

/** Everything a view shows of a tree, by formatted path: type, mode, owner, mtime ns, content, target, xattrs, hard-link groups. */
async function snapshot(root: string, o: SnapOptions = {}): Promise<Record<string, Entry>> {
  const out: Record<string, Entry> = {};
  const inodes = new Map<string, string[]>();
  const walk = async (abs: Buffer, rel: Buffer) => {
    const st = fs.lstatSync(abs, { bigint: true });
    const key = rel.length === 0 ? '/' : formatPath(rel);
    const names = (await llistxattr(abs)).filter((n) => !n.toString().startsWith('trusted.overlay.'));
    const xattrs: string[] = [];
    for (const n of names) xattrs.push(`${n.toString()}=${(await lgetxattr(abs, n)).toString('hex')}`);
    const e: Entry = { type: typeOf(st), mode: Number(st.mode), uid: Number(st.uid), gid: Number(st.gid), xattrs: xattrs.sort() };
    if (!(st.isDirectory() && o.noDirTimes)) e.mtime = String(st.mtimeNs);
    if (st.isFile()) e.sha = crypto.createHash('sha256').update(fs.readFileSync(abs)).digest('hex');
    if (st.isSymbolicLink()) e.target = fs.readlinkSync(abs, { encoding: 'buffer' }).toString('hex');
    if (st.isCharacterDevice()) e.rdev = Number(st.rdev);
    out[key] = e;
    if (!st.isDirectory() && st.nlink > 1n) {
      const id = `${st.dev}:${st.ino}`;
      inodes.set(id, [...(inodes.get(id) ?? []), key]);
    }
    if (!st.isDirectory()) return;
    for (const name of fs.readdirSync(abs, { encoding: 'buffer' })) {
      if (o.skip?.(name)) continue;
      await walk(Buffer.concat([abs, B('/'), name]), Buffer.concat([rel, B('/'), name]));
    }
  };
  await walk(B(root), Buffer.alloc(0));
  for (const group of inodes.values()) {
    // A group of one: its other links are outside the tree (or another layer's).
    if (group.length < 2) continue;
    group.sort();
    for (const k of group) out[k]!.links = group.join(' ');
  }
  return out;
}

interface Volume {
  base: string;
  upper: string;
  work: string;
  merged: string;
  journal: string;
}

/** Layers for one volume below the env's dir, the upper made as ontop makes it (the base root's owner and mode). */
async function volume(e: Env, name: string, base: string): Promise<Volume> {
  const dir = path.join(e.dir, name);
  const v = { base, upper: path.join(dir, 'upper'), work: path.join(dir, 'work'), merged: path.join(dir, 'merged'), journal: path.join(dir, 'commit.journal') };
  for (const d of [v.upper, v.work, v.merged]) await fsp.mkdir(d, { recursive: true });
  const st = fs.statSync(base);
  fs.chownSync(v.upper, st.uid, st.gid);
  fs.chmodSync(v.upper, st.mode & 0o7777);
  return v;
}

async function mounted<T>(v: Volume, fn: (merged: string) => Promise<T>, upper = v.upper): Promise<T> {
  await fsp.rm(v.work, { recursive: true, force: true });
  await fsp.mkdir(v.work);
  await mountOverlay({ lower: v.base, upper, work: v.work }, v.merged);
  try {
    return await fn(v.merged);
  } finally {
    await unmountOverlay(v.merged);
  }
}

const view = (v: Volume, o: SnapOptions = {}, upper = v.upper) => mounted(v, (m) => snapshot(m, o), upper);
const lines = (changes: Change[]) => changes.map((c) => `${c.kind} ${formatPath(c.path)}`);

function write(p: string | Buffer, content: string | Buffer, mode = 0o644): void {
  fs.writeFileSync(p, content, { mode });
}

/** A base holding something for every kind of change. */
async function richBase(e: Env): Promise<string> {
  const b = await e.base('base');
  const j = (...p: string[]) => path.join(b, ...p);
  write(j('keep.txt'), 'keep');
  write(j('change.txt'), 'old');
  write(j('chmod.txt'), 'chmod');
  write(j('chown.txt'), 'chown');
  write(j('touch.txt'), 'touch');
  write(j('xattr.txt'), 'xattr');
  await lsetxattr(j('xattr.txt'), 'user.gone', B('soon'));
  write(j('delete.txt'), 'delete');
  write(bytes(b, '/del-', [0xfe], '-me'), 'not utf-8');
  for (const d of ['deldir/sub', 'repdir/sub', 'rendir/inner', 'nested/deep', 'd2f/x']) fs.mkdirSync(j(d), { recursive: true });
  write(j('deldir/a'), 'a');
  write(j('deldir/sub/b'), 'b');
  write(j('repdir/old1'), 'o1');
  write(j('repdir/old2'), 'o2');
  write(j('repdir/sub/x'), 'x');
  write(j('rendir/r1'), 'r1');
  write(j('rendir/inner/r2'), 'r2');
  write(j('nested/deep/file.txt'), 'deep');
  write(j('nested/sibling.txt'), 'sib');
  write(j('d2f/x/y'), 'y');
  write(j('f2d'), 'file');
  write(j('hb1'), 'linked');
  fs.linkSync(j('hb1'), j('hb2'));
  write(j('hkeep1'), 'kept link');
  fs.linkSync(j('hkeep1'), j('hkeep2'));
  write(j('tolink.txt'), 'to link');
  fs.symlinkSync('keep.txt', j('oldsl'));
  fs.chmodSync(b, 0o755);
  await lsetxattr(b, 'user.root', B('base root'));
  return b;
}

/** Every kind of change, made through the mounted overlay `m`. */
async function changeEverything(m: string): Promise<void> {
  const j = (...p: string[]) => path.join(m, ...p);
  write(j('add.txt'), 'added', 0o600);
  fs.appendFileSync(j('change.txt'), ' and new');
  fs.chmodSync(j('chmod.txt'), 0o640);
  fs.chownSync(j('chown.txt'), 1234, 5678);
  fs.utimesSync(j('touch.txt'), 1_000_000, 2_000_000.123456);
  await lsetxattr(j('xattr.txt'), 'user.color', B('blue'));
  await lsetxattr(j('xattr.txt'), 'user.gone', B('changed'));
  fs.rmSync(j('delete.txt'));
  fs.rmSync(bytes(m, '/del-', [0xfe], '-me'));
  fs.rmSync(j('deldir'), { recursive: true });
  fs.rmSync(j('repdir'), { recursive: true });
  fs.mkdirSync(j('repdir'), { mode: 0o750 });
  write(j('repdir/new'), 'new');
  write(j('repdir/old1'), 'o1 again');
  // redirect_dir=off: renaming a base directory is refused, and mv copies.
  try {
    fs.renameSync(j('rendir'), j('rendir2'));
    throw new Error('renaming a base directory worked: is redirect_dir on?');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
  }
  execFileSync('mv', [j('rendir'), j('rendir2')]);
  write(j('nested/deep/file.txt'), 'deeper');
  fs.rmSync(j('d2f'), { recursive: true });
  write(j('d2f'), 'now a file');
  fs.rmSync(j('f2d'));
  fs.mkdirSync(j('f2d'));
  write(j('f2d/child'), 'child');
  fs.appendFileSync(j('hb1'), ' and changed');
  fs.linkSync(j('tolink.txt'), j('linked.txt'));
  fs.mkdirSync(j('newdir/inner'), { recursive: true });
  write(j('newdir/inner/n1'), 'n1');
  fs.linkSync(j('newdir/inner/n1'), j('newdir/n2'));
  fs.linkSync(j('newdir/inner/n1'), j('n3'));
  fs.mkdirSync(j('emptydir'));
  fs.symlinkSync('keep.txt', j('sl'));
  fs.rmSync(j('oldsl'));
  fs.symlinkSync(bytes('target-', [0xff]), j('oldsl'));
  fs.lutimesSync(j('sl'), 5, 6);
  await mknod(j('fifo'), fs.constants.S_IFIFO | 0o620);
  write(j('with space.txt'), 'space');
  write(j('new\nline'), 'newline');
  write(bytes(m, '/bad-', [0xff], '-name'), 'bytes');
  await lsetxattr(j('add.txt'), 'user.added', bytes([0, 1, 2, 255]));
  fs.chmodSync(m, 0o775);
}

const EXPECTED = [
  'A /add.txt',
  'A "/bad-\\xff-name"',
  'C /change.txt',
  'C /chmod.txt',
  'C /chown.txt',
  'C /d2f',
  'A /emptydir',
  'A /fifo',
  'C /f2d',
  'A /f2d/child',
  'C /hb1',
  'A /linked.txt',
  'A /n3',
  'C /nested',
  'C /nested/deep',
  'C /nested/deep/file.txt',
  'A /newdir',
  'A /newdir/inner',
  'A /newdir/inner/n1',
  'A /newdir/n2',
  'C /oldsl',
  'D /rendir',
  'A /rendir2',
  'A /rendir2/inner',
  'A /rendir2/inner/r2',
  'A /rendir2/r1',
  'C /repdir',
  'A /repdir/new',
  'C /repdir/old1',
  'D /repdir/old2',
  'D /repdir/sub',
  'A /sl',
  'C /tolink.txt',
  'C /touch.txt',
  'A /with space.txt',
  'C /xattr.txt',
  'D "/del-\\xfe-me"',
  'D /delete.txt',
  'D /deldir',
  'A "/new\\nline"',
];

/** EXPECTED in the engine's order: by the bytes of the full path. */
function expectedSorted(): string[] {
  return EXPECTED.map((l) => ({ l, key: keyBytes(l.slice(2)) }))
    .sort((a, b) => Buffer.compare(a.key, b.key))
    .map((x) => x.l);
}

/** The bytes a formatted path stands for (the inverse of formatPath, for the forms used here). */
function keyBytes(f: string): Buffer {
  if (!f.startsWith('"')) return B(f);
  const body = f.slice(1, -1);
  const out: number[] = [];
  for (let i = 0; i < body.length; i++) {
    if (body[i] !== '\\') {
      out.push(...B(body[i]!));
      continue;
    }
    const c = body[++i]!;
    if (c === 'x') {
      out.push(parseInt(body.slice(i + 1, i + 3), 16));
      i += 2;
    } else out.push({ n: 10, t: 9, r: 13, '"': 34, '\\': 92 }[c]!);
  }
  return Buffer.from(out);
}

t.test('keyBytes inverts formatPath', async (t) => {
  for (const p of [B('/plain'), B('/new\nline'), bytes('/x', [0xff], '"\\\t')]) t.same(keyBytes(formatPath(p)), p);
});

t.test('every kind of change made through the overlay: diff lists exactly those, commit makes the base what the view showed', async (t) => {
  const e = await env(t);
  const base = await richBase(e);
  const v = await volume(e, 'v', base);
  const pristine = await snapshot(base);
  const seen = await mounted(v, async (m) => {
    await changeEverything(m);
    return snapshot(m);
  });
  t.equal(seen['/']!.mode & 0o7777, 0o775, 'the view root is the upper root');

  const diff = await diffChanges(v.upper, [base]);
  t.same(lines(diff), expectedSorted(), 'diff lists every change, once, sorted by bytes');
  for (let i = 1; i < diff.length; i++) t.ok(Buffer.compare(diff[i - 1]!.path, diff[i]!.path) < 0);
  t.same(await view(v), seen, 'diff changed nothing');

  const size = await sizeOfChanges(v.upper);
  t.ok(size.files >= 20 && size.bytes > 100, `size of the changes: ${JSON.stringify(size)}`);

  const upperBefore = await snapshot(v.upper);
  const dry = await commitChanges({ upper: v.upper, base, journal: v.journal, dryRun: true });
  t.same(lines(dry.changes), lines(diff), 'the dry run plans what diff lists');
  t.same(dry.progress, { files: 0, bytes: 0 });
  t.same(await snapshot(base), pristine, 'the dry run wrote nothing to the base');
  t.same(await snapshot(v.upper), upperBefore, 'nor to the upper');
  t.notOk(fs.existsSync(v.journal), 'nor a journal');

  // A copy of the changes shows the same view over the same base.
  const copy = path.join(e.dir, 'copy');
  fs.mkdirSync(copy);
  const copied: number[] = [];
  const got = await copyChanges(v.upper, copy, (p) => copied.push(p.files));
  t.ok(got.files > 20 && got.bytes > 100, `copied ${JSON.stringify(got)}`);
  t.same(copied, copied.map((_, i) => i + 1), 'copy progress counts up file by file');
  t.same(await snapshot(copy), upperBefore, 'the copy is the upper exactly, whiteouts and overlay xattrs included');
  t.equal((await lgetxattr(path.join(copy, 'repdir'), 'trusted.overlay.opaque')).toString(), 'y');
  t.same(await view(v, {}, copy), seen, 'an overlay over the copy shows the same view');
  t.same(lines(await diffChanges(copy, [base])), lines(diff));

  const progress: number[] = [];
  const r = await commitChanges({ upper: v.upper, base, journal: v.journal, onProgress: (p) => progress.push(p.files) });
  t.same(lines(r.changes), lines(diff), 'commit reports what it committed');
  t.ok(r.progress.files >= 20, `files written: ${r.progress.files}`);
  t.equal(progress.length, r.progress.files, 'one progress report per file');
  t.same(fs.readdirSync(v.upper), [], 'the upper is empty');
  t.notOk((await llistxattr(v.upper)).map(String).includes('trusted.overlay.opaque'), 'and its root is not opaque');
  t.notOk(fs.existsSync(v.journal), 'the journal is gone');

  const committed = await snapshot(base);
  const { '/': seenRoot, ...seenRest } = seen;
  const { '/': baseRoot, ...baseRest } = committed;
  t.same(baseRest, seenRest, 'the base is what the view showed: content, mode, owner, mtime ns, targets, xattrs, hard links');
  t.same({ ...baseRoot, xattrs: [] }, { ...seenRoot, xattrs: [] }, 'its root took the view root\'s owner, mode and times');
  t.same(baseRoot!.xattrs, pristine['/']!.xattrs, 'and kept its own xattrs (the upper root is made, not copied up)');
  t.same(await view(v), seen, 'the view after the commit is the view before it');
  t.same(await diffChanges(v.upper, [base]), [], 'nothing left to diff');
  t.same((await commitChanges({ upper: v.upper, base, journal: v.journal })).changes, [], 'a second commit has nothing to do');
});

t.test('clearChanges empties the upper in place: the view is the pristine base again', async (t) => {
  const e = await env(t);
  const base = await richBase(e);
  const v = await volume(e, 'v', base);
  const pristine = await view(v, { noDirTimes: true });
  const baseBefore = await snapshot(base);
  await mounted(v, async (m) => {
    await changeEverything(m);
    await lsetxattr(m, 'user.on-root', B('x'));
  });
  await lsetxattr(v.upper, 'trusted.overlay.opaque', B('y'));
  fs.symlinkSync(path.join(e.dir, 'outside'), path.join(v.upper, 'escape'));
  fs.mkdirSync(path.join(e.dir, 'outside'));
  write(path.join(e.dir, 'outside', 'kept'), 'kept');
  const ino = fs.statSync(v.upper).ino;
  await clearChanges(v.upper, base);
  t.equal(fs.statSync(v.upper).ino, ino, 'the upper directory itself stays');
  t.same(fs.readdirSync(v.upper), []);
  t.same((await llistxattr(v.upper)).map(String), ['trusted.overlay.uuid'], 'its xattrs are gone (opaque, impure, the one set on the volume root) but the overlay\'s uuid');
  t.ok(fs.existsSync(path.join(e.dir, 'outside', 'kept')), 'a symlink is removed, never followed');
  t.same(await view(v, { noDirTimes: true }), pristine, 'the view is the pristine base');
  t.same(await snapshot(base), baseBefore, 'and the base was never touched');

  await mounted(v, async (m) => write(path.join(m, 'again'), 'x'));
  await clearChanges(v.upper);
  t.same(fs.readdirSync(v.upper), [], 'without a base it only empties');
});

t.test('diff: opaque directories, whiteouts over nothing, a new directory\'s whiteouts, several lowers', async (t) => {
  const e = await env(t);
  const top = await e.base('top');
  const bottom = await e.base('bottom');
  const upper = await e.base('upper');
  const mk = (p: string) => fs.mkdirSync(p, { recursive: true });
  // bottom: /d/{a,b,c}, /gone (hidden by a whiteout in top), /hid/z (hidden by an opaque top/hid)
  mk(path.join(bottom, 'd'));
  for (const n of ['a', 'b', 'c']) write(path.join(bottom, 'd', n), n);
  write(path.join(bottom, 'gone'), 'g');
  mk(path.join(bottom, 'hid'));
  write(path.join(bottom, 'hid', 'z'), 'z');
  write(path.join(bottom, 'filedir'), 'a file under a directory');
  await mknod(path.join(top, 'gone'), fs.constants.S_IFCHR);
  mk(path.join(top, 'hid'));
  await lsetxattr(path.join(top, 'hid'), 'trusted.overlay.opaque', B('y'));
  write(path.join(top, 'hid', 'y'), 'y');
  mk(path.join(top, 'filedir'));
  mk(path.join(top, 'd'));
  write(path.join(top, 'd', 'top-only'), 't');
  // upper: /d opaque with b (in both) and n (new); whiteouts over nothing; /hid/z and /gone whiteouts hide nothing
  mk(path.join(upper, 'd', 'b'));
  await lsetxattr(path.join(upper, 'd'), 'trusted.overlay.opaque', B('y'));
  write(path.join(upper, 'd', 'n'), 'n');
  write(path.join(upper, 'd', 'b', 'inner'), 'i');
  await mknod(path.join(upper, 'd', 'c'), fs.constants.S_IFCHR);
  await mknod(path.join(upper, 'd', 'nothing'), fs.constants.S_IFCHR);
  await mknod(path.join(upper, 'gone'), fs.constants.S_IFCHR);
  await mknod(path.join(upper, 'never'), fs.constants.S_IFCHR);
  mk(path.join(upper, 'hid'));
  await mknod(path.join(upper, 'hid', 'z'), fs.constants.S_IFCHR);
  await mknod(path.join(upper, 'hid', 'y'), fs.constants.S_IFCHR);
  mk(path.join(upper, 'brand', 'new'));
  await mknod(path.join(upper, 'brand', 'wh'), fs.constants.S_IFCHR);
  write(path.join(upper, 'xw'), '');
  await lsetxattr(path.join(upper, 'xw'), 'trusted.overlay.whiteout', B(''));
  write(path.join(top, 'xw'), 'hidden by an xattr whiteout');
  write(path.join(upper, 'empty'), '');
  mk(path.join(upper, 'filedir', 'k'));
  t.same(lines(await diffChanges(upper, [top, bottom])), [
    'A /brand',
    'A /brand/new',
    'C /d',
    'D /d/a',
    'C /d/b',
    'A /d/b/inner',
    'D /d/c',
    'A /d/n',
    'D /d/top-only',
    'A /empty',
    'C /filedir',
    'A /filedir/k',
    'C /hid',
    'D /hid/y',
    'D /xw',
  ]);
  t.same(await sizeOfChanges(upper), { files: 3, bytes: 2 }, 'sizes count files, not whiteouts or directories');

  const opaqueRoot = await e.base('opaque-root');
  await lsetxattr(opaqueRoot, 'trusted.overlay.opaque', B('y'));
  write(path.join(opaqueRoot, 'b'), 'b');
  t.same(lines(await diffChanges(opaqueRoot, [bottom])), ['A /b', 'D /d', 'D /filedir', 'D /gone', 'D /hid'], 'an opaque root hides every lower entry');
});

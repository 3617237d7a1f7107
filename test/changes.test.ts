// The changes engine against the real kernel: every kind of change made
// through a mounted overlay, then diff, commit (and its dry run), copy and
// clear, each checked against what the overlay showed; a commit killed at
// seeded random points, a full base and a read-only base.
import t from 'tap';
import type { Test } from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
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
import { constants, lgetxattr, llistxattr, lremovexattr, lsetxattr, mknod, mount as sysMount, umount2 } from '../lib/native.js';
import { env } from './helpers/tmp.js';
import { chattr, chattrUnsupported } from './helpers/faults.js';
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
  t.same([...all].filter((s) => /[\n\r\u2028\u2029]/.test(s)), [], 'never more than one line');
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
  fs.mkdirSync(j('xattr-dir'));
  await lsetxattr(j('xattr-dir'), 'user.drop', B('1'));
  await lsetxattr(j('xattr-dir'), 'user.keep', B('2'));
  fs.symlinkSync('keep.txt', j('oldsl'));
  fs.chmodSync(b, 0o755);
  await lsetxattr(b, 'user.root', B('base root'));
  return b;
}

/** Every kind of change, made through the mounted overlay `m`. */
async function changeEverything(m: string): Promise<void> {
  const j = (...p: string[]) => path.join(m, ...p);
  write(j('add.txt'), 'added', 0o600);
  write(j('setuid'), '#!/bin/true\n');
  fs.chownSync(j('setuid'), 1000, 1000);
  fs.chmodSync(j('setuid'), 0o4755);
  fs.appendFileSync(j('change.txt'), ' and new');
  fs.chmodSync(j('chmod.txt'), 0o640);
  fs.chownSync(j('chown.txt'), 1234, 5678);
  fs.utimesSync(j('touch.txt'), 1_000_000, 2_000_000.123456);
  await lsetxattr(j('xattr.txt'), 'user.color', B('blue'));
  await lsetxattr(j('xattr.txt'), 'user.gone', B('changed'));
  await lremovexattr(j('xattr-dir'), 'user.drop');
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
  await mknod(j('dev'), fs.constants.S_IFCHR | 0o600, 300, 70000);
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
  'A /dev',
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
  'A /setuid',
  'A /sl',
  'C /tolink.txt',
  'C /touch.txt',
  'A /with space.txt',
  'C /xattr-dir',
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
  t.ok(diff.every((c, i) => i === 0 || Buffer.compare(diff[i - 1]!.path, c.path) < 0), 'in strictly increasing byte order');
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

t.test('diff reads many entries at once and still lists each once', async (t) => {
  const e = await env(t);
  const upper = await e.base('upper');
  const lower = await e.base('lower');
  for (let i = 0; i < 60; i++) write(path.join(upper, `e${String(i).padStart(2, '0')}`), '');
  for (let i = 0; i < 20; i++) fs.mkdirSync(path.join(upper, `d${String(i).padStart(2, '0')}`));
  const got = lines(await diffChanges(upper, [lower]));
  t.equal(got.length, 80);
  t.equal(new Set(got).size, 80);
  t.ok(got.every((l) => l.startsWith('A /')));
});

t.test('diff of an upper that is not there fails with ENOENT', async (t) => {
  const e = await env(t);
  await t.rejects(diffChanges(path.join(e.dir, 'missing'), [e.dir]), { code: 'ENOENT' });
});

t.test('commit of a directory with more entries than one batch, and of a whiteout over nothing', async (t) => {
  const e = await env(t);
  const base = await e.base('base');
  const v = await volume(e, 'v', base);
  await mounted(v, async (m) => {
    fs.mkdirSync(path.join(m, 'many'));
    for (let i = 0; i < 300; i++) write(path.join(m, 'many', `f${i}`), String(i));
  });
  await mknod(path.join(v.upper, 'ghost'), fs.constants.S_IFCHR);
  const seen = await view(v);
  const bytes = Array.from({ length: 300 }, (_, i) => String(i).length).reduce((a, b) => a + b);
  t.same(await sizeOfChanges(v.upper), { files: 300, bytes }, 'the size: every file once, its bytes, no whiteout');
  const reports: number[] = [];
  const r = await commitChanges({ upper: v.upper, base, journal: v.journal, onProgress: (p) => reports.push(p.bytes) });
  t.equal(r.changes.length, 301, 'a whiteout over nothing is no change');
  t.same(r.progress, { files: 300, bytes }, 'progress: the files and bytes written');
  t.ok(reports.every((b, i) => i === 0 || b >= reports[i - 1]!), 'bytes only grow');
  t.same(fs.readdirSync(v.upper), []);
  t.same(await view(v), seen);
});

// ---------------------------------------------------------------------------
// Interrupted and failed commits

/** Every temp file a commit may have left in `dir`, by absolute path (latin1). */
function temps(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: Buffer) => {
    for (const ent of fs.readdirSync(d, { encoding: 'buffer', withFileTypes: true })) {
      const p = Buffer.concat([d, B('/'), ent.name]);
      if (ent.name.toString('latin1').startsWith('.ontop-commit-')) out.push(p.toString('latin1'));
      else if (ent.isDirectory()) walk(p);
    }
  };
  walk(B(dir));
  return out;
}

/** The temp paths (latin1) a journal announces. */
function journaledTemps(journal: string): Set<string> {
  if (!fs.existsSync(journal)) return new Set();
  const out = new Set<string>();
  for (const line of fs.readFileSync(journal, 'utf8').split('\n')) {
    try {
      const l = JSON.parse(line) as { t?: string };
      if (typeof l.t === 'string') out.add(Buffer.from(l.t, 'base64').toString('latin1'));
    } catch {
      // a line cut short by the kill
    }
  }
  return out;
}

const isTemp = (name: Buffer) => name.toString('latin1').startsWith('.ontop-commit-');

/** `entries` without what a kill may leave in the view until recovery: directory times, and hard-link groups mid-way through their removal. */
function loose(entries: Record<string, Entry>): Record<string, Entry> {
  return Object.fromEntries(Object.entries(entries).map(([k, v]) => [k, { ...v, links: undefined, mtime: v.type === 'dir' ? undefined : v.mtime }]));
}

const UNTRACKED = ['-u', 'NODE_OPTIONS', process.execPath, ...process.execArgv.filter((a) => !a.includes('@tapjs/processinfo'))];

/**
 * Runs commitChanges in a child node and SIGKILLs it once it has reported
 * `after` files, `spins` event-loop turns later. Resolves to 'done' when the
 * commit finished first.
 */
async function commitInChild(t: Test, v: Volume, after: number, spins: number): Promise<'done' | 'killed'> {
  const script = `
    const fs = await import('node:fs');
    const { commitChanges } = await import(${JSON.stringify(path.resolve('lib/changes.ts'))});
    fs.writeSync(1, 'r\\n');
    await commitChanges({ upper: ${JSON.stringify(v.upper)}, base: ${JSON.stringify(v.base)}, journal: ${JSON.stringify(v.journal)}, onProgress: () => fs.writeSync(1, 'p\\n') });
    fs.writeSync(1, 'done\\n');`;
  const child = spawn('env', [...UNTRACKED, '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => void child.kill('SIGKILL'));
  let out = '';
  let err = '';
  let reported = -1;
  let killing = false;
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  child.stdout.on('data', (c: Buffer) => {
    out += c.toString();
    reported = (out.match(/^[rp]$/gm) ?? []).length - 1;
    if (killing || reported < after) return;
    killing = true;
    void (async () => {
      for (let i = 0; i < spins; i++) await new Promise((resolve) => setImmediate(resolve));
      child.kill('SIGKILL');
    })();
  });
  const [code, signal] = (await once(child, 'exit')) as [number | null, string | null];
  if (out.includes('done\n')) return 'done';
  if (signal !== 'SIGKILL') throw new Error(`the commit child failed (${code}): ${err}`);
  return 'killed';
}

/** A base of 12 directories of 12 files, and a volume over it with most kinds of change in every directory. */
async function bigVolume(e: Env, s: { int(n: number): number }): Promise<Volume> {
  const base = await e.base('base');
  for (let d = 0; d < 12; d++) {
    fs.mkdirSync(path.join(base, `d${d}`));
    for (let f = 0; f < 12; f++) write(path.join(base, `d${d}`, `f${f}`), crypto.randomBytes(s.int(4096)));
  }
  const v = await volume(e, 'v', base);
  await mounted(v, async (m) => {
    for (let d = 0; d < 12; d++) {
      const dir = path.join(m, `d${d}`);
      if (d === 3) {
        fs.rmSync(dir, { recursive: true });
        continue;
      }
      if (d === 5 || d === 9) {
        fs.rmSync(dir, { recursive: true });
        fs.mkdirSync(dir);
        for (let f = 0; f < 6; f++) write(path.join(dir, `f${f * 2}`), crypto.randomBytes(s.int(8192)));
        continue;
      }
      for (let f = 0; f < 12; f++) {
        const p = path.join(dir, `f${f}`);
        const what = s.int(5);
        if (what === 0) fs.rmSync(p);
        else if (what === 1) fs.chmodSync(p, 0o600);
        else if (what === 2) fs.appendFileSync(p, crypto.randomBytes(s.int(16384)));
        else if (what === 3) fs.utimesSync(p, 12345, 67890.5);
      }
      for (let f = 0; f < 8; f++) write(path.join(dir, `new${f}`), crypto.randomBytes(s.int(16384)));
      fs.symlinkSync(`f${d}`, path.join(dir, 'sl'));
      fs.mkdirSync(path.join(dir, 'sub'));
      write(path.join(dir, 'sub', 'n'), `sub of ${d}`);
    }
    for (let g = 0; g < 4; g++) {
      write(path.join(m, `g${g}`), `group ${g}`);
      for (let k = 0; k < 3; k++) fs.linkSync(path.join(m, `g${g}`), path.join(m, `d${(g * 3 + k) % 12 === 3 ? 4 : (g * 3 + k) % 12}`, `link-g${g}-${k}`));
    }
  });
  return v;
}

t.test('a commit SIGKILLed at random points leaves the view as it was, only journaled temps, and completes when run again', async (t) => {
  const e = await env(t);
  const s = seeded(t);
  const v = await bigVolume(e, s);
  const expected = await view(v);
  const plan = lines(await diffChanges(v.upper, [v.base]));
  t.ok(plan.length > 200, `${plan.length} changes`);
  let kills = 0;
  for (let round = 0; round < 12; round++) {
    const after = s.int(60);
    const spins = s.int(400);
    if ((await commitInChild(t, v, after, spins)) === 'done') break;
    kills++;
    const left = temps(v.base);
    const announced = journaledTemps(v.journal);
    t.ok(left.every((p) => announced.has(p)), `kill ${kills}: every temp in the base is in the journal (${left.length} of ${announced.size})`);
    t.same(loose(await view(v, { skip: isTemp })), loose(expected), `kill ${kills} (after ${after} files, ${spins} turns): the view is unchanged`);
    if (round % 2 === 0) {
      // Odd rounds leave the journal to the next commit; even ones recover here.
      await recoverCommit(v.journal);
      t.same(temps(v.base), [], 'recovery deletes the temps');
      t.notOk(fs.existsSync(v.journal));
      t.same(await view(v), expected, 'after recovery the view is exactly as it was, directory times and hard links included');
    }
  }
  t.ok(kills > 0, `${kills} kills`);
  const r = await commitChanges({ upper: v.upper, base: v.base, journal: v.journal });
  const planned = new Set(plan.map((l) => l.slice(2)));
  t.ok(lines(r.changes).every((l) => planned.has(l.slice(2))), 'the last run commits what was left of the plan (an A already in the base reads C)');
  t.same(fs.readdirSync(v.upper), [], 'the upper is empty');
  t.same(temps(v.base), []);
  t.notOk(fs.existsSync(v.journal));
  const { '/': root, ...rest } = await snapshot(v.base);
  const { '/': expectedRoot, ...expectedRest } = expected;
  t.same(rest, expectedRest, 'the base is the view');
  t.same(root, expectedRoot);
  t.same(await view(v), expected);
});

t.test('a full base: commit says what it did and why, leaves the view as it was, and finishes once there is room', async (t) => {
  const e = await env(t);
  const small = path.join(e.dir, 'small');
  fs.mkdirSync(small);
  await sysMount('ontop-test', small, 'tmpfs', 0, 'size=256k,mode=0755');
  const base = path.join(small, 'base');
  fs.mkdirSync(base);
  write(path.join(base, 'gone'), 'gone');
  write(path.join(base, 'zz'), 'zz');
  const v = await volume(e, 'v', base);
  const expected = await mounted(v, async (m) => {
    fs.rmSync(path.join(m, 'gone'));
    write(path.join(m, 'a-small'), 'small');
    write(path.join(m, 'big'), Buffer.alloc(1024 * 1024, 1));
    write(path.join(m, 'zz'), 'changed');
    return snapshot(m);
  });
  const err = await commitChanges({ upper: v.upper, base, journal: v.journal }).catch((x: unknown) => x);
  t.match(err, { name: 'DriverError', message: /^committed 1 of 4 changes; the rest stay in the volume; run commit again to finish: the base's filesystem is full \(ENOSPC\)$/ });
  t.equal((err as Error & { cause?: { code?: string } }).cause?.code, 'ENOSPC', 'the cause is kept');
  t.same(lines(await diffChanges(v.upper, [base])), ['A /big', 'D /gone', 'C /zz'], 'what is left is what the message says');
  t.same(temps(base), [], 'no temp is left');
  t.notOk(fs.existsSync(v.journal), 'nor a journal');
  t.same(await view(v), expected, 'the view is unchanged');
  await sysMount('ontop-test', small, 'tmpfs', MS_REMOUNT, 'size=8m');
  await commitChanges({ upper: v.upper, base, journal: v.journal });
  t.same(fs.readdirSync(v.upper), []);
  t.same(await view(v), expected, 'run again with room, it finishes');
});

t.test('a read-only base: commit writes nothing and says the base is read-only', async (t) => {
  const e = await env(t);
  const real = await e.base('real', { 'a.txt': 'A' });
  const ro = await e.base('ro');
  await sysMount(real, ro, '', MS_BIND, '');
  await sysMount('', ro, '', MS_BIND | MS_REMOUNT | constants.MS_RDONLY, '');
  const v = await volume(e, 'v', ro);
  const expected = await mounted(v, async (m) => {
    write(path.join(m, 'a.txt'), 'changed');
    write(path.join(m, 'b.txt'), 'new');
    return snapshot(m);
  });
  await t.rejects(commitChanges({ upper: v.upper, base: ro, journal: v.journal }), {
    name: 'DriverError',
    message: 'committed 0 of 2 changes; the rest stay in the volume; run commit again to finish: the base is read-only (EROFS)',
  });
  t.same(await view(v), expected);
  t.same(fs.readdirSync(real), ['a.txt']);
  await umount2(ro, 0);
});

t.test('a base that cannot hold xattrs: the commit stops and says so', async (t) => {
  const e = await env(t);
  const ram = path.join(e.dir, 'ram');
  fs.mkdirSync(ram);
  await sysMount('ontop-test', ram, 'ramfs', 0, '');
  const base = path.join(ram, 'base');
  fs.mkdirSync(base);
  const v = await volume(e, 'v', base);
  write(path.join(v.upper, 'x'), 'x');
  await lsetxattr(path.join(v.upper, 'x'), 'user.k', B('v'));
  const err = (await commitChanges({ upper: v.upper, base, journal: v.journal }).catch((x: unknown) => x)) as Error;
  t.equal(err.message, 'committed 0 of 1 changes; the rest stay in the volume; run commit again to finish: the base\'s filesystem does not support lsetxattr (ENOTSUP)');
  t.same(fs.readdirSync(base), [], 'the temp is gone');
  t.same(lines(await diffChanges(v.upper, [base])), ['A /x'], 'and the change stays');
});

t.test('an xattr larger than the base can hold: the commit says so', async (t) => {
  const e = await env(t);
  const base = await e.base('base');
  const probe = path.join(base, 'probe');
  write(probe, '');
  const big = Buffer.alloc(16384, 1);
  if (await lsetxattr(probe, 'user.big', big).then(() => true, () => false)) return t.skip(`${base} holds a 16 KiB xattr value (not ext4?)`);
  fs.rmSync(probe);
  const upper = path.join(e.dir, 'upper');
  fs.mkdirSync(upper);
  await sysMount('ontop-test', upper, 'tmpfs', 0, 'size=1m');
  write(path.join(upper, 'x'), 'x');
  await lsetxattr(path.join(upper, 'x'), 'user.big', big);
  await t.rejects(commitChanges({ upper, base, journal: path.join(e.dir, 'journal') }), {
    message: "committed 0 of 1 changes; the rest stay in the volume; run commit again to finish: the base's filesystem has no room for an extended attribute (ENOSPC): it is full, or the value is larger than it holds",
  });
  t.same(fs.readdirSync(base), []);
});

t.test('a base directory that refuses writes (immutable): permission denied, on that path', { skip: chattrUnsupported() }, async (t) => {
  const e = await env(t);
  const base = await e.base('base');
  fs.mkdirSync(path.join(base, 'locked'));
  const v = await volume(e, 'v', base);
  await mounted(v, async (m) => write(path.join(m, 'locked', 'f'), 'f'));
  chattr(t, '+i', path.join(base, 'locked'));
  const err = (await commitChanges({ upper: v.upper, base, journal: v.journal }).catch((x: unknown) => x)) as Error;
  t.match(err.message, /^committed 0 of 2 changes; .*: permission denied \(EPERM\) on .*\/locked\/\.ontop-commit-[0-9a-f]{16}$/);
  chattr(t, '-i', path.join(base, 'locked'));
  t.same(fs.readdirSync(path.join(base, 'locked')), []);
});

t.test('an upper directory that cannot be removed stops the commit; the view is unchanged', { skip: chattrUnsupported() }, async (t) => {
  const e = await env(t);
  const base = await e.base('base');
  const v = await volume(e, 'v', base);
  const expected = await mounted(v, async (m) => {
    fs.mkdirSync(path.join(m, 'p', 'q'), { recursive: true });
    write(path.join(m, 'p', 'q', 'f'), 'f');
    return snapshot(m);
  });
  chattr(t, '+i', path.join(v.upper, 'p'));
  const err = (await commitChanges({ upper: v.upper, base, journal: v.journal }).catch((x: unknown) => x)) as Error;
  t.match(err.message, /^committed \d of 3 changes; the rest stay in the volume; run commit again to finish: EPERM/);
  t.ok(fs.existsSync(v.journal), 'what cannot be undone yet stays in the journal');
  await t.rejects(commitChanges({ upper: v.upper, base, journal: v.journal }), {
    name: 'DriverError',
    message: /^an earlier commit stopped midway and what it left cannot be cleared up \(EPERM: operation not permitted, utimensat '.*\/upper\/p'\): nothing was committed$/,
  });
  chattr(t, '-i', path.join(v.upper, 'p'));
  await recoverCommit(v.journal);
  t.same(await view(v), expected);
  await commitChanges({ upper: v.upper, base, journal: v.journal });
  t.same(await view(v), expected, 'and a re-run finishes');
});

t.test('a base that is gone, below a file, or a file: nothing is committed', async (t) => {
  const e = await env(t);
  const v = await volume(e, 'v', await e.base('b'));
  write(path.join(v.upper, 'x'), 'x');
  const commit = (base: string) => commitChanges({ upper: v.upper, base, journal: v.journal });
  await t.rejects(commit(path.join(e.dir, 'nope')), { name: 'DriverError', message: /^the base .*\/nope cannot be reached \(ENOENT\): nothing was committed$/ });
  write(path.join(e.dir, 'file'), '');
  await t.rejects(commit(path.join(e.dir, 'file', 'x')), { name: 'DriverError', message: /cannot be reached \(ENOTDIR\)/ });
  await t.rejects(commit(path.join(e.dir, 'file')), { name: 'DriverError', message: /^the base .*\/file is not a directory: nothing was committed$/ });
  t.same(fs.readdirSync(v.upper), ['x'], 'the change stays');
});

t.test('a base given as a symlink: the commit goes into its target and the symlink stays', async (t) => {
  const e = await env(t);
  const real = await e.base('real', { 'a.txt': 'A' });
  const link = path.join(e.dir, 'link');
  fs.symlinkSync(real, link);
  const v = await volume(e, 'v', real);
  const expected = await mounted(v, async (m) => {
    write(path.join(m, 'b.txt'), 'B');
    return snapshot(m);
  });
  await commitChanges({ upper: v.upper, base: link, journal: v.journal });
  t.ok(fs.lstatSync(link).isSymbolicLink());
  t.same(fs.readdirSync(real).sort(), ['a.txt', 'b.txt']);
  t.same(await view(v), expected);
});

t.test('a commit with nothing to commit does not touch the base, read-only or not', async (t) => {
  const e = await env(t);
  const real = await e.base('real', { 'a.txt': 'A' });
  const ro = await e.base('ro');
  await sysMount(real, ro, '', MS_BIND, '');
  t.teardown(() => umount2(ro, constants.MNT_DETACH).catch(() => {}));
  await sysMount('', ro, '', MS_BIND | MS_REMOUNT | constants.MS_RDONLY, '');
  const v = await volume(e, 'v', ro);
  const before = fs.statSync(real, { bigint: true });
  t.same(await commitChanges({ upper: v.upper, base: ro, journal: v.journal }), { changes: [], progress: { files: 0, bytes: 0 } });
  const after = fs.statSync(real, { bigint: true });
  t.same([after.mtimeNs, after.ctimeNs, after.mode], [before.mtimeNs, before.ctimeNs, before.mode]);
  t.notOk(fs.existsSync(v.journal));
});

t.test('a lower that cannot be read fails the diff with the kernel\'s error', async (t) => {
  const e = await env(t);
  const upper = await e.base('upper', { x: 'x' });
  const loop = path.join(e.dir, 'loop');
  fs.symlinkSync('loop', loop);
  await t.rejects(diffChanges(upper, [loop]), { code: 'ELOOP' });
});

t.test('a journal that cannot be made or written stops the commit before or as it writes the base', async (t) => {
  const e = await env(t);
  const base = await e.base('base');
  const v = await volume(e, 'v', base);
  write(path.join(v.upper, 'x'), 'x');
  await t.rejects(commitChanges({ upper: v.upper, base, journal: path.join(e.dir, 'no', 'journal') }), {
    name: 'DriverError',
    message: /^committed 0 of 1 changes; .*: ENOENT: no such file or directory, open '.*\/no\/journal'$/,
  });
  const full = path.join(e.dir, 'full');
  fs.mkdirSync(full);
  await sysMount('ontop-test', full, 'tmpfs', 0, 'size=4k');
  write(path.join(full, 'filler'), Buffer.alloc(4096));
  await t.rejects(commitChanges({ upper: v.upper, base, journal: path.join(full, 'journal') }), {
    name: 'DriverError',
    message: /^committed 0 of 1 changes; .*: cannot write the commit journal .*\/full\/journal: ENOSPC/,
  });
  t.same(fs.readdirSync(base), [], 'the base is untouched');
});

t.test('recoverCommit: temps deleted, a begun removal of hard links finished, directory times put back, torn lines ignored', async (t) => {
  const e = await env(t);
  const dir = await e.base('d');
  const journal = path.join(e.dir, 'journal');
  t.equal(await recoverCommit(journal), false, 'no journal: nothing to do');
  const b64 = (p: string) => B(p).toString('base64');
  write(path.join(dir, '.ontop-commit-1'), 't');
  write(path.join(dir, 'x-file'), 'x');
  fs.mkdirSync(path.join(dir, 'x-dir'));
  fs.mkdirSync(path.join(dir, 'x-full'));
  write(path.join(dir, 'x-full', 'left'), 'a change that stays');
  fs.mkdirSync(path.join(dir, 'timed'));
  await new Promise((resolve) => setTimeout(resolve, 5));
  fs.utimesSync(path.join(dir, 'timed'), 100, 200);
  const journalLines = [
    JSON.stringify({ t: b64(path.join(dir, '.ontop-commit-1')) }),
    JSON.stringify({ t: b64(path.join(dir, '.ontop-commit-never-made')) }),
    JSON.stringify({ d: b64(path.join(dir, 'timed')), a: '1000000000123', m: '2000000000456' }),
    JSON.stringify({ d: b64(path.join(dir, 'gone-dir')), a: '1', m: '2' }),
    JSON.stringify({ d: b64(path.join(dir, 'timed')) }),
    JSON.stringify({ x: b64(path.join(dir, 'x-file')) }),
    JSON.stringify({ x: b64(path.join(dir, 'x-dir')) }),
    JSON.stringify({ x: b64(path.join(dir, 'x-missing')) }),
    JSON.stringify({ x: b64(path.join(dir, 'x-full')) }),
    JSON.stringify({ go: true }),
    '5',
    '{"t": "cut sh',
  ];
  write(journal, journalLines.join('\n'));
  t.equal(await recoverCommit(journal), true);
  t.same(fs.readdirSync(dir).sort(), ['timed', 'x-full'], 'a directory still holding something stays');
  const st = fs.statSync(path.join(dir, 'timed'), { bigint: true });
  t.same([st.atimeNs, st.mtimeNs], [1000000000123n, 2000000000456n], 'times to the nanosecond');
  t.notOk(fs.existsSync(journal));

  write(path.join(dir, 'kept'), 'k');
  write(journal, JSON.stringify({ x: b64(path.join(dir, 'kept')) }) + '\n');
  await recoverCommit(journal);
  t.ok(fs.existsSync(path.join(dir, 'kept')), 'without go, the removal never began: nothing is removed');

  fs.mkdirSync(path.join(dir, '.ontop-commit-dir'));
  write(path.join(dir, '.ontop-commit-dir', 'x'), '');
  write(journal, JSON.stringify({ t: b64(path.join(dir, '.ontop-commit-dir')) }) + '\n');
  await t.rejects(recoverCommit(journal), { code: 'EISDIR' }, 'a directory where a temp was announced is not deleted');
  t.ok(fs.existsSync(journal), 'and the journal stays');
  await t.rejects(recoverCommit(dir), { code: 'EISDIR' }, 'a journal that cannot be read is an error');
});

// openDir against the real kernel: a directory resolved once to a descriptor,
// described through it, confined to its root, and mountable as that very
// directory; nothing left open when it fails.
import t from 'tap';
import type { Test } from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { constants, mount, openDir, umount2 } from '../lib/native.js';
import type { DirInfo } from '../lib/native.js';

const { ENOENT, ENOTDIR, ELOOP } = os.constants.errno;

function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

function isMounted(target: string): boolean {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === target);
}

/** A temp dir (its real path) removed at teardown, after detaching `merged` if still mounted. */
async function scratch(t: Test): Promise<string> {
  const dir = fs.realpathSync(await fsp.mkdtemp(path.join(os.tmpdir(), 'ontop-opendir-')));
  t.teardown(async () => {
    const merged = path.join(dir, 'merged');
    if (isMounted(merged)) await umount2(merged, constants.MNT_DETACH);
    await fsp.rm(dir, { recursive: true, force: true });
  });
  return dir;
}

/** openDir, with its descriptor closed at teardown. */
async function opened(t: Test, root: string, p: string): Promise<DirInfo> {
  const info = await openDir(root, p);
  t.teardown(() => fs.closeSync(info.fd));
  return info;
}

function ancestorsOf(real: string): { dev: number; ino: number }[] {
  const out: { dev: number; ino: number }[] = [];
  for (let p = path.dirname(real), prev = real; p !== prev; prev = p, p = path.dirname(p)) {
    const st = fs.statSync(p);
    out.push({ dev: st.dev, ino: st.ino });
  }
  return out;
}

t.test('openDir of a plain directory reports what fs.statSync, realpath and statfs report', async (t) => {
  const dir = await scratch(t);
  const sub = path.join(dir, 'a', 'b');
  await fsp.mkdir(sub, { recursive: true, mode: 0o750 });
  await fsp.chown(sub, 123, 456);
  const info = await opened(t, '/', sub);
  const st = fs.statSync(sub);
  t.match(info, { dev: st.dev, ino: st.ino, mode: st.mode, uid: 123, gid: 456 });
  t.equal(info.path, fs.realpathSync(sub));
  t.equal(info.fsType, fs.statfsSync(sub).type);
  t.type(info.fd, 'number');
  t.equal(fs.fstatSync(info.fd).ino, st.ino, 'fd is open on that directory');
  const parent = fs.statSync(path.join(dir, 'a'));
  const slash = fs.statSync('/');
  t.same(info.ancestors[0], { dev: parent.dev, ino: parent.ino }, 'nearest ancestor first');
  t.same(info.ancestors.at(-1), { dev: slash.dev, ino: slash.ino }, 'the root last');
  t.same(info.ancestors, ancestorsOf(info.path), 'one entry per ancestor, across mounts');
});

t.test('openDir of / has no ancestors', async (t) => {
  const info = await opened(t, '/', '/');
  t.equal(info.path, '/');
  t.same(info.ancestors, []);
  t.equal(info.ino, fs.statSync('/').ino);
});

t.test('openDir follows a symlink to the directory it names', async (t) => {
  const dir = await scratch(t);
  await fsp.mkdir(path.join(dir, 'real'));
  await fsp.symlink(path.join(dir, 'real'), path.join(dir, 'link'));
  const info = await opened(t, '/', path.join(dir, 'link'));
  t.equal(info.path, path.join(dir, 'real'));
  t.equal(info.ino, fs.statSync(path.join(dir, 'real')).ino);
});

t.test('openDir resolves absolute paths, absolute symlinks and .. as if root were /', async (t) => {
  const dir = await scratch(t);
  const root = path.join(dir, 'root');
  await fsp.mkdir(path.join(root, 'etc'), { recursive: true });
  await fsp.mkdir(path.join(root, 'srv', 'site'), { recursive: true });
  await fsp.symlink('/etc', path.join(root, 'abs'));
  await fsp.symlink('../../../../..', path.join(root, 'srv', 'up'));
  const inner = fs.statSync(path.join(root, 'etc')).ino;

  const viaLink = await opened(t, root, 'abs');
  t.equal(viaLink.ino, inner, 'an absolute symlink inside root points into root');
  t.equal(viaLink.path, path.join(root, 'etc'));
  t.not(viaLink.ino, fs.statSync('/etc').ino, 'not the host /etc');
  t.equal((await opened(t, root, '/etc')).ino, inner, 'an absolute path is taken inside root');
  t.equal((await opened(t, root, '../../..')).path, root, '.. stops at root');
  t.equal((await opened(t, root, 'srv/up')).path, root, 'a symlink climbing out stops at root');
  t.equal((await opened(t, root, '/srv/../../srv/site')).path, path.join(root, 'srv', 'site'));
});

t.test('openDir refuses magic links like /proc/self/cwd with ELOOP', async (t) => {
  await t.rejects(openDir('/', '/proc/self/cwd'), { code: 'ELOOP', errno: -ELOOP, syscall: 'openat2', path: '/proc/self/cwd' });
});

t.test('openDir failures name the failing step and the path, and leave no descriptor open', async (t) => {
  const dir = await scratch(t);
  await fsp.writeFile(path.join(dir, 'file'), 'x');
  const before = openFds();
  for (let i = 0; i < 20; i++) {
    await t.rejects(openDir(dir, 'file'), { code: 'ENOTDIR', errno: -ENOTDIR, syscall: 'openat2', path: 'file' });
    await t.rejects(openDir(dir, 'missing'), {
      code: 'ENOENT',
      errno: -ENOENT,
      syscall: 'openat2',
      path: 'missing',
      message: "ENOENT: no such file or directory, openat2 'missing'",
    });
    await t.rejects(openDir(path.join(dir, 'nope'), '/'), { code: 'ENOENT', syscall: 'open', path: path.join(dir, 'nope') });
    await t.rejects(openDir(path.join(dir, 'file'), '/'), { code: 'ENOTDIR', syscall: 'open', path: path.join(dir, 'file') });
  }
  t.equal(openFds(), before, 'as many descriptors open as before');
  const info = await openDir(dir, '/');
  t.equal(openFds(), before + 1, 'a success leaves exactly its own fd');
  fs.closeSync(info.fd);
});

t.test('openDir checks argument types before any native call', async (t) => {
  t.throws(() => openDir(1 as unknown as string, '/'), { name: 'TypeError', message: /"root" argument must be of type string/ });
  t.throws(() => openDir('/', undefined as unknown as string), { name: 'TypeError', message: /"path" argument.*undefined/ });
  t.throws(() => openDir('/', 'a\0b'), { name: 'TypeError', message: /null bytes/ });
});

t.test('an overlay with lowerdir=/proc/self/fd/N mounts the directory openDir opened, not what its path names later', async (t) => {
  const dir = await scratch(t);
  const base = path.join(dir, 'base');
  await fsp.mkdir(base);
  await fsp.writeFile(path.join(base, 'who'), 'checked');
  for (const d of ['upper', 'work', 'merged']) await fsp.mkdir(path.join(dir, d));
  const info = await openDir('/', base);
  try {
    // The path now names another directory; the descriptor still holds the checked one.
    await fsp.rename(base, path.join(dir, 'moved'));
    await fsp.mkdir(base);
    await fsp.writeFile(path.join(base, 'who'), 'swapped in');
    const merged = path.join(dir, 'merged');
    await mount('overlay', merged, 'overlay', 0, `lowerdir=/proc/self/fd/${info.fd},upperdir=${dir}/upper,workdir=${dir}/work`);
    t.equal(await fsp.readFile(path.join(merged, 'who'), 'utf8'), 'checked');
    await umount2(merged, 0);
    t.notOk(isMounted(merged));
  } finally {
    fs.closeSync(info.fd);
  }
});

// The addon's file calls against the real kernel: xattrs on names that are
// not UTF-8, whiteouts and other special files, nanosecond times on files and
// symlinks, syncfs; Node-shaped errors and argument checks.
import t from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { constants, lgetxattr, llistxattr, lremovexattr, lsetxattr, mknod, syncfs, utimensat } from '../lib/native.js';

async function scratch(t: import('tap').Test): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ontop-native-files-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

t.test('the file constants have their kernel values', async (t) => {
  t.same(
    { AT_SYMLINK_NOFOLLOW: constants.AT_SYMLINK_NOFOLLOW, XATTR_CREATE: constants.XATTR_CREATE, XATTR_REPLACE: constants.XATTR_REPLACE },
    { AT_SYMLINK_NOFOLLOW: 0x100, XATTR_CREATE: 1, XATTR_REPLACE: 2 },
  );
});

t.test('xattrs: set, list, get and remove, on a path and a value that are not UTF-8, never following a symlink', async (t) => {
  const dir = await scratch(t);
  const file = Buffer.concat([Buffer.from(dir + '/f'), Buffer.from([0xff, 0x0a])]);
  fs.writeFileSync(file, '');
  const value = Buffer.from([0, 1, 2, 0xff]);
  await lsetxattr(file, 'user.a', value);
  await lsetxattr(file, Buffer.from('user.b'), Buffer.alloc(0));
  await lsetxattr(file, 'trusted.overlay.opaque', Buffer.from('y'));
  const big = Buffer.alloc(3000, 7); // ext4 holds values up to about a block
  await lsetxattr(file, 'user.big', big);
  t.same((await llistxattr(file)).map(String).sort(), ['trusted.overlay.opaque', 'user.a', 'user.b', 'user.big']);
  t.same(await lgetxattr(file, 'user.a'), value, 'values are bytes, NUL included');
  t.same(await lgetxattr(file, 'user.b'), Buffer.alloc(0), 'an empty value');
  t.same(await lgetxattr(file, 'user.big'), big, 'a large value');
  await t.rejects(lsetxattr(file, 'user.a', value, constants.XATTR_CREATE), { code: 'EEXIST', syscall: 'lsetxattr' });
  await t.rejects(lsetxattr(file, 'user.new', value, constants.XATTR_REPLACE), { code: 'ENODATA' });
  await lremovexattr(file, 'user.a');
  await t.rejects(lgetxattr(file, 'user.a'), { code: 'ENODATA', errno: -os.constants.errno.ENODATA, syscall: 'lgetxattr', path: file.toString() });
  await t.rejects(lremovexattr(file, 'user.a'), { code: 'ENODATA', syscall: 'lremovexattr' });

  const link = path.join(dir, 'link');
  fs.symlinkSync(file, link);
  await lsetxattr(link, 'trusted.on-link', Buffer.from('l'));
  t.same((await llistxattr(link)).map(String), ['trusted.on-link'], 'the symlink\'s own xattrs');
  t.notOk((await llistxattr(file)).map(String).includes('trusted.on-link'), 'not its target\'s');
  fs.writeFileSync(path.join(dir, 'plain'), '');
  t.same(await llistxattr(path.join(dir, 'plain')), [], 'none: an empty list');
  await t.rejects(llistxattr(path.join(dir, 'missing')), { code: 'ENOENT', syscall: 'llistxattr', path: path.join(dir, 'missing') });
});

t.test('mknod makes a whiteout (character device 0:0), a FIFO and a device with large numbers', async (t) => {
  const dir = await scratch(t);
  await mknod(path.join(dir, 'wh'), fs.constants.S_IFCHR);
  const wh = fs.lstatSync(path.join(dir, 'wh'));
  t.ok(wh.isCharacterDevice());
  t.equal(wh.rdev, 0);
  await mknod(Buffer.from(path.join(dir, 'fifo')), fs.constants.S_IFIFO | 0o640);
  const fifo = fs.lstatSync(path.join(dir, 'fifo'));
  t.ok(fifo.isFIFO());
  t.equal(fifo.mode & 0o777, 0o640 & ~process.umask());
  await mknod(path.join(dir, 'dev'), fs.constants.S_IFCHR | 0o600, 300, 70000);
  const rdev = BigInt(fs.lstatSync(path.join(dir, 'dev')).rdev);
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  t.same([major, minor], [300n, 70000n]);
  await t.rejects(mknod(path.join(dir, 'wh'), fs.constants.S_IFCHR), { code: 'EEXIST', syscall: 'mknod' });
});

t.test('utimensat sets times to the nanosecond, before 1970 too, and a symlink\'s own with AT_SYMLINK_NOFOLLOW', async (t) => {
  const dir = await scratch(t);
  const file = path.join(dir, 'f');
  fs.writeFileSync(file, '');
  await utimensat(file, 1_700_000_000_123_456_789n, -1_500_000_001n);
  const st = fs.lstatSync(file, { bigint: true });
  t.same([st.atimeNs, st.mtimeNs], [1_700_000_000_123_456_789n, -1_500_000_001n]);
  const link = path.join(dir, 'l');
  fs.symlinkSync('f', link);
  await utimensat(link, 5n, 7_000_000_009n, constants.AT_SYMLINK_NOFOLLOW);
  t.equal(fs.lstatSync(link, { bigint: true }).mtimeNs, 7_000_000_009n);
  t.equal(fs.lstatSync(file, { bigint: true }).mtimeNs, -1_500_000_001n, 'the target is untouched');
  await utimensat(link, 1n, 2n);
  t.equal(fs.lstatSync(file, { bigint: true }).mtimeNs, 2n, 'without the flag it follows the link');
  await t.rejects(utimensat(path.join(dir, 'missing'), 0n, 0n), { code: 'ENOENT', syscall: 'utimensat' });
});

t.test('syncfs syncs the filesystem of a directory or a FIFO without waiting for a writer, and fails on a missing path', async (t) => {
  const dir = await scratch(t);
  await syncfs(dir);
  await mknod(path.join(dir, 'fifo'), fs.constants.S_IFIFO | 0o600);
  await syncfs(path.join(dir, 'fifo'));
  await t.rejects(syncfs(path.join(dir, 'missing')), { code: 'ENOENT', syscall: 'open', path: path.join(dir, 'missing') });
});

t.test('the file calls check their arguments before any native call', async (t) => {
  const bad = 42 as unknown as string;
  t.throws(() => lgetxattr(bad, 'user.a'), { name: 'TypeError', message: /"path" argument must be of type string or an instance of Buffer. Received type number/ });
  t.throws(() => lgetxattr('/x', Buffer.from('user\0a')), { name: 'TypeError', message: /"name" argument must not contain null bytes/ });
  t.throws(() => llistxattr('/x\0y'), { name: 'TypeError', message: /null bytes/ });
  t.throws(() => lsetxattr('/x', 'user.a', 'v' as unknown as Buffer), { name: 'TypeError', message: /"value" argument must be an instance of Buffer/ });
  t.throws(() => lsetxattr('/x', 'user.a', Buffer.alloc(0), -1), { name: 'TypeError', message: /"flags"/ });
  t.throws(() => lremovexattr('/x', null as unknown as string), { name: 'TypeError', message: /"name"/ });
  t.throws(() => mknod('/x', 1.5), { name: 'TypeError', message: /"mode"/ });
  t.throws(() => mknod('/x', 0, -1), { name: 'TypeError', message: /"major"/ });
  t.throws(() => mknod('/x', 0, 0, NaN), { name: 'TypeError', message: /"minor"/ });
  t.throws(() => utimensat('/x', 1 as unknown as bigint, 0n), { name: 'TypeError', message: /"atimeNs" argument must be of type bigint/ });
  t.throws(() => utimensat('/x', 0n, '0' as unknown as bigint), { name: 'TypeError', message: /"mtimeNs"/ });
  t.throws(() => utimensat('/x', 0n, 0n, -5), { name: 'TypeError', message: /"flags"/ });
  t.throws(() => syncfs({} as unknown as string), { name: 'TypeError', message: /instance of Object/ });
});

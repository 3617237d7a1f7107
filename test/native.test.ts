// The addon facade against the real kernel: overlay mounts, Node-shaped
// errors, flock contention, and waits that must not starve the libuv pool.
import t from 'tap';
import type { Test } from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { constants, flock, mount, systemError, umount2 } from '../lib/native.js';

const { LOCK_EX, LOCK_SH, LOCK_NB, LOCK_UN, MNT_DETACH } = constants;

function isMounted(target: string): boolean {
  const escaped = target.replace(/[\\ \t\n]/g, (c) => '\\' + c.charCodeAt(0).toString(8).padStart(3, '0'));
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === escaped);
}

/** A temp dir removed at teardown, after detaching anything still mounted under it. */
async function scratch(t: Test): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ontop-native-'));
  t.teardown(async () => {
    for (const sub of ['merged', 'busy']) {
      const target = path.join(dir, sub);
      if (isMounted(target)) await umount2(target, MNT_DETACH);
    }
    await fsp.rm(dir, { recursive: true, force: true });
  });
  return dir;
}

/** Resolves with 'timeout' unless `p` settles within `ms`. */
function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), ms)));
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

async function overlay(dir: string): Promise<string> {
  for (const d of ['lower', 'upper', 'work', 'merged']) await fsp.mkdir(path.join(dir, d), { recursive: true });
  const merged = path.join(dir, 'merged');
  await mount('overlay', merged, 'overlay', 0, `lowerdir=${dir}/lower,upperdir=${dir}/upper,workdir=${dir}/work`);
  return merged;
}

t.test('constants expose the mount, umount and flock flags with their kernel values', async (t) => {
  t.same(
    { LOCK_SH, LOCK_EX, LOCK_NB, LOCK_UN, MNT_DETACH },
    { LOCK_SH: 1, LOCK_EX: 2, LOCK_NB: 4, LOCK_UN: 8, MNT_DETACH: 2 },
  );
  for (const k of ['MS_RDONLY', 'MS_NOSUID', 'MS_NODEV', 'MNT_FORCE', 'UMOUNT_NOFOLLOW'] as const) {
    t.type(constants[k], 'number', k);
  }
  t.ok(Object.isFrozen(constants));
});

t.test('an overlay mounted through the addon reads the lower layer and writes only to the upper', async (t) => {
  const dir = await scratch(t);
  await fsp.mkdir(path.join(dir, 'lower'), { recursive: true });
  await fsp.writeFile(path.join(dir, 'lower', 'base.txt'), 'from base');
  const merged = await overlay(dir);
  t.ok(isMounted(merged), 'mountinfo lists the overlay');
  t.equal(await fsp.readFile(path.join(merged, 'base.txt'), 'utf8'), 'from base');
  await fsp.writeFile(path.join(merged, 'base.txt'), 'changed');
  await fsp.writeFile(path.join(merged, 'new.txt'), 'new');
  t.equal(await fsp.readFile(path.join(dir, 'lower', 'base.txt'), 'utf8'), 'from base', 'lower untouched');
  t.equal(await fsp.readFile(path.join(dir, 'upper', 'base.txt'), 'utf8'), 'changed', 'copy-up landed in upper');
  t.equal(await fsp.readFile(path.join(dir, 'upper', 'new.txt'), 'utf8'), 'new');
  await umount2(merged, 0);
  t.notOk(isMounted(merged), 'unmounted');
});

t.test('mount on a missing target fails with a Node-shaped ENOENT', async (t) => {
  const dir = await scratch(t);
  const target = path.join(dir, 'missing');
  await t.rejects(mount('none', target, 'tmpfs', 0, ''), {
    code: 'ENOENT',
    errno: -os.constants.errno.ENOENT,
    syscall: 'mount',
    path: target,
    message: `ENOENT: no such file or directory, mount '${target}'`,
  });
});

t.test('umount2 of a directory that is not a mountpoint fails with EINVAL', async (t) => {
  const dir = await scratch(t);
  await t.rejects(umount2(dir, 0), {
    code: 'EINVAL',
    errno: -os.constants.errno.EINVAL,
    syscall: 'umount2',
    path: dir,
    message: `EINVAL: invalid argument, umount2 '${dir}'`,
  });
});

t.test('umount2 of a mount with a file held open fails with EBUSY and MNT_DETACH still detaches it', async (t) => {
  const dir = await scratch(t);
  const busy = path.join(dir, 'busy');
  await fsp.mkdir(busy);
  await mount('ontop-test', busy, 'tmpfs', 0, 'size=1m');
  const held = await fsp.open(path.join(busy, 'held'), 'w');
  try {
    await t.rejects(umount2(busy, 0), { code: 'EBUSY', errno: -os.constants.errno.EBUSY, syscall: 'umount2', path: busy });
    t.ok(isMounted(busy), 'still mounted after EBUSY');
    await umount2(busy, MNT_DETACH);
    t.notOk(isMounted(busy), 'detached');
  } finally {
    await held.close();
  }
});

t.test('mount with data the filesystem rejects fails with EINVAL, not a crash', async (t) => {
  const dir = await scratch(t);
  await fsp.mkdir(path.join(dir, 'merged'));
  await t.rejects(mount('overlay', path.join(dir, 'merged'), 'overlay', 0, 'lowerdir=/nonexistent-ontop'), {
    syscall: 'mount',
    path: path.join(dir, 'merged'),
  });
});

t.test('two descriptors of one file contend for flock', async (t) => {
  const dir = await scratch(t);
  const file = path.join(dir, 'lock');
  const a = await fsp.open(file, 'w');
  const b = await fsp.open(file, 'r');
  const c = await fsp.open(file, 'r');
  t.teardown(async () => {
    await a.close();
    await b.close();
    await c.close();
  });
  await flock(a.fd, LOCK_EX);
  await t.rejects(flock(b.fd, LOCK_EX | LOCK_NB), { code: 'EAGAIN', syscall: 'flock' }, 'LOCK_NB rejects at once');
  await t.rejects(flock(b.fd, LOCK_SH | LOCK_NB), { code: 'EAGAIN' }, 'a shared lock waits for an exclusive one too');

  let acquired = false;
  const waiting = flock(b.fd, LOCK_EX).then(() => (acquired = true));
  t.equal(await within(waiting, 200), 'timeout', 'a blocking flock waits while the other holds the lock');
  t.notOk(acquired);
  await flock(a.fd, LOCK_UN);
  t.equal(await within(waiting, 5000), true, 'and is granted once the holder unlocks');
  await flock(b.fd, LOCK_UN);

  await flock(a.fd, LOCK_SH);
  await t.resolves(flock(b.fd, LOCK_SH | LOCK_NB), 'two shared locks coexist: the second, non-blocking, is granted at once');
  await t.rejects(flock(c.fd, LOCK_EX | LOCK_NB), { code: 'EAGAIN' }, 'while an exclusive one is refused');
});

t.test('twelve waiting locks leave fs.promises and timers working', async (t) => {
  const dir = await scratch(t);
  const file = path.join(dir, 'lock');
  const holder = await fsp.open(file, 'w');
  const waiters = await Promise.all(Array.from({ length: 12 }, () => fsp.open(file, 'r')));
  t.teardown(async () => {
    await holder.close();
    for (const w of waiters) await w.close();
  });
  await flock(holder.fd, LOCK_EX);
  const granted: number[] = [];
  const waits = waiters.map((w, i) => flock(w.fd, LOCK_EX).then(async () => {
    granted.push(i);
    await flock(w.fd, LOCK_UN);
  }));

  // With the four libuv pool threads blocked in flock(2), these would never finish.
  const fsWork = Promise.all(Array.from({ length: 64 }, (_, i) => fsp.writeFile(path.join(dir, `f${i}`), String(i)).then(() => fsp.stat(path.join(dir, `f${i}`)))));
  t.not(await within(fsWork, 5000), 'timeout', '64 fs.promises writes and stats complete while 12 locks wait');
  const timerFired = new Promise<boolean>((resolve) => setTimeout(() => resolve(true), 10));
  t.equal(await within(timerFired, 5000), true, 'timers fire');
  t.same(granted, [], 'no waiter got the lock while it was held');

  await flock(holder.fd, LOCK_UN);
  t.not(await within(Promise.all(waits), 10000), 'timeout', 'every waiter gets the lock in turn');
  t.equal(granted.length, 12);
});

t.test('flock on a bad descriptor rejects with EBADF', async (t) => {
  await t.rejects(flock(987654, LOCK_EX), { code: 'EBADF', errno: -os.constants.errno.EBADF, syscall: 'flock' });
  t.notOk('path' in (await flock(987654, LOCK_SH | LOCK_NB).catch((e: unknown) => e) as object), 'no path for a descriptor call');
});

t.test('wrong argument types throw TypeError before any native call', async (t) => {
  const bad: unknown = 42;
  t.throws(() => mount(bad as string, '/x', 'overlay', 0, ''), { name: 'TypeError', message: /"source" argument must be of type string.*number/ });
  t.throws(() => mount('a', null as unknown as string, 'overlay', 0, ''), { name: 'TypeError', message: /"target".*Received null/ });
  t.throws(() => mount('a', '/x', {} as unknown as string, 0, ''), { name: 'TypeError', message: /"fstype".*instance of Object/ });
  t.throws(() => mount('a', '/x', 'overlay', -1, ''), { name: 'TypeError', message: /"flags".*non-negative integer/ });
  t.throws(() => mount('a', '/x', 'overlay', 1.5, ''), TypeError);
  t.throws(() => mount('a', '/x', 'overlay', 0, undefined as unknown as string), { name: 'TypeError', message: /"data"/ });
  t.throws(() => mount('a', '/x\0y', 'overlay', 0, ''), { name: 'TypeError', message: /null bytes/ });
  t.throws(() => umount2('/x', '0' as unknown as number), { name: 'TypeError', message: /"flags".*string \('0'\)/ });
  t.throws(() => umount2(Symbol('x') as unknown as string, 0), { name: 'TypeError', message: /type symbol/ });
  t.throws(() => flock(-1, LOCK_EX), { name: 'TypeError', message: /"fd"/ });
  t.throws(() => flock(3, NaN), { name: 'TypeError', message: /"operation"/ });
  t.throws(() => flock(3, Object.create(null) as number), { name: 'TypeError', message: /instance of Object/ });
});

t.test('systemError builds the same shape fs uses, even for an errno Node does not name', async (t) => {
  const e = systemError(16, 'umount2', '/v');
  t.match(e, { code: 'EBUSY', errno: -16, syscall: 'umount2', path: '/v', message: "EBUSY: resource busy or locked, umount2 '/v'" });
  const unknown = systemError(4242, 'mount');
  t.match(unknown, { code: 'E4242', errno: -4242, syscall: 'mount', message: 'E4242: unknown error, mount' });
  t.notOk('path' in unknown);
});

// A hung filesystem against the addon: calls stuck in the kernel on a FUSE
// mount nobody answers must hold only threads of their own (fs.promises,
// healthy mounts and openDir go on), at most threadLimit of them; beyond the
// bound a call rejects at once with EAGAIN; aborting the connection releases
// every one of them.
import t from 'tap';
import type { Test } from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { constants, flock, mount, openDir, threadLimit, umount2 } from '../lib/native.js';

const { MNT_DETACH, LOCK_EX, LOCK_UN } = constants;

function isMounted(target: string): boolean {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === target);
}

function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

/** Resolves with 'timeout' unless `p` settles within `ms`. */
function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), ms)));
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** What a promise came to, without rejecting. */
function outcome<T>(p: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: NodeJS.ErrnoException }> {
  return p.then(
    (value) => ({ ok: true as const, value }),
    (error: NodeJS.ErrnoException) => ({ ok: false as const, error }),
  );
}

interface Scene {
  dir: string;
  /** A FUSE mount whose daemon never answers: every lookup below it blocks. */
  hung: string;
  /** Aborts the FUSE connection (closes /dev/fuse): blocked calls fail with ENOTCONN. */
  abort(): void;
  /** Makes dir/<name>/{upper,work,merged} for an overlay; returns the mount data for `lower`. */
  overlayDirs(name: string, lower: string): Promise<{ merged: string; data: string }>;
}

async function scene(t: Test): Promise<Scene> {
  const dir = fs.realpathSync(await fsp.mkdtemp(path.join(os.tmpdir(), 'ontop-hung-')));
  const hung = path.join(dir, 'hung');
  await fsp.mkdir(hung);
  let fuse: number | undefined = fs.openSync('/dev/fuse', 'r+');
  const abort = (): void => {
    if (fuse !== undefined) fs.closeSync(fuse);
    fuse = undefined;
  };
  const merged: string[] = [];
  t.teardown(async () => {
    abort();
    for (const target of [...merged, hung]) if (isMounted(target)) await umount2(target, MNT_DETACH);
    await fsp.rm(dir, { recursive: true, force: true });
  });
  await mount('ontop-test', hung, 'fuse', 0, `fd=${fuse},rootmode=40000,user_id=0,group_id=0`);
  return {
    dir,
    hung,
    abort,
    async overlayDirs(name, lower) {
      const top = path.join(dir, name);
      for (const d of ['upper', 'work', 'merged']) await fsp.mkdir(path.join(top, d), { recursive: true });
      merged.push(path.join(top, 'merged'));
      return { merged: path.join(top, 'merged'), data: `lowerdir=${lower},upperdir=${top}/upper,workdir=${top}/work` };
    },
  };
}

t.test('eight calls hung on a dead FUSE mount leave fs.promises, openDir and overlay mounts working', async (t) => {
  const s = await scene(t);
  const fdsBefore = openFds();
  const healthyLower = path.join(s.dir, 'lower');
  await fsp.mkdir(healthyLower);
  await fsp.writeFile(path.join(healthyLower, 'f'), 'healthy');

  // Four of each: either kind alone would fill libuv's four pool threads.
  // The FUSE root itself opens without asking the daemon, then hangs in
  // fstat: a failure after the descriptor is open, which must close it.
  const hungOverlays = await Promise.all([1, 2, 3, 4].map((i) => s.overlayDirs(`h${i}`, `${s.hung}/x`)));
  const hung = [
    ...[1, 2, 3].map(() => outcome(openDir('/', `${s.hung}/x`))),
    outcome(openDir(s.hung, '/')),
    ...hungOverlays.map((o) => outcome(mount('overlay', o.merged, 'overlay', 0, o.data))),
  ];
  t.equal(await within(Promise.race(hung), 300), 'timeout', 'the eight calls are stuck in the kernel');

  const healthy = (async () => {
    const stats = Promise.all(Array.from({ length: 20 }, () => fsp.stat(healthyLower)));
    const info = await openDir('/', healthyLower);
    fs.closeSync(info.fd);
    const o = await s.overlayDirs('ok', healthyLower);
    await mount('overlay', o.merged, 'overlay', 0, o.data);
    const read = await fsp.readFile(path.join(o.merged, 'f'), 'utf8');
    await umount2(o.merged, 0);
    await stats;
    return read;
  })();
  t.equal(await within(healthy, 10000), 'healthy', 'a healthy openDir, overlay mount+umount2 and 20 fs.promises.stat complete');
  t.equal(await within(Promise.race(hung), 100), 'timeout', 'the hung calls are still hung');

  s.abort();
  const settled = await within(Promise.all(hung), 10000);
  if (settled === 'timeout') throw new Error('hung calls did not settle after the abort');
  for (const [i, r] of settled.entries()) {
    t.notOk(r.ok, `hung call ${i} rejects once the connection is aborted`);
    if (!r.ok) t.match(r.error, { code: 'ENOTCONN', syscall: ['openat2', 'openat2', 'openat2', 'fstat', 'mount', 'mount', 'mount', 'mount'][i] });
  }
  await umount2(s.hung, MNT_DETACH);
  t.notOk(isMounted(s.hung), 'the FUSE mount is gone');
  for (const o of hungOverlays) t.notOk(isMounted(o.merged), `nothing mounted on ${o.merged}`);
  t.equal(openFds(), fdsBefore - 1, 'no descriptor left behind (the /dev/fuse one is closed)');
});

t.test('with threadLimit calls hung, one more rejects at once with EAGAIN, and calls work again once they are released', async (t) => {
  const s = await scene(t);
  const lockFile = path.join(s.dir, 'lock');
  const holder = await fsp.open(lockFile, 'w');
  const waiter = await fsp.open(lockFile, 'r');
  t.teardown(async () => {
    await holder.close();
    await waiter.close();
  });
  await flock(holder.fd, LOCK_EX);

  const overlays = await Promise.all(Array.from({ length: threadLimit / 2 }, (_, i) => s.overlayDirs(`h${i}`, `${s.hung}/x`)));
  const hung = [
    ...overlays.map((o) => outcome(mount('overlay', o.merged, 'overlay', 0, o.data))),
    ...Array.from({ length: threadLimit / 2 - 1 }, () => outcome(openDir('/', `${s.hung}/y`))),
    outcome(flock(waiter.fd, LOCK_EX)),
  ];
  t.equal(hung.length, threadLimit);
  t.equal(await within(Promise.race(hung), 300), 'timeout', 'all of them wait');

  const started = Date.now();
  const extra = await within(
    Promise.all([
      outcome(openDir('/', '/')),
      outcome(mount('none', s.dir, 'tmpfs', 0, '')),
      outcome(umount2(s.dir, 0)),
      outcome(flock(waiter.fd, LOCK_EX)),
    ]),
    1000,
  );
  if (extra === 'timeout') throw new Error('a call beyond the bound waited');
  t.ok(Date.now() - started < 1000, 'at once');
  t.same(
    extra.map((r) => (r.ok ? 'ok' : `${r.error.code} ${r.error.syscall}`)),
    ['EAGAIN openDir', 'EAGAIN mount', 'EAGAIN umount2', 'EAGAIN flock'],
    'each extra call rejects with EAGAIN naming its call',
  );
  t.notOk(isMounted(s.dir), 'the refused mount did nothing');
  t.not(await within(fsp.stat(s.dir), 5000), 'timeout', 'fs.promises still works at the bound');

  s.abort();
  await flock(holder.fd, LOCK_UN);
  const settled = await within(Promise.all(hung), 10000);
  if (settled === 'timeout') throw new Error('hung calls did not settle after the abort');
  t.same(
    settled.map((r) => (r.ok ? 'ok' : r.error.code)),
    [...Array(threadLimit - 1).fill('ENOTCONN'), 'ok'],
    'every hung call rejects and the waiting flock gets its lock',
  );
  await flock(waiter.fd, LOCK_UN);
  await umount2(s.hung, MNT_DETACH);

  const info = await openDir('/', s.dir);
  fs.closeSync(info.fd);
  t.equal(info.path, s.dir, 'openDir works again');
  await Promise.all(Array.from({ length: threadLimit }, () => umount2(s.dir, 0).catch((e: NodeJS.ErrnoException) => e.code))).then((codes) =>
    t.same(codes, Array(threadLimit).fill('EINVAL'), 'a full bound of calls is accepted again'),
  );
  for (const o of overlays) t.notOk(isMounted(o.merged));
});

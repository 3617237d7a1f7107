// The mounter's policy for what it finds on merged/ and on the base, against
// the real kernel where the state can be made (a busy foreign mount, a mount
// below the overlay, a base that became a pseudo-filesystem), and with
// unmountOverlay stubbed where only a race could make it (a leftover gone
// between the table read and the unmount, an unexpected errno).
import t from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { describeHolders } from '../lib/mounter.js';
import { constants, mount as sysMount, umount2 } from '../lib/native.js';
import { env, mountCount } from './helpers/tmp.js';

t.test('describeHolders names each process once, with its command when known, and at most five', async (t) => {
  t.equal(describeHolders([{ pid: 3, command: 'sh' }, { pid: 3, command: 'sh' }, { pid: 9 }]), 'process 3 (sh), process 9');
  const many = Array.from({ length: 8 }, (_, i) => ({ pid: i + 1, command: 'x' }));
  t.equal(describeHolders(many), 'process 1 (x), process 2 (x), process 3 (x), process 4 (x), process 5 (x) and 3 more');
});

t.test('a busy foreign mount on merged/ (not an overlay of the volume) is detached, even for a volume that keeps its changes', async (t) => {
  const e = await env(t);
  const d = await e.open();
  const base = await e.base('base', { 'a.txt': 'A' });
  await d.create({ Name: 'v', Opts: { base } });
  const merged = path.join(e.root, 'volumes/v/merged');
  fs.mkdirSync(merged);
  await sysMount('ontop-test', merged, 'tmpfs', 0, 'size=1m');
  const held = await fsp.open(path.join(merged, 'held'), 'w');
  t.teardown(() => held.close().catch(() => {}));
  await d.mount({ Name: 'v', ID: 'a' });
  t.ok(e.log.has('warn', /detaching a busy leftover mount/));
  t.equal(mountCount(merged), 1, 'one mount: the overlay');
  t.same(fs.readdirSync(merged), ['a.txt']);
  await d.unmount({ Name: 'v', ID: 'a' });
});

t.test('a mount below the overlay keeps Remove from unmounting it; the refusal says what to look for', async (t) => {
  const e = await env(t);
  const d = await e.open();
  const base = await e.base('base', { sub: '' });
  fs.rmSync(path.join(base, 'sub'));
  fs.mkdirSync(path.join(base, 'sub'));
  await d.create({ Name: 'v', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  const sub = path.join(Mountpoint, 'sub');
  await sysMount('ontop-test', sub, 'tmpfs', 0, 'size=1m');
  t.teardown(() => umount2(sub, constants.MNT_DETACH).catch(() => {}));
  await t.rejects(d.remove({ Name: 'v' }), { name: 'DriverError', message: /^volume v is in use: something is mounted below .*merged, or a process ontop cannot see holds it/ });
  t.equal(mountCount(Mountpoint), 1, 'the overlay stays');
  t.match(await d.get({ Name: 'v' }), { Volume: { Status: { users: 1 } } }, 'and so do its records');
  await umount2(sub, 0);
  t.same(await d.remove({ Name: 'v' }), {});
});

t.test('a base that became a kernel pseudo-filesystem is refused at Mount', async (t) => {
  const e = await env(t);
  const d = await e.open();
  const base = await e.base();
  await d.create({ Name: 'v', Opts: { base } });
  await sysMount('proc', base, 'proc', 0, '');
  t.teardown(() => umount2(base, constants.MNT_DETACH).catch(() => {}));
  await t.rejects(d.mount({ Name: 'v', ID: 'a' }), { name: 'DriverError', message: /^volume v cannot be mounted: its base .* is on proc, a kernel pseudo-filesystem/ });
  t.same(fs.readdirSync(path.join(e.root, 'volumes/v')).includes('users'), false, 'no record');
});

/** A driver whose unmountOverlay fails with `codes` in turn (then works), to play a race the kernel cannot be made to. */
async function withUnmount(t: import('tap').Test, codes: string[]) {
  const real = await import('../lib/overlay.js');
  const stub = {
    ...real,
    unmountOverlay: async (target: string) => {
      const c = codes.shift();
      if (c === undefined) return real.unmountOverlay(target);
      throw Object.assign(new Error(`${c}: stubbed, umount2 '${target}'`), { code: c });
    },
  };
  const { openDriver } = await t.mockImport<typeof import('../lib/driver.js')>('../lib/driver.js', {
    '../lib/mounter.js': await t.mockImport('../lib/mounter.js', { '../lib/overlay.js': stub }),
  });
  return openDriver;
}

t.test('an unexpected errno from unmounting a leftover fails the Mount in words and leaves the leftover alone', async (t) => {
  const e = await env(t);
  const base = await e.base('base', { 'a.txt': 'A' });
  const codes = ['EIO'];
  const openDriver = await withUnmount(t, codes);
  const d = await openDriver({ root: e.root, logger: e.log.logger });
  t.teardown(() => d.close());
  await d.create({ Name: 'v', Opts: { base } });
  const merged = path.join(e.root, 'volumes/v/merged');
  fs.mkdirSync(merged);
  await sysMount('ontop-test', merged, 'tmpfs', 0, 'size=1m');
  await t.rejects(d.mount({ Name: 'v', ID: 'a' }), { name: 'DriverError', message: /^mount of volume v failed: EIO: stubbed/ });
  t.equal(mountCount(merged), 1, 'the foreign mount is still there, nothing stacked on it');
  t.ok(e.log.has('error', /mount failed/), 'logged with its details');
  await d.mount({ Name: 'v', ID: 'a' });
  t.same(fs.readdirSync(merged), ['a.txt'], 'the next Mount unmounts it and mounts the overlay');
  await d.unmount({ Name: 'v', ID: 'a' });
  t.equal(mountCount(merged), 0);
});

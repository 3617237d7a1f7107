// Failing syscalls: internal directories made immutable (chattr +i) so that
// record writes, renames and deletions fail; a base deleted while unmounted
// and restored; a mountpoint held busy by a host process. Each call either
// succeeds or fails cleanly with a DriverError that says what is wrong, and
// after each one the volume is safe: never a mount record without its
// overlay (users/ checked against /proc/self/mountinfo).
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Driver } from '../../lib/driver.js';
import type { Env } from '../helpers/tmp.js';
import { env, mountCount } from '../helpers/tmp.js';
import { chattr, chattrUnsupported, mountsUnder, usersWithoutMount } from '../helpers/faults.js';

type Tap = import('tap').Test;

// Probed once on the filesystem that holds the tests' state roots: the tests that need the flag skip with the reason.
const skip = chattrUnsupported();
const IMMUTABLE = /ontop may not change its state under .* \(is a directory there immutable, see lsattr, or the filesystem read-only\?\): EPERM/;

async function setup(t: Tap): Promise<{ e: Env; d: Driver; base: string; safe(): void }> {
  const e = await env(t);
  const base = await e.base('base', { 'a.txt': 'A' });
  const d = await e.open();
  const safe = () => t.same(usersWithoutMount(e.root), [], 'no mount record without its overlay');
  return { e, d, base, safe };
}

t.test('users/ immutable: Mount and Unmount fail cleanly, the overlay stays while any record does, and all recovers after chattr -i', { skip }, async (t) => {
  const { e, d, base, safe } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  const users = path.join(e.root, 'volumes/v/users');
  chattr(t, '+i', users);
  await t.rejects(d.mount({ Name: 'v', ID: 'b' }), { name: 'DriverError', message: IMMUTABLE }, 'a second Mount cannot record its user');
  safe();
  await t.rejects(d.unmount({ Name: 'v', ID: 'a' }), { name: 'DriverError', message: IMMUTABLE }, 'the last Unmount cannot delete its record');
  t.equal(mountCount(Mountpoint), 1, 'so the overlay stays');
  safe();
  await t.rejects(d.remove({ Name: 'v' }), { name: 'DriverError', message: IMMUTABLE }, 'Remove cannot take the records away');
  t.equal(mountCount(Mountpoint), 1, 'and leaves the overlay alone');
  safe();
  chattr(t, '-i', users);
  await d.unmount({ Name: 'v', ID: 'a' });
  t.equal(mountCount(Mountpoint), 0);
  safe();

  chattr(t, '+i', users);
  await t.rejects(d.mount({ Name: 'v', ID: 'c' }), { name: 'DriverError', message: IMMUTABLE }, 'a first Mount mounts but cannot record');
  t.equal(mountCount(Mountpoint), 1, 'leaving an overlay without users: harmless');
  safe();
  chattr(t, '-i', users);
  await d.mount({ Name: 'v', ID: 'c' });
  t.equal(mountCount(Mountpoint), 1, 'the next Mount reuses it rather than stacking');
  await d.unmount({ Name: 'v', ID: 'c' });
  t.same(await d.remove({ Name: 'v' }), {});
  t.same(mountsUnder(e.root), []);
});

t.test('volumes/ immutable: Create fails leaving nothing, mounts go on, Remove fails cleanly after unmounting, then works after chattr -i', { skip }, async (t) => {
  const { e, d, base, safe } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  chattr(t, '+i', path.join(e.root, 'volumes'));
  await t.rejects(d.create({ Name: 'w', Opts: { base } }), { name: 'DriverError', message: IMMUTABLE });
  t.same(fs.readdirSync(path.join(e.root, 'tmp')), [], 'no half-built volume');
  t.same(await d.list(), { Volumes: [{ Name: 'v' }] });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  fs.writeFileSync(path.join(Mountpoint, 'kept'), 'kept');
  safe();
  await d.unmount({ Name: 'v', ID: 'a' });
  await d.mount({ Name: 'v', ID: 'b' });
  await t.rejects(d.remove({ Name: 'v' }), { name: 'DriverError', message: IMMUTABLE }, 'the rename out of volumes/ fails');
  safe();
  t.match(await d.get({ Name: 'v' }), { Volume: { Status: { mounted: false, users: 0 } } }, 'the volume stays, unmounted, without records');
  t.equal(fs.readFileSync(path.join(e.root, 'volumes/v/upper/kept'), 'utf8'), 'kept', 'with its data');
  chattr(t, '-i', path.join(e.root, 'volumes'));
  t.same(await d.remove({ Name: 'v' }), {});
  t.same(mountsUnder(e.root), []);
});

t.test('trash/ immutable: a first Mount fails before mounting, Remove fails after unmounting without leaving records; both work after chattr -i', { skip }, async (t) => {
  const { e, d, base, safe } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await d.create({ Name: 'vol', Opts: { base, volatile: 'true' } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  await d.unmount({ Name: 'v', ID: 'a' }); // leaves work/ behind, to be replaced by the next first Mount
  await d.mount({ Name: 'vol', ID: 'a' });
  await d.unmount({ Name: 'vol', ID: 'a' });
  const stuck = await d.mount({ Name: 'v', ID: 'held' });
  await d.unmount({ Name: 'v', ID: 'held' });
  // More than the kernel leaves in a workdir (an empty work/ is removed in place): the old work/ must go to the trash.
  fs.writeFileSync(path.join(e.root, 'volumes/v/work/work/stray'), '');
  chattr(t, '+i', path.join(e.root, 'trash'));
  await t.rejects(d.mount({ Name: 'v', ID: 'b' }), { name: 'DriverError', message: IMMUTABLE }, 'the old work/ cannot go to the trash');
  await t.rejects(d.mount({ Name: 'vol', ID: 'b' }), { name: 'DriverError', message: IMMUTABLE }, 'nor a volatile volume\'s last changes');
  t.equal(mountCount(Mountpoint), 0, 'nothing was mounted');
  safe();
  const m = await (async () => {
    chattr(t, '-i', path.join(e.root, 'trash'));
    const r = await d.mount({ Name: 'v', ID: 'b' });
    chattr(t, '+i', path.join(e.root, 'trash'));
    return r;
  })();
  t.equal(m.Mountpoint, stuck.Mountpoint);
  await t.rejects(d.remove({ Name: 'v' }), { name: 'DriverError', message: IMMUTABLE }, 'Remove cannot move the volume to the trash');
  t.equal(mountCount(Mountpoint), 0, 'after it unmounted the volume');
  t.match(await d.get({ Name: 'v' }), { Volume: { Status: { mounted: false, users: 0 } } }, 'whose records it took away first');
  safe();
  chattr(t, '-i', path.join(e.root, 'trash'));
  t.same(await d.unmount({ Name: 'v', ID: 'b' }), {}, 'a late Unmount finds nothing to do');
  t.same(await d.remove({ Name: 'v' }), {});
  t.same(await d.remove({ Name: 'vol' }), {});
  t.same(mountsUnder(e.root), []);
});

t.test('tmp/ immutable: Create fails with a clear message and leaves no volume and no lock file', { skip }, async (t) => {
  const { e, d, base } = await setup(t);
  chattr(t, '+i', path.join(e.root, 'tmp'));
  await t.rejects(d.create({ Name: 'v', Opts: { base } }), { name: 'DriverError', message: IMMUTABLE });
  t.same(await d.list(), { Volumes: [] });
  t.same(fs.readdirSync(path.join(e.root, 'volumes')), []);
});

t.test('a base deleted while unmounted refuses Mount with a clear message; restored, the volume mounts with its changes', async (t) => {
  const { e, d, base, safe } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  fs.writeFileSync(path.join(Mountpoint, 'mine'), 'mine');
  await d.unmount({ Name: 'v', ID: 'a' });
  await fsp.rename(base, `${base}.away`);
  await t.rejects(d.mount({ Name: 'v', ID: 'b' }), { name: 'DriverError', message: new RegExp(`^volume v cannot be mounted: its base ${base} is gone .*: restore it, or remove the volume`) });
  t.equal(mountCount(Mountpoint), 0);
  safe();
  t.match(await d.get({ Name: 'v' }), { Volume: { Status: { base, mounted: false } } }, 'Get still answers');
  await fsp.rename(`${base}.away`, base);
  await d.mount({ Name: 'v', ID: 'b' });
  t.equal(fs.readFileSync(path.join(Mountpoint, 'a.txt'), 'utf8'), 'A');
  t.equal(fs.readFileSync(path.join(Mountpoint, 'mine'), 'utf8'), 'mine', 'the changes survived');
  await d.unmount({ Name: 'v', ID: 'b' });
  safe();
  t.same(mountsUnder(e.root), []);
});

t.test('a mountpoint held busy by a host process: Unmount succeeds leaving an overlay without users, Remove refuses, all recovers once released', async (t) => {
  const { e, d, base, safe } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  const holder = spawn('sleep', ['60'], { cwd: Mountpoint, stdio: 'ignore' });
  e.children.push(holder);
  await new Promise((r) => holder.on('spawn', r));
  t.same(await d.unmount({ Name: 'v', ID: 'a' }), {}, 'dockerd\'s Unmount succeeds');
  t.ok(e.log.has('warn', /a host process holds a file open/));
  t.equal(mountCount(Mountpoint), 1, 'the busy overlay stays');
  t.match(await d.get({ Name: 'v' }), { Volume: { Mountpoint, Status: { mounted: true, users: 0 } } });
  safe();
  await t.rejects(d.remove({ Name: 'v' }), { name: 'DriverError', message: new RegExp(`volume v is in use by process ${holder.pid} \\(sleep\\): a file or directory below .* is open; close it, then remove the volume again`) });
  safe();
  await d.mount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(Mountpoint), 1, 'the next Mount reuses the busy overlay');
  holder.kill('SIGKILL');
  await new Promise((r) => holder.on('exit', r));
  await d.unmount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(Mountpoint), 0);
  t.same(await d.remove({ Name: 'v' }), {});
  safe();
});

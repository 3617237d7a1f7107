// Start-up recovery: each state a crash (SIGKILL between two steps, or a
// reboot) can leave, crafted by hand or through the fault hook, and what the
// next start makes of it.
import t from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Driver } from '../lib/driver.js';
import { mount as sysMount } from '../lib/native.js';
import type { Env } from './helpers/tmp.js';
import { env, mountCount, records as recordsAmong } from './helpers/tmp.js';

type Tap = import('tap').Test;

/** A driver on a fresh root with a boot id file the test controls. */
async function setup(t: Tap, faults?: (p: string) => void | Promise<void>): Promise<{ e: Env; d: Driver; base: string; boot: string; reopen(): Promise<Driver> }> {
  const e = await env(t);
  const boot = path.join(e.dir, 'boot_id');
  await fsp.writeFile(boot, 'boot-1\n');
  const d = await e.open({ bootIdPath: boot, faults });
  const base = await e.base('base', { 'a.txt': 'A' });
  return { e, d, base, boot, reopen: () => e.open({ bootIdPath: boot }) };
}

const crash = (point: string) => (p: string) => {
  if (p === point) throw new Error(`simulated crash at ${point}`);
};

function recovered(e: Env): Record<string, unknown> {
  return e.log.lines.filter((l) => l.msg === 'state root recovered').at(-1)!;
}

/** Waits for the background sweep of the latest start (its log line, not a timer) and returns its report. */
async function swept(e: Env): Promise<Record<string, unknown>> {
  const count = (msg: string) => e.log.lines.filter((l) => l.msg === msg).length;
  await e.log.until(() => count('mount records reconciled') >= count('state root recovered'));
  return e.log.lines.filter((l) => l.msg === 'mount records reconciled').at(-1)!;
}

/** The mount records of a volume on disk; none when users/ is gone. */
function records(e: Env, name: string): string[] {
  const dir = path.join(e.root, 'volumes', name, 'users');
  return fs.existsSync(dir) ? recordsAmong(fs.readdirSync(dir)) : [];
}

/** Index of the first log line with this message about this volume, or -1. */
function lineOf(e: Env, msg: RegExp, volume: string): number {
  return e.log.lines.findIndex((l) => msg.test(l.msg) && l.volume === volume);
}
const STALE = /had users but its overlay is gone/;

t.test('the first start records the kernel boot id before the driver serves, and says it is a first start', async (t) => {
  const { e } = await setup(t);
  t.equal(fs.readFileSync(path.join(e.root, 'boot-id'), 'utf8'), 'boot-1\n', 'written by the time openDriver returns');
  t.match(recovered(e), { firstStart: true, rebooted: false, volumes: 0 });
});

t.test('a record without a mount (the overlay vanished) is reported loudly and cleared', async (t) => {
  const { e, d, base, reopen } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await d.close();
  await fsp.mkdir(path.join(e.root, 'volumes/v/users'));
  await fsp.writeFile(path.join(e.root, 'volumes/v/users/abc'), '2');
  const d2 = await reopen();
  t.match(await d2.get({ Name: 'v' }), { Volume: { Status: { users: 0, mounted: false } } }, 'no users from the first request on');
  t.match(await swept(e), { recordsCleared: 1 });
  t.ok(e.log.has('error', /had users but its overlay is gone/));
  t.same(await fsp.readdir(path.join(e.root, 'volumes/v/users')), []);
  t.match(recovered(e), { rebooted: false });
});

t.test('the sweep of stale records never touches a record a Mount wrote since start', async (t) => {
  const { e, d, base, reopen } = await setup(t);
  const names = Array.from({ length: 20 }, (_, i) => `v${i}`);
  for (const Name of names) await d.create({ Name, Opts: { base } });
  await d.close();
  for (const name of names) {
    await fsp.mkdir(path.join(e.root, 'volumes', name, 'users'));
    await fsp.writeFile(path.join(e.root, 'volumes', name, 'users', 'old'), '1');
  }
  const d2 = await reopen();
  // A Mount on every volume at once: whatever order the sweep takes, each volume meets it before or after its
  // Mount, and the outcome must be the same.
  await Promise.all(names.map((Name) => d2.mount({ Name, ID: 'new' })));
  t.match(await swept(e), { recordsCleared: names.length });
  const mountFirst = names.filter((n) => lineOf(e, /^overlay mounted$/, n) < lineOf(e, STALE, n));
  t.comment(`the sweep reached ${mountFirst.length} of ${names.length} volumes after their Mount`);
  t.ok(mountFirst.length > 0, 'the case this test is about happened: a Mount ran before the sweep reached its volume');
  t.same(
    names.filter((n) => lineOf(e, STALE, n) < 0),
    [],
    'every volume was swept, its stale record reported',
  );
  for (const name of names) {
    t.same(records(e, name), ['new'], `${name}: the stale record went, the new one stayed`);
    t.match(await d2.get({ Name: name }), { Volume: { Status: { mounted: true, users: 1 } } });
  }
  await Promise.all(names.map((Name) => d2.unmount({ Name, ID: 'new' })));
});

t.test('a mount without a record (crash after mounting, before the record) is unmounted at start', async (t) => {
  const { e, d, base, reopen } = await setup(t, crash('mount:after-mount'));
  await d.create({ Name: 'v', Opts: { base } });
  await t.rejects(d.mount({ Name: 'v', ID: 'a' }), { message: /simulated crash at mount:after-mount/ });
  const merged = path.join(e.root, 'volumes/v/merged');
  t.equal(mountCount(merged), 1, 'the crash left the overlay');
  t.notOk(fs.existsSync(path.join(e.root, 'volumes/v/users')), 'and no record');
  await d.close();
  const d2 = await reopen();
  t.equal(mountCount(merged), 0);
  t.match(recovered(e), { unmounted: 1 });
  t.match(await d2.get({ Name: 'v' }), { Volume: { Status: { mounted: false, users: 0 } } });
});

t.test('a crash after the last record is deleted but before the unmount leaves a mount that the next start removes', async (t) => {
  const { e, d, base, reopen } = await setup(t, crash('unmount:after-unrecord'));
  await d.create({ Name: 'v', Opts: { base } });
  await d.mount({ Name: 'v', ID: 'a' });
  await t.rejects(d.unmount({ Name: 'v', ID: 'a' }), { message: /simulated crash/ });
  await d.close();
  const merged = path.join(e.root, 'volumes/v/merged');
  t.equal(mountCount(merged), 1);
  await reopen();
  t.equal(mountCount(merged), 0);
});

t.test('a busy leftover mount survives start as "mounted, no users" and the next Mount reuses it', async (t) => {
  const { e, d, base, reopen } = await setup(t, crash('mount:after-mount'));
  await d.create({ Name: 'v', Opts: { base } });
  await t.rejects(d.mount({ Name: 'v', ID: 'a' }));
  await d.close();
  const merged = path.join(e.root, 'volumes/v/merged');
  const held = await fsp.open(path.join(merged, 'a.txt'), 'r');
  t.teardown(() => held.close().catch(() => {}));
  const d2 = await reopen();
  t.ok(e.log.has('warn', /leftover overlay with no users is busy/));
  t.match(recovered(e), { busy: 1, unmounted: 0 });
  t.match(await d2.get({ Name: 'v' }), { Volume: { Mountpoint: merged, Status: { mounted: true, users: 0 } } });
  await d2.mount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(merged), 1);
  await held.close();
  await d2.unmount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(merged), 0);
});

t.test('a mount with its record survives a daemon restart, and the later Unmount unmounts it', async (t) => {
  const { d, base, reopen } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  await d.close();
  t.equal(mountCount(Mountpoint), 1, 'close does not unmount: containers keep using the volume');
  const d2 = await reopen();
  t.match(await d2.get({ Name: 'v' }), { Volume: { Mountpoint, Status: { mounted: true, users: 1 } } });
  await d2.mount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(Mountpoint), 1);
  await d2.unmount({ Name: 'v', ID: 'a' });
  await d2.unmount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(Mountpoint), 0);
});

t.test('a new boot id clears the records of volumes without an overlay before the first call, and is written down then', async (t) => {
  const { e, d, base, boot, reopen } = await setup(t);
  await d.create({ Name: 'w', Opts: { base } });
  await d.create({ Name: 'never-mounted', Opts: { base } });
  await d.close();
  await fsp.mkdir(path.join(e.root, 'volumes/w/users'));
  await fsp.writeFile(path.join(e.root, 'volumes/w/users/x'), '1');
  await fsp.writeFile(boot, 'boot-2\n');
  const d2 = await reopen();
  t.match(recovered(e), { rebooted: true, recordsCleared: 1 }, 'counted before the first request');
  t.same(records(e, 'w'), [], 'gone by the time openDriver returns');
  t.equal(fs.readFileSync(path.join(e.root, 'boot-id'), 'utf8'), 'boot-2\n', 'written by the time openDriver returns');
  t.match(await d2.get({ Name: 'w' }), { Volume: { Status: { users: 0, mounted: false } } });
  t.notOk(e.log.has('error', /overlay is gone/), 'a reboot is expected to lose mounts: no alarm');
  t.same((await d2.list()).Volumes.map((v) => v.Name).sort(), ['never-mounted', 'w']);
});

t.test('an overlay mounted on merged/ belongs to this boot whatever the boot id says: its records and overlay are kept', async (t) => {
  const { e, d, base, boot, reopen } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  await d.close();
  await fsp.writeFile(boot, 'boot-2\n');
  const d2 = await reopen();
  t.match(recovered(e), { rebooted: true, recordsCleared: 0, unmounted: 0 });
  t.same(records(e, 'v'), ['a']);
  t.equal(mountCount(Mountpoint), 1);
  t.match(await d2.get({ Name: 'v' }), { Volume: { Mountpoint, Status: { users: 1, mounted: true } } });
  await d2.unmount({ Name: 'v', ID: 'a' });
  t.equal(mountCount(Mountpoint), 0);
});

t.test('with an unreadable kernel boot id the mount table alone decides: a live mount keeps its record, a dead one is cleared', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await d.create({ Name: 'w', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  await d.close();
  await fsp.mkdir(path.join(e.root, 'volumes/w/users'));
  await fsp.writeFile(path.join(e.root, 'volumes/w/users/x'), '1');
  const d2 = await e.open({ bootIdPath: path.join(e.dir, 'missing') });
  t.ok(e.log.has('warn', /boot id cannot be read/));
  t.equal(fs.readFileSync(path.join(e.root, 'boot-id'), 'utf8'), 'boot-1\n', 'the recorded boot id is kept');
  t.match(await d2.get({ Name: 'v' }), { Volume: { Mountpoint, Status: { users: 1 } } });
  t.match(await d2.get({ Name: 'w' }), { Volume: { Status: { users: 0 } } });
  t.match(await swept(e), { recordsCleared: 1 });
  t.same(records(e, 'w'), []);
  await d2.unmount({ Name: 'v', ID: 'a' });
});

t.test('a crash before the rename of Create leaves no volume; the next start clears tmp/', async (t) => {
  const { e, d, base, reopen } = await setup(t, crash('create:before-rename'));
  await t.rejects(d.create({ Name: 'v', Opts: { base } }), { name: 'DriverError', message: /create of volume v failed: simulated crash/ });
  t.same(await d.list(), { Volumes: [] });
  await d.close();
  await fsp.mkdir(path.join(e.root, 'tmp/v.0123456789abcdef/upper'), { recursive: true }); // what SIGKILL would leave
  const d2 = await reopen();
  t.same(await fsp.readdir(path.join(e.root, 'tmp')), []);
  t.match(recovered(e), { halfCreated: 1 });
  t.same(await d2.list(), { Volumes: [] });
  t.same(await d2.create({ Name: 'v', Opts: { base } }), {}, 'the name is free');
});

t.test('a crash after Remove renamed the volume away leaves it gone; the next start empties the trash', async (t) => {
  const { e, d, base, reopen } = await setup(t, crash('remove:after-rename'));
  await d.create({ Name: 'v', Opts: { base } });
  await t.rejects(d.remove({ Name: 'v' }), { message: /simulated crash/ });
  t.same(await d.list(), { Volumes: [] });
  await d.close();
  t.equal((await fsp.readdir(path.join(e.root, 'trash'))).length, 1);
  const d2 = await reopen();
  t.same(await d2.list(), { Volumes: [] });
  await d2.close();
  t.same(await fsp.readdir(path.join(e.root, 'trash')), []);
  t.match(recovered(e), { trash: 1 });
});

t.test('a crash after the record of a Mount is harmless: the volume is mounted with its user', async (t) => {
  const { e, d, base, reopen } = await setup(t, crash('mount:after-record'));
  await d.create({ Name: 'v', Opts: { base } });
  await t.rejects(d.mount({ Name: 'v', ID: 'a' }), { message: /mount of volume v failed/ });
  await d.close();
  const d2 = await reopen();
  t.match(await d2.get({ Name: 'v' }), { Volume: { Status: { mounted: true, users: 1 } } });
  await d2.unmount({ Name: 'v', ID: 'a' });
  t.equal(mountCount(path.join(e.root, 'volumes/v/merged')), 0);
});

t.test('stray entries are ignored with a warning: a bad directory name in volumes/, a bad record name, a file', async (t) => {
  const { e, d, base, reopen } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  await d.close();
  await fsp.mkdir(path.join(e.root, 'volumes/.odd dir'));
  await fsp.writeFile(path.join(e.root, 'volumes/afile'), '');
  await fsp.writeFile(path.join(e.root, 'volumes/v/users/.bad id'), '1');
  const d2 = await reopen();
  t.ok(e.log.has('warn', /not a valid volume name/));
  t.ok(e.log.has('warn', /mount record with an invalid name/));
  t.match(await d2.get({ Name: 'v' }), { Volume: { Status: { users: 1 } } });
  t.same(await d2.list(), { Volumes: [{ Name: 'v', Mountpoint }] });
  await d2.unmount({ Name: 'v', ID: 'a' });
  t.equal(mountCount(Mountpoint), 0);
});

t.test('a stale record that cannot be cleared is logged and left for the next start', async (t) => {
  const { e, d, base, reopen } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await d.close();
  await fsp.mkdir(path.join(e.root, 'volumes/v/users/odd'), { recursive: true });
  const d2 = await reopen();
  await swept(e);
  t.ok(e.log.has('warn', /could not clear stale mount records/));
  t.match(await d2.get({ Name: 'v' }), { Volume: { Status: { users: 0 } } });
});

t.test('a volume removed before the sweep reaches it is skipped', async (t) => {
  const { e, d, base, reopen } = await setup(t);
  const names = Array.from({ length: 20 }, (_, i) => `v${i}`);
  for (const Name of names) await d.create({ Name, Opts: { base } });
  await d.close();
  for (const name of names) {
    await fsp.mkdir(path.join(e.root, 'volumes', name, 'users'));
    await fsp.writeFile(path.join(e.root, 'volumes', name, 'users', 'old'), '1'); // the sweep reports each volume it reaches
  }
  const d2 = await reopen();
  // Removes queue on the same in-process queues as the sweep: some volumes go before the sweep reaches them.
  const removed = await Promise.all(names.map((Name) => d2.remove({ Name })));
  t.same(removed, names.map(() => ({})));
  const report = await swept(e);
  const reached = names.filter((n) => lineOf(e, STALE, n) >= 0);
  t.comment(`the sweep reached ${reached.length} of ${names.length} volumes before their Remove`);
  t.ok(reached.length < names.length, 'the case this test is about happened: some volumes were removed before the sweep reached them');
  t.same(reached.filter((n) => lineOf(e, STALE, n) > lineOf(e, /^volume removed$/, n)), [], 'none was swept after its Remove');
  t.match(report, { volumes: names.length, recordsCleared: reached.length });
  t.notOk(e.log.has('warn', /could not clear stale mount records/), 'the removed ones were skipped, not failed on');
  t.same(await d2.list(), { Volumes: [] });
});

t.test('a stack of two leftover mounts on merged/ is fully unmounted at start', async (t) => {
  const { e, d, base, reopen } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await d.close();
  const merged = path.join(e.root, 'volumes/v/merged');
  fs.mkdirSync(merged); // Create leaves it to the first Mount; here a host process made it to mount there
  await sysMount('x', merged, 'tmpfs', 0, 'size=1m');
  await sysMount('x', merged, 'tmpfs', 0, 'size=1m');
  await reopen();
  t.equal(mountCount(merged), 0);
  t.match(recovered(e), { unmounted: 2 });
});

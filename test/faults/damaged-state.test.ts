// Damaged state under the root: a volume.json that is truncated, garbled,
// empty, a directory or missing; a missing upper layer; mount records that
// are not records. The daemon starts, other volumes are unaffected, the
// damaged volume is reported in Get's Status (never an Err: dockerd would
// forget the volume), refuses to mount with a message saying what to do,
// and can be removed.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Driver } from '../../lib/driver.js';
import { call } from '../helpers/client.js';
import type { Env } from '../helpers/tmp.js';
import { env, mountCount } from '../helpers/tmp.js';
import { eventually, mountsUnder, requireBuild, spawnDaemon, usersWithoutMount } from '../helpers/faults.js';

type Tap = import('tap').Test;

/** Creates a healthy volume "ok" and the victim "v" (mounted with ID a when asked), then closes the driver. */
async function prepared(t: Tap, mountedVictim = false): Promise<{ e: Env; base: string }> {
  const e = await env(t);
  const base = await e.base('base', { 'a.txt': 'A' });
  const d = await e.open();
  await d.create({ Name: 'ok', Opts: { base } });
  await d.create({ Name: 'v', Opts: { base } });
  if (mountedVictim) await d.mount({ Name: 'v', ID: 'a' });
  await d.close();
  return { e, base };
}

async function reopened(e: Env): Promise<Driver> {
  const sweeps = () => e.log.lines.filter((l) => l.msg === 'mount records reconciled').length;
  const before = sweeps();
  const d = await e.open();
  await eventually(() => sweeps() > before, 10_000, 'the start-up sweep');
  return d;
}

/** The healthy volume works as ever next to the damaged one. */
async function healthyStillWorks(t: Tap, d: Driver): Promise<void> {
  const { Mountpoint } = await d.mount({ Name: 'ok', ID: 'x' });
  t.equal(fs.readFileSync(path.join(Mountpoint, 'a.txt'), 'utf8'), 'A', 'the other volume mounts and reads');
  await d.unmount({ Name: 'ok', ID: 'x' });
  t.notOk((await d.get({ Name: 'ok' })).Volume.Status?.problems, 'and has no problems');
}

async function damagedButRemovable(t: Tap, e: Env, d: Driver, problem: RegExp, refusal: RegExp): Promise<void> {
  const got = await d.get({ Name: 'v' });
  t.match(got, { Volume: { Name: 'v', Status: { problems: [problem] } } }, 'Get reports the damage in Status');
  await t.rejects(d.mount({ Name: 'v', ID: 'b' }), { name: 'DriverError', message: refusal }, 'Mount refuses with a message saying what to do');
  t.same(usersWithoutMount(e.root), [], 'no record without a mount');
  t.same(await d.list(), { Volumes: [{ Name: 'ok' }, { Name: 'v', ...(got.Volume.Mountpoint ? { Mountpoint: got.Volume.Mountpoint } : {}) }] });
  t.same(await d.remove({ Name: 'v' }), {}, 'the damaged volume can be removed');
  t.same(mountsUnder(path.join(e.root, 'volumes/v')), [], 'and nothing of it stays mounted');
  await healthyStillWorks(t, d);
}

const META_DAMAGE: Array<[string, (meta: string) => Promise<void>, RegExp]> = [
  ['truncated', (m) => fsp.truncate(m, 20), /volume.json is damaged/],
  ['garbled (JSON of the wrong shape)', (m) => fsp.writeFile(m, '{"version":1,"base":7,"volatile":"x"}'), /volume.json has no absolute "base"/],
  ['binary garbage', (m) => fsp.writeFile(m, Buffer.from([0xff, 0x00, 0x7b, 0x22])), /volume.json is damaged/],
  ['empty', (m) => fsp.writeFile(m, ''), /volume.json is damaged/],
  ['a directory', async (m) => (await fsp.rm(m), await fsp.mkdir(m)), /volume.json is a directory, not a regular file/],
  ['missing', (m) => fsp.rm(m), /volume.json does not exist/],
  ['a FIFO', async (m) => (await fsp.rm(m), execFileSync('mkfifo', [m])), /volume.json is a FIFO, not a regular file/],
];

for (const [what, damage, problem] of META_DAMAGE) {
  t.test(`a volume.json that is ${what}: the daemon starts, Get reports it, Mount refuses, Remove works, other volumes are unaffected`, async (t) => {
    const { e } = await prepared(t);
    await damage(path.join(e.root, 'volumes/v/volume.json'));
    const d = await reopened(e);
    await damagedButRemovable(t, e, d, problem, /^volume v cannot be mounted: .*Remove it \(docker volume rm v\) and create it again/);
  });
}

t.test('a missing upper layer: Get reports lost changes, Mount refuses, Remove works, other volumes are unaffected', async (t) => {
  const { e } = await prepared(t);
  await fsp.rm(path.join(e.root, 'volumes/v/upper'), { recursive: true });
  const d = await reopened(e);
  await damagedButRemovable(t, e, d, /upper layer is missing/, /cannot be mounted: the upper layer is missing/);
});

const RECORD_DAMAGE: Array<[string, (users: string) => Promise<void>, RegExp]> = [
  ['garbage content', (u) => fsp.writeFile(path.join(u, 'b'), 'garbage'), /users\/b holds "garbage", not a count/],
  ['a directory instead of a file', (u) => fsp.mkdir(path.join(u, 'b')), /users\/b is a directory, not a regular file/],
  // A FIFO was opened for reading before its type was checked: the start waited for a writer forever.
  ['a FIFO instead of a file', async (u) => execFileSync('mkfifo', [path.join(u, 'b')]), /users\/b is a FIFO, not a regular file/],
  ['a symlink instead of a file', async (u) => fsp.symlink('a', path.join(u, 'b')), /users\/b is a symbolic link, not a regular file/],
  ['an invalid mount ID as its name', (u) => fsp.writeFile(path.join(u, '..bad id'), '1'), /users\/\.\.bad id is not named after a mount ID/],
];

for (const [what, damage, problem] of RECORD_DAMAGE) {
  t.test(`a mount record with ${what} on a mounted volume: reported by Get, Mount refused, Remove unmounts and removes it`, async (t) => {
    const { e } = await prepared(t, true);
    await damage(path.join(e.root, 'volumes/v/users'));
    const d = await reopened(e);
    t.ok(e.log.has('error', /damaged mount records/), 'logged loudly at start');
    await damagedButRemovable(t, e, d, problem, /^volume v cannot be mounted: its mount records are damaged .*Remove it \(docker volume rm v\), or stop ontop, delete those entries/);
  });
}

t.test('users/ that is a file on a mounted volume is damage: the overlay stays, Get reports it, Mount refused, Remove works', async (t) => {
  const { e } = await prepared(t, true);
  const u = path.join(e.root, 'volumes/v/users');
  await fsp.rm(u, { recursive: true });
  await fsp.writeFile(u, 'not a directory');
  const d = await reopened(e);
  t.equal(mountCount(path.join(e.root, 'volumes/v/merged')), 1, 'a live overlay is never taken for one without users');
  await damagedButRemovable(t, e, d, /users\/ cannot be read \(ENOTDIR/, /its mount records are damaged/);
});

t.test('damaged mount records of a volume that is not mounted are stale: files are cleared at start, a directory is reported', async (t) => {
  const { e } = await prepared(t);
  const u = path.join(e.root, 'volumes/v/users');
  await fsp.mkdir(u);
  await fsp.writeFile(path.join(u, 'b'), 'garbage');
  await fsp.writeFile(path.join(u, '..bad id'), '1');
  await fsp.writeFile(path.join(u, '.tmp.c.0123456789abcdef'), '2'); // a record write cut short
  const d = await reopened(e);
  t.same(fs.readdirSync(u), [], 'every stale entry is cleared');
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  await d.unmount({ Name: 'v', ID: 'a' });
  t.equal(mountCount(Mountpoint), 0);
  await d.close();

  await fsp.mkdir(path.join(u, 'odd'));
  const d2 = await reopened(e);
  t.ok(e.log.has('warn', /could not clear stale mount records/));
  await damagedButRemovable(t, e, d2, /users\/odd is a directory, not a regular file/, /its mount records are damaged/);
});

t.test('a record write cut short on a mounted volume never counts: the volume keeps its real users', async (t) => {
  const { e } = await prepared(t, true);
  await fsp.writeFile(path.join(e.root, 'volumes/v/users/.tmp.a.0123456789abcdef'), '2');
  const d = await reopened(e);
  t.match(await d.get({ Name: 'v' }), { Volume: { Status: { users: 1, mounted: true } } });
  t.notOk((await d.get({ Name: 'v' })).Volume.Status?.problems);
  t.same(fs.readdirSync(path.join(e.root, 'volumes/v/users')), ['a'], 'the half-written record is deleted');
  await d.unmount({ Name: 'v', ID: 'a' });
  t.same(mountsUnder(path.join(e.root, 'volumes')), []);
});

t.test('the real daemon starts over a FIFO among the records of a mounted volume and a FIFO as boot-id', async (t) => {
  requireBuild(t);
  const { e } = await prepared(t, true);
  execFileSync('mkfifo', [path.join(e.root, 'volumes/v/users/b')]);
  await fsp.rm(path.join(e.root, 'boot-id'));
  execFileSync('mkfifo', [path.join(e.root, 'boot-id')]);
  const socket = path.join(e.dir, 'x.sock');
  const daemon = spawnDaemon(t, e.root, socket);
  const late = new Promise<string>((r) => setTimeout(() => r('late'), 15_000).unref());
  t.equal(await Promise.race([daemon.ready.then(() => 'ready'), late]), 'ready', 'it listens: nothing in the state root blocks a start');
  t.match((await call(socket, '/VolumeDriver.Get', { Name: 'v' })).json, { Volume: { Status: { mounted: true, users: 2, problems: [/users\/b is a FIFO/] } } });
  t.match((await call(socket, '/VolumeDriver.Mount', { Name: 'v', ID: 'c' })).json, { Err: /its mount records are damaged/ });
  t.equal(mountCount(path.join(e.root, 'volumes/v/merged')), 1);
  t.same((await call(socket, '/VolumeDriver.Remove', { Name: 'v' })).json, {});
  t.ok(fs.statSync(path.join(e.root, 'boot-id')).isFile(), 'the boot id is written over the FIFO');
  daemon.proc.kill('SIGTERM');
  t.equal(await daemon.exited, 0);
});

t.test('the real daemon starts over damaged volumes and serves the healthy ones', async (t) => {
  requireBuild(t);
  const { e, base } = await prepared(t);
  await fsp.writeFile(path.join(e.root, 'volumes/v/volume.json'), '{"vers');
  await fsp.mkdir(path.join(e.root, 'volumes/v/users/odd'), { recursive: true });
  const socket = path.join(e.dir, 'x.sock');
  const daemon = spawnDaemon(t, e.root, socket);
  await daemon.ready;
  t.match((await call(socket, '/VolumeDriver.Get', { Name: 'v' })).json, { Volume: { Name: 'v', Status: { problems: [/damaged/] } } });
  t.match((await call(socket, '/VolumeDriver.Mount', { Name: 'v', ID: 'b' })).json, { Err: /^volume v cannot be mounted/ });
  t.match((await call(socket, '/VolumeDriver.Mount', { Name: 'ok', ID: 'b' })).json, { Mountpoint: path.join(e.root, 'volumes/ok/merged') });
  t.same((await call(socket, '/VolumeDriver.Unmount', { Name: 'ok', ID: 'b' })).json, {});
  t.same((await call(socket, '/VolumeDriver.Remove', { Name: 'v' })).json, {});
  t.same((await call(socket, '/VolumeDriver.Create', { Name: 'v', Opts: { base } })).json, {}, 'the name is free again');
  daemon.proc.kill('SIGTERM');
  t.equal(await daemon.exited, 0);
});

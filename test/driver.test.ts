// The driver's verbs against the real kernel: options, names, Mount/Unmount
// counting, volatile volumes, EBUSY, Remove's in-use checks, damaged state.
import t from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { openDriver } from '../lib/driver.js';
import type { Driver } from '../lib/driver.js';
import { DriverError } from '../lib/errors.js';
import { mount as sysMount, umount2 } from '../lib/native.js';
import { mountId } from './helpers/client.js';
import type { Env } from './helpers/tmp.js';
import { env, mountCount, records } from './helpers/tmp.js';
import { chattrUnsupported } from './helpers/faults.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function setup(t: Tap): Promise<{ e: Env; d: Driver; base: string }> {
  const e = await env(t);
  const d = await e.open();
  const base = await e.base('base', { 'a.txt': 'from base' });
  return { e, d, base };
}
type Tap = import('tap').Test;

/** Everything under the state root but the fixed skeleton: what a refused Create must not leave. */
async function leftovers(e: Env): Promise<string[]> {
  const out: string[] = [];
  for (const d of ['volumes', 'tmp', 'trash']) for (const n of await fsp.readdir(path.join(e.root, d))) out.push(`${d}/${n}`);
  return out;
}

t.test('openDriver creates the state root 0700 with its skeleton and answers Capabilities with local scope', async (t) => {
  const { e, d } = await setup(t);
  t.equal(fs.statSync(e.root).mode & 0o777, 0o700);
  t.same(await d.capabilities(), { Capabilities: { Scope: 'local' } });
  t.same(await d.list(), { Volumes: [] });
  await d.close();
  t.same((await fsp.readdir(e.root)).sort(), ['boot-id', 'daemon.lock', 'tmp', 'trash', 'volumes']);
});

t.test('a second driver on the same state root is refused while the first runs', async (t) => {
  const { e, d } = await setup(t);
  await t.rejects(e.open(), { name: 'DriverError', message: /another ontop process is using the state root/ });
  await d.close();
  await d.close();
  t.ok(await e.open(), 'after close the root is free');
});

t.test('a state root on overlayfs is refused: it cannot hold an upper layer', async (t) => {
  const e = await env(t);
  const dirs = ['l', 'u', 'w', 'm'].map((n) => path.join(e.dir, n));
  for (const x of dirs) await fsp.mkdir(x);
  await sysMount('overlay', dirs[3]!, 'overlay', 0, `lowerdir=${dirs[0]},upperdir=${dirs[1]},workdir=${dirs[2]}`);
  await t.rejects(e.open({ root: path.join(dirs[3]!, 'state') }), { name: 'DriverError', message: /is on overlay, which cannot hold an overlay's upper layer/ });
});

t.test('Create makes a volume that Get, List and Path describe; CreatedAt is RFC 3339', async (t) => {
  const { e, d, base } = await setup(t);
  t.same(await d.create({ Name: 'v', Opts: { base } }), {});
  const got = await d.get({ Name: 'v' });
  t.match(got, {
    Volume: { Name: 'v', Status: { base, volatile: false, mounted: false, users: 0, upper: path.join(e.root, 'volumes/v/upper') } },
  });
  t.notOk('Mountpoint' in got.Volume, 'no Mountpoint while unmounted');
  t.notOk('problems' in got.Volume.Status!);
  t.equal(new Date(got.Volume.CreatedAt!).toISOString(), got.Volume.CreatedAt);
  t.same(await d.list(), { Volumes: [{ Name: 'v' }] });
  t.same(await d.path({ Name: 'v' }), { Mountpoint: '' });
  t.same(JSON.parse(fs.readFileSync(path.join(e.root, 'volumes/v/volume.json'), 'utf8')).options, { base });
});

t.test('Create is idempotent for the same options, even spelled differently, and refuses different ones naming the difference', async (t) => {
  const { e, d, base } = await setup(t);
  await fsp.symlink(base, path.join(e.dir, 'link'));
  const other = await e.base('other');
  await d.create({ Name: 'v', Opts: { base, volatile: 'no' } });
  t.same(await d.create({ Name: 'v', Opts: { base: path.join(e.dir, 'link') } }), {});
  await t.rejects(d.create({ Name: 'v', Opts: { base: other } }), { name: 'DriverError', message: `volume v already exists with other options (base is ${base}, not ${other}): remove it first, or choose another name` });
  await t.rejects(d.create({ Name: 'v', Opts: { base, volatile: 'YES' } }), { message: /volatile is false, not true/ });
});

t.test('every bad option is refused with a message saying what to do, and leaves nothing behind', async (t) => {
  const { e, d, base } = await setup(t);
  await fsp.writeFile(path.join(e.dir, 'file'), '');
  let deep = e.dir;
  while (deep.length < 3900) deep = path.join(deep, 'd'.repeat(200));
  await fsp.mkdir(deep, { recursive: true });
  const cases: Array<[unknown, RegExp]> = [
    [null, /option "base" is required: docker volume create -d ontop -o base=/],
    [{ base, colour: 'red' }, /unknown option "colour": the known options are base, volatile, upper, size/],
    [{ base: 'relative/dir' }, /must be an absolute path/],
    [{ base: path.join(e.dir, 'missing') }, /does not exist on the host/],
    [{ base: path.join(e.dir, 'file') }, /is not a directory/],
    [{ base: e.root }, /inside ontop's state directory/],
    [{ base: path.join(e.root, 'volumes') }, /inside ontop's state directory/],
    [{ base, volatile: 'sometimes' }, /volatile="sometimes" is not understood/],
    [{ base, volatile: 'x'.repeat(5000) }, /option volatile is longer than 4096 bytes/],
    [{ base: base + '/' + 'x'.repeat(300_000) }, /option base is longer than 262144 bytes/],
    [{ base: `${base}::${base}` }, /has an empty layer \(layer 2 of 3\)/],
    [{ base: `${base}:` }, /has an empty layer \(layer 2 of 2\)/],
    [{ base: `${base}:relative/dir` }, /base "relative\/dir" must be an absolute path/],
    [{ base: `${base}:${path.join(e.dir, 'missing')}` }, /base ".*missing" does not exist on the host/],
    [{ base: `${base}:${e.root}` }, /inside ontop's state directory/],
    [{ base: `${base}:${base}` }, /base layers 1 and 2 are the same directory/],
    [{ base: Array(501).fill(base).join(':') }, /base has 501 layers, more than the 500 an overlay can stack/],
    [{ base, upper: 'ssd' }, /option upper="ssd" is not understood: use disk/],
    [{ base, upper: 'tmpfs', volatile: 'false' }, /upper=tmpfs .* cannot be volatile=false/],
    [{ base, size: '0' }, /size="0" is less than 4096 bytes/],
    [{ base, size: '-5m' }, /size="-5m" is not understood: give a whole number of bytes/],
    [{ base, size: '1.5g' }, /size="1.5g" is not understood/],
    [{ base, size: '2000t' }, /more than 1t \* 1024 \(1 PiB\)/],
    [{ base, upper: 'tmpfs', size: '900t' }, /more than this machine's memory/],
    [{ base, size: '64m' }, /option size cannot bound a disk upper on the filesystem of the state root .*: it needs btrfs \(with quotas on\).*Use upper=tmpfs/],
  ];
  for (const [Opts, message] of cases) {
    await t.rejects(d.create({ Name: 'v', Opts: Opts as Record<string, string> }), { name: 'DriverError', message }, String(message));
  }
  t.same(await leftovers(e), []);
  t.same(await d.list(), { Volumes: [] });
  // A base longer than a page of mount options: it reaches the kernel as a descriptor, not as a path.
  await fsp.writeFile(path.join(deep, 'f'), 'deep');
  t.same(await d.create({ Name: 'deep', Opts: { base: deep } }), {});
  const { Mountpoint } = await d.mount({ Name: 'deep', ID: 'a' });
  t.equal(fs.readFileSync(path.join(Mountpoint, 'f'), 'utf8'), 'deep');
  await d.unmount({ Name: 'deep', ID: 'a' });
  t.same(await d.remove({ Name: 'deep' }), {});
});

t.test('a bad name is refused on every verb and nothing is created anywhere', async (t) => {
  const { e, d, base } = await setup(t);
  const bad: unknown[] = ['', '..', '.', '../x', '../../etc', '/abs', 'a/b', 'x\0y', 'é', ' x', 'x'.repeat(10_000), undefined, null, 7];
  for (const Name of bad) {
    const n = Name as string;
    const label = JSON.stringify(Name)?.slice(0, 20);
    await t.rejects(d.create({ Name: n, Opts: { base } }), DriverError, `create ${label}`);
    await t.rejects(d.mount({ Name: n, ID: mountId() }), DriverError, `mount ${label}`);
    await t.rejects(d.unmount({ Name: n, ID: mountId() }), DriverError, `unmount ${label}`);
    await t.rejects(d.remove({ Name: n }), DriverError, `remove ${label}`);
    await t.rejects(d.path({ Name: n }), DriverError, `path ${label}`);
    await t.rejects(d.get({ Name: n }), { name: 'DriverError', message: /volume name/ }, `get ${label}`);
  }
  await t.rejects(d.get(undefined as never), { message: 'volume name must be a string, got undefined' });
  t.same(await leftovers(e), []);
  t.notOk(fs.existsSync(path.join(e.dir, 'etc')) || fs.existsSync(path.join(e.root, 'x')));
});

t.test('verbs on a volume that does not exist are refused as "no such volume" and create no lock file', async (t) => {
  const { e, d } = await setup(t);
  for (const call of [
    () => d.get({ Name: 'ghost' }),
    () => d.path({ Name: 'ghost' }),
    () => d.mount({ Name: 'ghost', ID: mountId() }),
    () => d.unmount({ Name: 'ghost', ID: mountId() }),
    () => d.remove({ Name: 'ghost' }),
  ]) {
    await t.rejects(call(), { name: 'DriverError', message: 'no such volume: ghost (see docker volume ls)' });
  }
  t.same(await leftovers(e), []);
});

t.test('a bad mount ID is refused on Mount and Unmount', async (t) => {
  const { d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await t.rejects(d.mount({ Name: 'v', ID: '../../x' }), { name: 'DriverError', message: /^mount ID/ });
  await t.rejects(d.unmount({ Name: 'v', ID: '' }), { message: /mount ID is empty/ });
});

t.test('base=/ works: the volume sees the host root and writes land in the upper layer', async (t) => {
  const { e, d } = await setup(t);
  await d.create({ Name: 'root', Opts: { base: '/' } });
  const { Mountpoint } = await d.mount({ Name: 'root', ID: 'a' });
  t.ok(fs.existsSync(path.join(Mountpoint, 'etc', 'hostname')) || fs.existsSync(path.join(Mountpoint, 'etc')));
  fs.writeFileSync(path.join(Mountpoint, 'ontop-written-in-volume'), 'x');
  t.notOk(fs.existsSync('/ontop-written-in-volume'), 'the host root is untouched');
  t.ok(fs.existsSync(path.join(e.root, 'volumes/root/upper/ontop-written-in-volume')));
  await d.unmount({ Name: 'root', ID: 'a' });
});

t.test('Mount shares one overlay between users, counts a repeated ID, and the last Unmount unmounts', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const merged = path.join(e.root, 'volumes/v/merged');
  t.same(await d.mount({ Name: 'v', ID: 'a' }), { Mountpoint: merged });
  t.equal(fs.readFileSync(path.join(merged, 'a.txt'), 'utf8'), 'from base');
  fs.writeFileSync(path.join(merged, 'a.txt'), 'changed');
  t.equal(fs.readFileSync(path.join(base, 'a.txt'), 'utf8'), 'from base', 'the base never changes');
  t.same(await d.mount({ Name: 'v', ID: 'b' }), { Mountpoint: merged });
  t.same(await d.mount({ Name: 'v', ID: 'a' }), { Mountpoint: merged }, 'the same ID again (docker cp)');
  t.equal(mountCount(merged), 1, 'one overlay for three uses');
  t.equal(fs.readFileSync(path.join(e.root, 'volumes/v/users/a'), 'utf8'), '2');
  t.match(await d.get({ Name: 'v' }), { Volume: { Mountpoint: merged, Status: { mounted: true, users: 3 } } });
  t.same(await d.list(), { Volumes: [{ Name: 'v', Mountpoint: merged }] });
  t.same(await d.path({ Name: 'v' }), { Mountpoint: merged });
  await d.unmount({ Name: 'v', ID: 'a' });
  await d.unmount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(merged), 1, 'still mounted: ID a has one use left');
  t.same(records(await fsp.readdir(path.join(e.root, 'volumes/v/users'))), ['a']);
  await d.unmount({ Name: 'v', ID: 'a' });
  t.equal(mountCount(merged), 0, 'the last Unmount unmounted');
  t.same(records(await fsp.readdir(path.join(e.root, 'volumes/v/users'))), []);
  t.same(await d.unmount({ Name: 'v', ID: 'a' }), {}, 'Unmount of an unknown ID succeeds');
  t.ok(e.log.has('warn', /no record/));
  t.match(await d.get({ Name: 'v' }), { Volume: { Status: { mounted: false, users: 0 } } });
  const again = await d.mount({ Name: 'v', ID: 'c' });
  t.equal(fs.readFileSync(path.join(again.Mountpoint, 'a.txt'), 'utf8'), 'changed', 'a non-volatile volume keeps its changes');
  t.same(fs.readdirSync(path.join(e.root, 'volumes/v/work')), ['work'], 'a fresh workdir holds only the overlay\'s own work/');
  await d.unmount({ Name: 'v', ID: 'c' });
});

t.test('the volume root takes the base root\'s owner and mode', async (t) => {
  const { d, base } = await setup(t);
  await fsp.chown(base, 1000, 1001);
  await fsp.chmod(base, 0o750);
  await d.create({ Name: 'v', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  const st = fs.statSync(Mountpoint);
  t.same([st.uid, st.gid, st.mode & 0o777], [1000, 1001, 0o750]);
  await d.unmount({ Name: 'v', ID: 'a' });
});

t.test('a volatile volume shares changes while used, keeps them on disk until the next first Mount, then starts clean', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base, volatile: 'true' } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  await d.mount({ Name: 'v', ID: 'b' });
  fs.writeFileSync(path.join(Mountpoint, 'new.txt'), 'n');
  await d.unmount({ Name: 'v', ID: 'a' });
  t.ok(fs.existsSync(path.join(Mountpoint, 'new.txt')), 'shared while a user remains');
  await d.unmount({ Name: 'v', ID: 'b' });
  const upper = path.join(e.root, 'volumes/v/upper');
  t.ok(fs.existsSync(path.join(upper, 'new.txt')), 'after the last use the changes stay on disk for an operator');
  t.match(await d.get({ Name: 'v' }), { Volume: { Status: { volatile: true, lastChanges: upper } } }, 'inspect says where the last changes are');
  await d.mount({ Name: 'v', ID: 'c' });
  t.notOk(fs.existsSync(path.join(Mountpoint, 'new.txt')), 'the next first user starts from the base');
  t.same(fs.readdirSync(Mountpoint), ['a.txt']);
  t.notOk('lastChanges' in (await d.get({ Name: 'v' })).Volume.Status!);
  await d.unmount({ Name: 'v', ID: 'c' });
  await d.close();
  t.same(await fsp.readdir(path.join(e.root, 'trash')), [], 'the old upper and workdirs were deleted');
});

t.test('Unmount meeting EBUSY keeps the volume consistent, and the next Mount reuses the leftover overlay', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  const held = await fsp.open(path.join(Mountpoint, 'held'), 'w');
  t.teardown(() => held.close().catch(() => {}));
  t.same(await d.unmount({ Name: 'v', ID: 'a' }), {});
  t.ok(e.log.has('warn', /holds a file open/));
  t.equal(mountCount(Mountpoint), 1, 'the overlay stays');
  t.same(records(await fsp.readdir(path.join(e.root, 'volumes/v/users'))), [], 'the record is gone');
  t.match(await d.get({ Name: 'v' }), { Volume: { Mountpoint, Status: { mounted: true, users: 0 } } });
  await d.mount({ Name: 'v', ID: 'b' });
  t.ok(e.log.has('info', /reusing the overlay/));
  t.equal(mountCount(Mountpoint), 1, 'never a second overlay');
  await held.close();
  await d.unmount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(Mountpoint), 0);
});

t.test('for a volatile volume the next Mount detaches a busy leftover and mounts afresh', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base, volatile: '1' } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  const held = await fsp.open(path.join(Mountpoint, 'held'), 'w');
  t.teardown(() => held.close().catch(() => {}));
  await d.unmount({ Name: 'v', ID: 'a' });
  t.equal(mountCount(Mountpoint), 1);
  await d.mount({ Name: 'v', ID: 'b' });
  t.ok(e.log.has('warn', /detaching a busy leftover mount/));
  t.equal(mountCount(Mountpoint), 1, 'exactly one overlay');
  t.same(fs.readdirSync(Mountpoint), ['a.txt'], 'a fresh view');
  await held.write('still works');
  await d.unmount({ Name: 'v', ID: 'b' });
});

t.test('a first Mount reads the mount table only when something may be on merged/', async (t) => {
  const e = await env(t);
  const base = await e.base('base', { 'a.txt': 'from base' });
  const real = await import('../lib/mountinfo.js');
  let reads = 0;
  const counting = { ...real, readMountinfo: (...args: Parameters<typeof real.readMountinfo>) => (reads++, real.readMountinfo(...args)) };
  // The mounter reads the table at a first Mount; recovery reads it once at start.
  const { openDriver } = await t.mockImport<typeof import('../lib/driver.js')>('../lib/driver.js', {
    '../lib/mounter.js': await t.mockImport('../lib/mounter.js', { '../lib/mountinfo.js': counting }),
    '../lib/recovery.js': await t.mockImport('../lib/recovery.js', { '../lib/mountinfo.js': counting }),
  });
  const d = await openDriver({ root: e.root, logger: e.log.logger });
  t.teardown(() => d.close());
  const merged = path.join(e.root, 'volumes/v/merged');
  await d.create({ Name: 'v', Opts: { base } });
  const atStart = reads;
  await d.mount({ Name: 'v', ID: 'a' });
  t.equal(reads - atStart, 0, 'not at the first Mount after Create: merged/ did not exist yet');
  t.same(fs.readdirSync(merged), ['a.txt']);
  await d.unmount({ Name: 'v', ID: 'a' });
  await d.mount({ Name: 'v', ID: 'b' });
  t.equal(reads - atStart, 0, 'not when merged/ is the bare directory the daemon unmounted');
  await d.unmount({ Name: 'v', ID: 'b' });
  await sysMount('ontop-test', merged, 'tmpfs', 0, 'size=1m');
  await d.mount({ Name: 'v', ID: 'c' });
  t.equal(reads - atStart, 1, 'but when something was mounted there meanwhile');
  t.equal(mountCount(merged), 1, 'which was detached, not stacked on');
  t.same(fs.readdirSync(merged), ['a.txt']);
  await d.unmount({ Name: 'v', ID: 'c' });
  fs.rmdirSync(merged);
  await d.mount({ Name: 'v', ID: 'd' });
  t.equal(reads - atStart, 1, 'nor when merged/ was deleted by hand');
  t.same(fs.readdirSync(merged), ['a.txt'], 'made again and mounted');
  await d.unmount({ Name: 'v', ID: 'd' });
  const before = reads;
  t.same(await d.remove({ Name: 'v' }), {});
  t.equal(reads - before, 0, 'nor by Remove of a volume whose merged/ is bare');
  await d.create({ Name: 'w', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'w', ID: 'a' });
  const held = fs.openSync(path.join(Mountpoint, 'a.txt'), 'r');
  await d.unmount({ Name: 'w', ID: 'a' }); // EBUSY: the overlay stays, without users
  fs.closeSync(held);
  t.same(await d.remove({ Name: 'w' }), {});
  t.equal(reads - before, 1, 'but by Remove of one whose overlay stayed mounted');
  t.equal(mountCount(Mountpoint), 0);
});

t.test('a first Mount with a foreign mount on merged/ detaches it rather than stacking', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const merged = path.join(e.root, 'volumes/v/merged');
  t.notOk(fs.existsSync(merged), 'Create leaves merged/ to the first Mount');
  fs.mkdirSync(merged); // as a host process that mounts there would
  await sysMount('ontop-test', merged, 'tmpfs', 0, 'size=1m');
  await d.mount({ Name: 'v', ID: 'a' });
  t.equal(mountCount(merged), 1);
  t.same(fs.readdirSync(merged), ['a.txt']);
  await d.unmount({ Name: 'v', ID: 'a' });
});

t.test('a foreign mount on merged/ after an earlier use, even a bind of the same filesystem, is still found and detached', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const merged = path.join(e.root, 'volumes/v/merged');
  await d.mount({ Name: 'v', ID: 'a' });
  await d.unmount({ Name: 'v', ID: 'a' });
  const other = path.join(e.root, 'other');
  await fsp.mkdir(other);
  execFileSync('mount', ['--bind', other, merged]);
  await d.mount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(merged), 1, 'detached, not stacked');
  t.same(fs.readdirSync(merged), ['a.txt']);
  await d.unmount({ Name: 'v', ID: 'b' });
  await sysMount('ontop-test', merged, 'tmpfs', 0, 'size=1m');
  await d.mount({ Name: 'v', ID: 'c' });
  t.equal(mountCount(merged), 1);
  await d.unmount({ Name: 'v', ID: 'c' });
  await fsp.rmdir(merged); // an admin deleted it
  await d.mount({ Name: 'v', ID: 'd' });
  t.equal(mountCount(merged), 1, 'made again and mounted');
  await d.unmount({ Name: 'v', ID: 'd' });
});

t.test('a workdir holding more than the kernel leaves is set aside whole at the next first Mount', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await d.mount({ Name: 'v', ID: 'a' });
  await d.unmount({ Name: 'v', ID: 'a' });
  const work = path.join(e.root, 'volumes/v/work');
  t.same(fs.readdirSync(work), ['work'], 'the kernel leaves an empty work/ in the workdir');
  await fsp.writeFile(path.join(work, 'stray'), 'x');
  await d.mount({ Name: 'v', ID: 'b' });
  t.notOk(fs.existsSync(path.join(work, 'stray')), 'the workdir is fresh');
  await d.unmount({ Name: 'v', ID: 'b' });
  await d.mount({ Name: 'v', ID: 'c' });
  t.same(fs.readdirSync(work), ['work'], 'reused in place when only the kernel\'s work/ was left');
  await d.unmount({ Name: 'v', ID: 'c' });
  await d.close();
  t.same(await fsp.readdir(path.join(e.root, 'trash')), [], 'the old workdir was deleted');
});

t.test('a volume.json damaged while the daemon runs is read again, and refused, at the next first Mount', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await d.mount({ Name: 'v', ID: 'a' });
  await d.unmount({ Name: 'v', ID: 'a' });
  fs.writeFileSync(path.join(e.root, 'volumes/v/volume.json'), '{"version":1,"ba');
  await t.rejects(d.mount({ Name: 'v', ID: 'b' }), { message: /^volume v cannot be mounted: volume.json is damaged/ });
  t.same(await d.remove({ Name: 'v' }), {});
});

t.test('a volume.json deleted while the daemon runs is missed, and refused, at the next first Mount', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await d.mount({ Name: 'v', ID: 'a' });
  await d.unmount({ Name: 'v', ID: 'a' });
  fs.rmSync(path.join(e.root, 'volumes/v/volume.json'));
  await t.rejects(d.mount({ Name: 'v', ID: 'b' }), { message: /^volume v cannot be mounted: volume.json does not exist/ });
  t.same(await d.remove({ Name: 'v' }), {});
});

t.test('a Mount finding its shared overlay unmounted by hand mounts it again', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  await umount2(Mountpoint, 0);
  await d.mount({ Name: 'v', ID: 'b' });
  t.ok(e.log.has('error', /has users but its overlay is gone/));
  t.equal(mountCount(Mountpoint), 1);
  await d.unmount({ Name: 'v', ID: 'a' });
  await d.unmount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(Mountpoint), 0);
});

t.test('the last Unmount of an overlay already gone succeeds with a warning', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  await umount2(Mountpoint, 0);
  t.same(await d.unmount({ Name: 'v', ID: 'a' }), {});
  t.ok(e.log.has('warn', /already unmounted/));
  t.match(await d.get({ Name: 'v' }), { Volume: { Status: { mounted: false } } });
});

t.test('an unexpected failure is logged with details and reported in words', async (t) => {
  const e = await env(t);
  const base = await e.base();
  let breakMount = false;
  const d = await e.open({
    faults: async (p) => {
      if (p === 'unmount:after-unrecord') {
        await umount2(path.join(e.root, 'volumes/v/merged'), 0);
        await fsp.rmdir(path.join(e.root, 'volumes/v/merged'));
      }
      if (p === 'mount:before-mount' && breakMount) await fsp.rmdir(path.join(e.root, 'volumes/v/merged'));
    },
  });
  await d.create({ Name: 'v', Opts: { base } });
  await d.mount({ Name: 'v', ID: 'a' });
  await t.rejects(d.unmount({ Name: 'v', ID: 'a' }), { name: 'DriverError', message: /^unmount of volume v failed: ENOENT: no such file or directory, umount2/ });
  t.ok(e.log.lines.some((l) => l.level === 'error' && l.msg === 'unmount failed' && l.code === 'ENOENT' && typeof l.stack === 'string'));
  breakMount = true;
  await t.rejects(d.mount({ Name: 'v', ID: 'b' }), { name: 'DriverError', message: /volume v cannot be mounted: ENOENT/ }, 'a kernel refusal to mount is reported in words');
});

t.test('Remove deletes the volume at once and its tree in the background, leaving no lock file', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  fs.writeFileSync(path.join(Mountpoint, 'x'), 'x');
  await d.unmount({ Name: 'v', ID: 'a' });
  t.same(await d.remove({ Name: 'v' }), {});
  t.same(await d.list(), { Volumes: [] });
  await t.rejects(d.get({ Name: 'v' }), { message: /no such volume/ });
  await d.close();
  t.same(await leftovers(e), []);
  t.equal(fs.readFileSync(path.join(base, 'a.txt'), 'utf8'), 'from base');
});

t.test('Remove unmounts a volume whose mount records were left by a crash', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  t.same(await d.remove({ Name: 'v' }), {});
  t.equal(mountCount(Mountpoint), 0);
  t.ok(e.log.has('warn', /still had mount records/));
});

t.test('Remove is refused while a host process holds a file open in the volume, and the volume stays usable', async (t) => {
  const { d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  const held = await fsp.open(path.join(Mountpoint, 'a.txt'), 'r');
  t.teardown(() => held.close().catch(() => {}));
  await t.rejects(d.remove({ Name: 'v' }), { name: 'DriverError', message: new RegExp(`volume v is in use by process ${process.pid} \\([^)]+\\): a file or directory below .* is open; close it`) });
  t.equal(mountCount(Mountpoint), 1);
  t.match(await d.get({ Name: 'v' }), { Volume: { Status: { mounted: true, users: 1 } } });
  await held.close();
  t.same(await d.remove({ Name: 'v' }), {});
});

/** Waits until the child runs in a mount namespace of its own (unshare done) that shows `point`. */
async function waitForMount(pid: number, point: string): Promise<void> {
  const ours = fs.readlinkSync('/proc/self/ns/mnt');
  for (let i = 0; i < 300; i++) {
    try {
      if (fs.readlinkSync(`/proc/${pid}/ns/mnt`) !== ours && fs.readFileSync(`/proc/${pid}/mountinfo`, 'utf8').includes(point)) return;
    } catch {}
    await sleep(10);
  }
  throw new Error('the child never showed the mount in a namespace of its own');
}

t.test('Remove is refused while the overlay is still mounted in another mount namespace', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  await d.unmount({ Name: 'v', ID: 'a' });
  await d.mount({ Name: 'v', ID: 'b' });
  const child = spawn('unshare', ['-m', '--propagation', 'private', 'sleep', '30'], { stdio: 'ignore' });
  e.children.push(child);
  await waitForMount(child.pid!, Mountpoint);
  await t.rejects(d.remove({ Name: 'v' }), { name: 'DriverError', message: new RegExp(`volume v is in use: its overlay is still mounted in another mount namespace \\(process ${child.pid} \\(sleep\\)\\)`) });
  t.equal(mountCount(Mountpoint), 1, 'our overlay was left alone');
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  t.same(await d.remove({ Name: 'v' }), {});
});

t.test('a copy that our unmount removes by propagation (a slave namespace) does not block Remove', async (t) => {
  const e = await env(t);
  const shared = path.join(e.dir, 'shared');
  await fsp.mkdir(shared);
  execFileSync('mount', ['--bind', shared, shared]);
  execFileSync('mount', ['--make-shared', shared]);
  const d = await e.open({ root: path.join(shared, 'root') });
  const base = await e.base();
  await d.create({ Name: 'v', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  const child = spawn('unshare', ['-m', '--propagation', 'slave', 'sleep', '30'], { stdio: 'ignore' });
  e.children.push(child);
  await waitForMount(child.pid!, Mountpoint);
  t.same(await d.remove({ Name: 'v' }), {});
  t.notOk(fs.readFileSync(`/proc/${child.pid}/mountinfo`, 'utf8').includes(Mountpoint), 'the slave copy went with ours');
});

t.test('Get shows a createdAt written in another RFC 3339 form (by hand, or an older ontop) as toISOString does', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await d.close();
  const file = path.join(e.root, 'volumes/v/volume.json');
  fs.writeFileSync(file, JSON.stringify({ ...JSON.parse(fs.readFileSync(file, 'utf8')), createdAt: '2024-01-02T04:04:05+01:00' }));
  const d2 = await e.open();
  t.equal((await d2.get({ Name: 'v' })).Volume.CreatedAt, '2024-01-02T03:04:05.000Z');
  t.equal((await d2.get({ Name: 'v' })).Volume.CreatedAt, '2024-01-02T03:04:05.000Z', 'the same from memory');
  t.match(JSON.parse(fs.readFileSync(file, 'utf8')), { createdAt: '2024-01-02T04:04:05+01:00' }, 'volume.json itself is left as it was');
  await d2.close();
});

t.test('a damaged volume.json is reported by Get (never an Err), refused by Mount, and the volume can be removed', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await d.close();
  fs.writeFileSync(path.join(e.root, 'volumes/v/volume.json'), '{"version":1,"ba');
  const d2 = await e.open();
  const got = await d2.get({ Name: 'v' });
  t.match(got, { Volume: { Name: 'v', Status: { mounted: false, users: 0, problems: [/volume.json is damaged/] } } });
  t.notOk('CreatedAt' in got.Volume, 'no CreatedAt rather than a wrong one');
  await t.rejects(d2.mount({ Name: 'v', ID: 'a' }), { name: 'DriverError', message: /^volume v cannot be mounted: volume.json is damaged .*Remove it \(docker volume rm v\) and create it again/ });
  await t.rejects(d2.create({ Name: 'v', Opts: { base } }), { message: /already exists but is damaged/ });
  t.same(await d2.remove({ Name: 'v' }), {});
});

t.test('a volume whose upper layer is missing is reported by Get and refused by Mount', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await d.close();
  await fsp.rm(path.join(e.root, 'volumes/v/upper'), { recursive: true });
  const d2 = await e.open();
  t.match(await d2.get({ Name: 'v' }), { Volume: { Status: { problems: [/upper layer is missing/] } } });
  await t.rejects(d2.mount({ Name: 'v', ID: 'a' }), { message: /cannot be mounted: the upper layer is missing/ });
  await fsp.writeFile(path.join(e.root, 'volumes/v/upper'), '');
  await t.rejects(d2.mount({ Name: 'v', ID: 'a' }), { message: /upper .* is not a directory/ });
});

t.test('a volatile volume whose upper layer is missing gets a fresh one at Mount', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base, volatile: 'yes' } });
  await fsp.rm(path.join(e.root, 'volumes/v/upper'), { recursive: true });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  t.same(fs.readdirSync(Mountpoint), ['a.txt']);
  await d.unmount({ Name: 'v', ID: 'a' });
});

t.test('Mount is refused with a clear message when the base vanished, was replaced by a file, or now resolves elsewhere', async (t) => {
  const { e, d } = await setup(t);
  const gone = await e.base('gone');
  const link = await e.base('target');
  await fsp.symlink(link, path.join(e.dir, 'via'));
  await d.create({ Name: 'gone', Opts: { base: gone } });
  await d.create({ Name: 'file', Opts: { base: await e.base('file') } });
  await d.create({ Name: 'moved', Opts: { base: link } });
  await fsp.rmdir(gone);
  await fsp.rmdir(path.join(e.dir, 'file'));
  await fsp.writeFile(path.join(e.dir, 'file'), '');
  await fsp.rename(link, path.join(e.dir, 'elsewhere'));
  await fsp.symlink(path.join(e.dir, 'elsewhere'), link);
  await t.rejects(d.mount({ Name: 'gone', ID: 'a' }), { message: new RegExp(`volume gone cannot be mounted: its base ${gone} is gone .*restore it, or remove the volume`) });
  await t.rejects(d.mount({ Name: 'file', ID: 'a' }), { message: /is no longer a directory/ });
  await t.rejects(d.mount({ Name: 'moved', ID: 'a' }), { message: /now resolves to .*elsewhere \(a symlink changed\)/ });
  t.same(await d.list(), { Volumes: [{ Name: 'gone' }, { Name: 'file' }, { Name: 'moved' }] }, 'nothing mounted');
});

t.test('after close, changing verbs are refused while Get, List and Path keep answering', async (t) => {
  const { d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await d.close();
  await t.rejects(d.mount({ Name: 'v', ID: 'a' }), { name: 'DriverError', message: /shutting down/ });
  await t.rejects(d.create({ Name: 'w', Opts: { base } }), { message: /shutting down/ });
  t.match(await d.get({ Name: 'v' }), { Volume: { Name: 'v' } });
  t.same(await d.list(), { Volumes: [{ Name: 'v' }] });
  t.same(await d.path({ Name: 'v' }), { Mountpoint: '' });
});

t.test('with allowBases, a base outside them is refused at Create', async (t) => {
  const e = await env(t);
  const allowed = await e.base('allowed');
  const inside = await e.base('allowed/in');
  const outside = await e.base('outside');
  const d = await e.open({ allowBases: [allowed] });
  await d.create({ Name: 'in', Opts: { base: inside } });
  await t.rejects(d.create({ Name: 'out', Opts: { base: outside } }), { message: /outside the allowed base directories/ });
});

t.test('with a hostRoot, bases are host paths: Status shows the host path and the kernel gets the local one', async (t) => {
  const e = await env(t);
  const host = await e.base('host');
  await fsp.mkdir(path.join(host, 'srv/site'), { recursive: true });
  await fsp.writeFile(path.join(host, 'srv/site/index.html'), 'hi');
  await fsp.symlink('/srv/site', path.join(host, 'srv/link'));
  const d = await e.open({ hostRoot: host });
  await d.create({ Name: 'v', Opts: { base: '/srv/link' } });
  t.match(await d.get({ Name: 'v' }), { Volume: { Status: { base: '/srv/site' } } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  t.same(fs.readdirSync(Mountpoint), ['index.html']);
  await d.unmount({ Name: 'v', ID: 'a' });
  await t.rejects(d.create({ Name: 'w', Opts: { base: '/nope' } }), { message: /does not exist on the host/ });
});

t.test('a start-up recovery that fails releases the state root for the next try', { skip: chattrUnsupported() }, async (t) => {
  const e = await env(t);
  await (await e.open()).close();
  const stuck = path.join(e.root, 'tmp/v.1/f');
  await fsp.mkdir(path.dirname(stuck), { recursive: true });
  await fsp.writeFile(stuck, '');
  execFileSync('chattr', ['+i', stuck]);
  t.teardown(() => {
    if (fs.existsSync(stuck)) execFileSync('chattr', ['-i', stuck]);
  });
  await t.rejects(e.open(), Error);
  execFileSync('chattr', ['-i', stuck]);
  t.ok(await e.open());
});

t.test('Remove copes with an overlay unmounted by hand under it, and reports any other unmount failure in words', async (t) => {
  const e = await env(t);
  const base = await e.base();
  let also = async (): Promise<void> => {};
  const d = await e.open({
    faults: async (p) => {
      if (p !== 'remove:before-unmount') return;
      await umount2(path.join(e.root, 'volumes/v/merged'), 0);
      await also();
    },
  });
  await d.create({ Name: 'v', Opts: { base } });
  await d.mount({ Name: 'v', ID: 'a' });
  t.same(await d.remove({ Name: 'v' }), {}, 'EINVAL: already gone');
  await d.create({ Name: 'v', Opts: { base } });
  await d.mount({ Name: 'v', ID: 'a' });
  also = () => fsp.rmdir(path.join(e.root, 'volumes/v/merged'));
  await t.rejects(d.remove({ Name: 'v' }), { name: 'DriverError', message: /^remove of volume v failed: ENOENT/ });
});

t.test('a Mount queued behind the Remove of its volume is refused and leaves no lock file', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const removing = d.remove({ Name: 'v' });
  const mounting = d.mount({ Name: 'v', ID: 'a' });
  await removing;
  await t.rejects(mounting, { name: 'DriverError', message: /no such volume: v/ });
  await d.close();
  t.same(await leftovers(e), []);
});

t.test('openDriver makes a missing state root with parents', async (t) => {
  const e = await env(t);
  const d = await openDriver({ root: path.join(e.dir, 'a/b/root'), logger: e.log.logger });
  t.ok(fs.statSync(path.join(e.dir, 'a/b/root/volumes')).isDirectory());
  await d.close();
});

// What the state root can throw at the daemon besides a clean file: files
// that cannot be read, records that cannot be unlinked, a boot-id that is a
// directory, records the kernel will not let go after a reboot, and a Create
// whose undo fails too. Each is reported, and memory follows the disk.
import t from 'tap';
import net from 'node:net';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { readSmallFile } from '../lib/files.js';
import { TMP_RECORD, countRecords, readRecords } from '../lib/records.js';
import { chattr, chattrUnsupported } from './helpers/faults.js';
import { env } from './helpers/tmp.js';

t.test('readSmallFile says in words why a file cannot be read, never throwing', async (t) => {
  const e = await env(t);
  const file = path.join(e.dir, 'f');
  fs.writeFileSync(file, 'x');
  t.match(readSmallFile(path.join(file, 'below')), { problem: /^cannot be read \(ENOTDIR/ }, 'a path through a file');
  t.match(readSmallFile('/proc/self/mem'), { problem: /^cannot be read \(EIO/ }, 'a regular file whose read fails');
  const sock = path.join(e.dir, 's.sock');
  const server = net.createServer().listen(sock);
  await new Promise((r) => server.once('listening', r));
  t.teardown(() => server.close());
  t.match(readSmallFile(sock), { problem: /^cannot be read \(ENXIO/ }, 'a socket is refused by open itself');
  t.match(readSmallFile(file), { text: 'x', stamp: /^\d+:\d+:1:/ });
});

t.test('a half-written record that is no file is left alone and never counts; countRecords of a non-directory is 0', async (t) => {
  const e = await env(t);
  const users = path.join(e.dir, 'users');
  fs.mkdirSync(path.join(users, `${TMP_RECORD}x.0123456789abcdef`), { recursive: true });
  fs.writeFileSync(path.join(users, 'a'), '2');
  t.same(readRecords(users), { users: new Map([['a', 2]]), damaged: [] });
  t.ok(fs.existsSync(path.join(users, `${TMP_RECORD}x.0123456789abcdef`)), 'a directory is not unlinked');
  t.equal(countRecords(users), 1, 'half-written entries do not count');
  t.equal(countRecords(path.join(users, 'a')), 0);
});

t.test('a boot-id that is a directory is taken as missing, and a boot id that cannot be written does not stop the start', async (t) => {
  const e = await env(t);
  const boot = path.join(e.dir, 'boot_id');
  fs.writeFileSync(boot, 'boot-1\n');
  await (await e.open({ bootIdPath: boot })).close();
  fs.rmSync(path.join(e.root, 'boot-id'));
  fs.mkdirSync(path.join(e.root, 'boot-id', 'x'), { recursive: true });
  const d = await e.open({ bootIdPath: boot });
  t.ok(e.log.has('warn', /a boot id file is damaged; taken as missing/));
  t.ok(e.log.has('warn', /could not record the boot id/));
  t.match(e.log.lines.filter((l) => l.msg === 'state root recovered').at(-1), { firstStart: true });
  t.same(await d.list(), { Volumes: [] }, 'and it serves');
});

const noChattr = chattrUnsupported();

t.test('records of the last boot that cannot be set aside are logged; the start goes on', { skip: noChattr }, async (t) => {
  const e = await env(t);
  const boot = path.join(e.dir, 'boot_id');
  fs.writeFileSync(boot, 'boot-1\n');
  const d = await e.open({ bootIdPath: boot });
  await d.create({ Name: 'v', Opts: { base: await e.base() } });
  await d.close();
  const dir = path.join(e.root, 'volumes/v');
  fs.mkdirSync(path.join(dir, 'users'));
  fs.writeFileSync(path.join(dir, 'users', 'old'), '1');
  fs.writeFileSync(boot, 'boot-2\n');
  chattr(t, '+i', dir);
  const d2 = await e.open({ bootIdPath: boot });
  t.ok(e.log.has('warn', /could not clear the mount records of the last boot/));
  t.match(await d2.get({ Name: 'v' }), { Volume: { Status: { users: 0 } } }, 'they never count as users');
  chattr(t, '-i', dir);
});

t.test('a Create whose undo fails too keeps the volume, known in memory as on disk', { skip: noChattr }, async (t) => {
  const e = await env(t);
  const base = await e.base();
  const d = await e.open({
    faults: (p) => {
      if (p === 'create:after-rename') throw Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
    },
  });
  chattr(t, '+i', path.join(e.root, 'trash'));
  await t.rejects(d.create({ Name: 'v', Opts: { base } }), { name: 'DriverError', message: /create of volume v failed: EIO/ });
  t.ok(e.log.has('error', /could not take back a volume whose creation failed after its rename/));
  chattr(t, '-i', path.join(e.root, 'trash'));
  t.same(fs.readdirSync(path.join(e.root, 'volumes')), ['v'], 'on disk');
  t.match(await d.get({ Name: 'v' }), { Volume: { Name: 'v', Status: { base } } }, 'and in memory, whole');
  t.same(await d.remove({ Name: 'v' }), {});
});

t.test('a volatile volume whose upper is gone shows no last changes and still mounts', async (t) => {
  const e = await env(t);
  const d = await e.open();
  await d.create({ Name: 'v', Opts: { base: await e.base('b', { 'a.txt': 'A' }), volatile: 'true' } });
  await fsp.rm(path.join(e.root, 'volumes/v/upper'), { recursive: true });
  const status = (await d.get({ Name: 'v' })).Volume.Status!;
  t.notOk('lastChanges' in status);
  t.notOk('problems' in status, 'a volatile volume loses nothing with its upper');
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  t.same(fs.readdirSync(Mountpoint), ['a.txt']);
  await d.unmount({ Name: 'v', ID: 'a' });
});

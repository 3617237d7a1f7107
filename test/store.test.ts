// The on-disk store: volume.json, the temporary-then-rename Create, mount
// records, the trash, the boot id.
import t from 'tap';
import type { Test } from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { VolumeMeta } from '../lib/store.js';
import { copyOwnerAndMode, randomSuffix, readOpen, readSmallFile, stampOf } from '../lib/files.js';
import { Store, checkMeta } from '../lib/store.js';
import { ONE_RECORD } from '../lib/records.js';
import { BACKLOG, QUIET_MS } from '../lib/trash.js';
import { chattr, chattrUnsupported } from './helpers/faults.js';
import { captureLogger, records } from './helpers/tmp.js';

const META: VolumeMeta = { version: 1, base: '/srv', volatile: false, createdAt: '2024-01-02T03:04:05.000Z', options: { base: '/srv' } };
const OWNER = { uid: 0, gid: 0, mode: 0o40755 };

async function store(t: Test, fault?: (p: string) => void): Promise<{ s: Store; log: ReturnType<typeof captureLogger> }> {
  const root = await fsp.mkdtemp(path.join(os.tmpdir(), 'ontop-store-'));
  t.teardown(() => fsp.rm(root, { recursive: true, force: true }));
  const log = captureLogger();
  const s = new Store(root, log.logger, fault);
  s.init();
  return { s, log };
}

t.test('checkMeta lists what is wrong with a volume.json', async (t) => {
  t.same(checkMeta(META), []);
  t.same(checkMeta(null), ['volume.json does not hold an object']);
  t.same(checkMeta([]), ['volume.json does not hold an object']);
  t.equal(checkMeta({}).length, 5);
  t.match(checkMeta({ ...META, createdAt: 'yesterday' }), [/createdAt/]);
  t.match(checkMeta({ ...META, options: null }), [/options/]);
});

t.test('create builds the whole tree, fsyncs it, and readMeta reads it back', async (t) => {
  const { s } = await store(t);
  await s.create('v', META, { uid: 1234, gid: 4321, mode: 0o40751 });
  const p = s.paths('v');
  t.same((await fsp.readdir(p.dir)).sort(), ['upper', 'volume.json'], 'merged/, work/ and users/ come at the first Mount');
  t.same(s.readMeta('v'), { meta: META, problems: [], stamp: stampOf(fs.statSync(s.paths('v').meta, { bigint: true })) });
  const up = fs.statSync(p.upper);
  t.same([up.uid, up.gid, up.mode & 0o7777], [1234, 4321, 0o751], 'the upper takes the base root owner and mode');
  t.same(await fsp.readdir(s.tmp), [], 'nothing left in tmp/');
  t.same(s.listNames(), ['v']);
});

t.test('a create that fails before the rename leaves nothing behind', async (t) => {
  const { s } = await store(t, (p) => {
    if (p === 'create:before-rename') throw new Error('crash');
  });
  await t.rejects(s.create('v', META, OWNER), { message: 'crash' });
  t.same(await fsp.readdir(s.tmp), []);
  t.same(await fsp.readdir(s.volumes), []);
});

t.test('readMeta reports a missing, damaged or wrongly shaped volume.json as problems, never an exception', async (t) => {
  const { s } = await store(t);
  await fsp.mkdir(s.paths('v').dir, { recursive: true });
  t.match(await s.readMeta('v'), { meta: undefined, problems: ['volume.json does not exist'] });
  await fsp.writeFile(s.paths('v').meta, '{"version":1,"base":"/s');
  t.match(await s.readMeta('v'), { problems: [/volume.json is damaged/] });
  await fsp.writeFile(s.paths('v').meta, '{"version":2}');
  t.match(await s.readMeta('v'), { meta: undefined, problems: [/version 2/, /base/, /volatile/, /createdAt/, /options/] });
  // A FIFO would block a plain read until a writer came: it is refused without waiting for one.
  fs.rmSync(s.paths('v').meta);
  execFileSync('mkfifo', [s.paths('v').meta]);
  t.match(s.readMeta('v'), { meta: undefined, problems: ['volume.json is a FIFO, not a regular file'] });
  fs.rmSync(s.paths('v').meta);
  fs.symlinkSync('/dev/null', s.paths('v').meta);
  t.match(s.readMeta('v'), { meta: undefined, problems: ['volume.json is a symbolic link, not a regular file'] }, 'never followed');
  fs.rmSync(s.paths('v').meta);
  execFileSync('mknod', [s.paths('v').meta, 'c', '1', '3']);
  t.match(s.readMeta('v'), { meta: undefined, problems: ['volume.json is a special file, not a regular file'] });
});

t.test('mount records count per ID; unreadable ones count as one; clearUsers empties them', async (t) => {
  const { s } = await store(t);
  t.same((await s.inspectUsers('nope')).users, new Map(), 'no users/ directory: no records');
  await fsp.mkdir(path.join(s.root, 'volumes/v'), { recursive: true });
  await s.writeUser('v', 'a', 3);
  await s.writeUser('v', 'b', 1);
  await fsp.writeFile(path.join(s.paths('v').users, 'c'), '');
  await fsp.writeFile(path.join(s.paths('v').users, 'd'), 'garbage');
  await fsp.writeFile(path.join(s.paths('v').users, 'e'), '0');
  await fsp.mkdir(path.join(s.paths('v').users, 'f'));
  t.same((await s.inspectUsers('v')).users, new Map([['a', 3], ['b', 1], ['c', 1], ['d', 1], ['e', 1], ['f', 1]]));
  await s.deleteUser('v', 'b');
  await s.deleteUser('v', 'never');
  await s.clearUsers('v', ['a', 'c', 'd', 'e']);
  t.same(await fsp.readdir(s.paths('v').users), ['f']);
  t.throws(() => s.writeUser('nope', 'a', 1), { code: 'ENOENT' }, 'no volume directory: the record is not written');
  t.throws(() => s.writeUser('v', 'f', 1), { code: 'EISDIR' });
});

t.test("a first use's record is a hard link to users/.tmp.one: no inode made or freed; other counts get a file of their own", async (t) => {
  const { s } = await store(t);
  await fsp.mkdir(path.join(s.root, 'volumes/v'), { recursive: true });
  const users = s.paths('v').users;
  const one = path.join(users, ONE_RECORD);
  const names = () => fs.readdirSync(users).sort();
  const ino = (n: string) => fs.statSync(path.join(users, n)).ino;
  s.addUser('v', 'a');
  s.addUser('v', 'b');
  t.same(names(), [ONE_RECORD, 'a', 'b']);
  t.equal(ino('a'), ino(ONE_RECORD), 'a link, not a file of its own');
  t.equal(ino('b'), ino(ONE_RECORD));
  t.equal(fs.statSync(one).nlink, 3);
  t.same((await s.inspectUsers('v')).users, new Map([['a', 1], ['b', 1]]), 'both read as a count of 1; the shared file is no record');
  t.notOk(fs.existsSync(one), 'and a start deletes it');
  t.equal(fs.readFileSync(path.join(users, 'a'), 'utf8'), '1', 'the records keep its inode');

  // Gone (a start-up sweep): written again at the next first use.
  s.addUser('v', 'c');
  t.equal(ino('c'), ino(ONE_RECORD));
  t.equal(fs.statSync(path.join(users, 'a')).nlink, 2, 'a and b share the old file, c and the new one theirs');

  // A count other than 1 is a file of its own; the shared file is never written through a record.
  s.writeUser('v', 'c', 2);
  t.not(ino('c'), ino(ONE_RECORD));
  t.equal(fs.readFileSync(path.join(users, 'c'), 'utf8'), '2');
  t.equal(fs.readFileSync(one, 'utf8'), '1');
  s.writeUser('v', 'c', 1);
  t.equal(fs.readFileSync(one, 'utf8'), '1');
  t.same((await s.inspectUsers('v')).users, new Map([['a', 1], ['b', 1], ['c', 1]]));

  // An Unmount deletes the link; the shared file stays for the next ones.
  s.addUser('v', 'd');
  s.deleteUser('v', 'd');
  t.same(names(), [ONE_RECORD, 'a', 'b', 'c']);

  // A record of that name already there (left by a crash): written as a file of its own.
  fs.writeFileSync(path.join(users, 'e'), 'garbage');
  s.addUser('v', 'e');
  t.equal(fs.readFileSync(path.join(users, 'e'), 'utf8'), '1');
  t.not(ino('e'), ino(ONE_RECORD));

  // What this process did not write is never linked to: a file put there is written over first...
  s.setUsersAside('v');
  fs.mkdirSync(users);
  fs.writeFileSync(one, '7');
  s.addUser('v', 'f');
  t.equal(fs.readFileSync(path.join(users, 'f'), 'utf8'), '1');
  // ...and a directory in its place leaves records as files of their own.
  s.setUsersAside('v');
  fs.mkdirSync(path.join(users, ONE_RECORD), { recursive: true });
  s.addUser('v', 'g');
  t.equal(fs.readFileSync(path.join(users, 'g'), 'utf8'), '1');
  t.ok(fs.statSync(one).isDirectory());

  // No volume directory: no record, and the error says why.
  t.throws(() => s.addUser('nope', 'a'), { code: 'ENOENT' });
});

t.test("tmpfsUsed: 0 without a filesystem on scratch/, the bytes in use with one, undefined when statfs fails", async (t) => {
  const { s } = await store(t);
  fs.mkdirSync(s.paths('v').dir);
  t.equal(s.tmpfsUsed('v'), 0, 'no scratch/: the tmpfs and its changes are gone');
  // A symbolic link to another filesystem looks, to a stat that follows it, like a filesystem mounted there.
  fs.symlinkSync('/dev/shm', s.paths('v').scratch);
  t.type(s.tmpfsUsed('v'), 'number');
  const statfsSync = fs.statfsSync;
  fs.statfsSync = (() => {
    throw Object.assign(new Error('EINVAL'), { code: 'EINVAL' });
  }) as unknown as typeof fs.statfsSync;
  t.teardown(() => void (fs.statfsSync = statfsSync));
  t.equal(s.tmpfsUsed('v'), undefined, 'unmounted between the two calls: Get shows what it can');
});

t.test('syncVolumesDir fsyncs volumes/, once for all the callers of one turn (dirsync.test.ts has the rest)', async (t) => {
  const { s } = await store(t);
  // Each sync opens volumes/ as a directory to fsync it: counting those opens counts the syncs.
  const opened: string[] = [];
  const openSync = fs.openSync;
  fs.openSync = ((p: fs.PathLike, ...rest: never[]) => {
    if (p === s.volumes) opened.push(String(p));
    return (openSync as (...a: unknown[]) => number)(p, ...rest);
  }) as typeof fs.openSync;
  t.teardown(() => void (fs.openSync = openSync));
  await Promise.all(Array.from({ length: 20 }, () => s.syncVolumesDir()));
  t.equal(opened.length, 1, '20 callers, 1 fsync');
  await s.syncVolumesDir();
  t.equal(opened.length, 2, 'a call after all settled starts a sync of its own');
});

t.test('moveToTrash renames into trash/, returns undefined for a missing path, and passes other errors on', async (t) => {
  const { s } = await store(t);
  await fsp.mkdir(path.join(s.root, 'x'));
  const dest = await s.moveToTrash(path.join(s.root, 'x'), 'x');
  t.match(dest, new RegExp(`^${s.trash}/x\\.[0-9a-f]{16}$`));
  t.equal(await s.moveToTrash(path.join(s.root, 'missing'), 'm'), undefined);
  t.throws(() => s.moveToTrash(s.root, 'root'), { code: 'EINVAL' }, 'a directory cannot move into itself');
});

t.test('freshDir replaces a directory with an empty one and deletes the old in the background', async (t) => {
  const { s } = await store(t);
  const d = path.join(s.root, 'work');
  await fsp.mkdir(path.join(d, 'work'), { recursive: true });
  s.freshDir(d, 'v.work');
  t.same(await fsp.readdir(d), []);
  const trashed = fs.readdirSync(s.trash);
  t.match(trashed, [/^v\.work\.[0-9a-f]{16}$/], 'the old one went to the trash whole, and freshDir returned before deleting it');
  t.same(trashed.length === 1 ? fs.readdirSync(path.join(s.trash, trashed[0]!)) : trashed, ['work'], 'with its contents');
  await s.settled();
  t.same(await fsp.readdir(s.trash), []);
  s.freshDir(path.join(s.root, 'new'), 'v.new');
  t.ok(fs.statSync(path.join(s.root, 'new')).isDirectory(), 'a missing one is simply made');
});

t.test('a trash entry that cannot be deleted is logged, and leftovers() finds it for the next start', { skip: chattrUnsupported() }, async (t) => {
  const { s, log } = await store(t);
  const stuck = path.join(s.trash, 'v.abc');
  await fsp.mkdir(stuck);
  await fsp.writeFile(path.join(stuck, 'f'), '');
  chattr(t, '+i', path.join(stuck, 'f'));
  await fsp.mkdir(path.join(s.tmp, 'half.123'));
  s.deleteLater(stuck);
  await s.settled();
  t.ok(log.has('warn', /could not delete from the trash/));
  t.same(s.leftovers(), { tmp: [path.join(s.tmp, 'half.123')], trash: [stuck] });
});

t.test('trash deletions wait for a pause in new ones, start at once beyond the backlog, and settled() runs them now', async (t) => {
  const { s } = await store(t);
  const entry = (name: string): string => {
    const p = path.join(s.trash, name);
    fs.mkdirSync(path.join(p, 'upper'), { recursive: true });
    return p;
  };
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  // A burst: each new entry postpones the deletions of all.
  const burst = [entry('a'), entry('b')];
  s.deleteLater(burst[0]!);
  await sleep(QUIET_MS / 2);
  s.deleteLater(burst[1]!);
  await sleep(QUIET_MS / 2 + 20);
  t.ok(burst.every((p) => fs.existsSync(p)), 'nothing deleted while new entries keep coming');
  await sleep(QUIET_MS);
  await s.settled();
  t.notOk(burst.some((p) => fs.existsSync(p)), 'deleted once the trash was quiet');

  // settled() does not wait for the pause.
  const late = entry('c');
  s.deleteLater(late);
  await s.settled();
  t.notOk(fs.existsSync(late), 'settled() deletes what waits');

  // Past the backlog, deletions start without a pause (checked before they could have).
  const many = Array.from({ length: BACKLOG }, (_, i) => path.join(s.trash, `m${i}`));
  for (const p of many) fs.mkdirSync(p);
  for (const p of many) s.deleteLater(p);
  await sleep(50);
  t.ok(many.filter((p) => !fs.existsSync(p)).length > 0, 'a backlog is deleted without waiting for a pause');
  await s.settled();
  t.same(fs.readdirSync(s.trash), []);
});

t.test('readSmallFile reads a file in one read at its fstat size, and all of one that grew since', async (t) => {
  const { s } = await store(t);
  const f = path.join(s.root, 'f');
  fs.writeFileSync(f, 'héllo');
  t.match(readSmallFile(f), { text: 'héllo' });
  fs.writeFileSync(f, '');
  t.match(readSmallFile(f), { text: '' });
  const fd = fs.openSync(f, 'r+');
  t.teardown(() => fs.closeSync(fd));
  fs.writeFileSync(f, 'abc');
  const size = fs.fstatSync(fd).size;
  fs.appendFileSync(f, 'def'.repeat(3000));
  t.equal(readOpen(fd, size), 'abc' + 'def'.repeat(3000), 'grown between fstat and read: read to its end');
});

t.test('randomSuffix gives 16 hex digits, different each time', async (t) => {
  const seen = new Set(Array.from({ length: 1000 }, () => randomSuffix()));
  t.equal(seen.size, 1000);
  t.ok([...seen].every((x) => /^[0-9a-f]{16}$/.test(x)));
});

t.test('the boot id is read trimmed, missing is undefined, unreadable throws, and it is written atomically', async (t) => {
  const { s } = await store(t);
  t.equal(await s.readBootId(s.bootIdFile), undefined);
  await s.writeBootId('abc');
  t.equal(await fsp.readFile(s.bootIdFile, 'utf8'), 'abc\n');
  t.equal(await s.readBootId(s.bootIdFile), 'abc');
  t.throws(() => s.readBootId(s.root), { message: / is a directory, not a regular file$/ });
  t.notOk((await fsp.readdir(s.root)).some((n) => n.startsWith('boot-id.')), 'no temporary file left');
});

t.test('copyOwnerAndMode gives a directory an owner and mode', async (t) => {
  const { s } = await store(t);
  copyOwnerAndMode(s.tmp, { uid: 5, gid: 6, mode: 0o41777 });
  const st = fs.statSync(s.tmp);
  t.same([st.uid, st.gid, st.mode & 0o7777], [5, 6, 0o1777]);
});

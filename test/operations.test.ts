// The operator's verbs on a real driver and the real kernel: ls, diff,
// reset, commit, clone and Create's from=; each in the volume's queue, each
// refusal clear and changing nothing (bad names, missing volumes, a volume in
// use or damaged, a base gone, read-only or swapped, from= naming itself or
// a missing volume, from= with another base).
import t from 'tap';
import type { Test } from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Driver } from '../lib/driver.js';
import { constants, mount as sysMount } from '../lib/native.js';
import { mountId } from './helpers/client.js';
import { chattr, chattrUnsupported } from './helpers/faults.js';
import { env, type Env } from './helpers/tmp.js';

async function setup(t: Test): Promise<{ e: Env; d: Driver; base: string }> {
  const e = await env(t);
  const d = await e.open();
  const base = await e.base('base', { 'keep.txt': 'keep\n', 'change.txt': 'old\n', 'gone.txt': 'bye\n' });
  return { e, d, base };
}

/** What the state root holds, to show a refusal changed nothing. */
async function state(e: Env): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const ent of await fsp.readdir(path.join(e.root, rel), { withFileTypes: true })) {
      const r = path.join(rel, ent.name);
      if (r === 'daemon.lock' || r === 'boot-id') continue;
      out.push(r);
      if (ent.isDirectory()) await walk(r);
    }
  };
  await walk('');
  return out.sort();
}

/** Makes changes in a volume through its overlay, as a container would. */
async function change(d: Driver, name: string, fn: (merged: string) => Promise<void>): Promise<void> {
  const id = mountId();
  const { Mountpoint } = await d.mount({ Name: name, ID: id });
  try {
    await fn(Mountpoint);
  } finally {
    await d.unmount({ Name: name, ID: id });
  }
}

const edits = async (m: string): Promise<void> => {
  await fsp.writeFile(path.join(m, 'change.txt'), 'new\n');
  await fsp.rm(path.join(m, 'gone.txt'));
  await fsp.mkdir(path.join(m, 'dir'));
  await fsp.writeFile(path.join(m, 'dir/added.txt'), 'added\n');
};

t.test('info names the driver, the state root, the pid and the version', async (t) => {
  const e = await env(t);
  const d = await e.open({ name: 'trial' });
  t.match(await d.info(), { name: 'trial', root: fs.realpathSync(e.root), pid: process.pid, version: /^\d+\.\d+\.\d+/ });
});

t.test('bad names and missing volumes are refused by every verb, before anything happens', async (t) => {
  const { e, d } = await setup(t);
  const before = await state(e);
  for (const [verb, call] of [
    ['diff', (n: string) => d.diff({ name: n })],
    ['reset', (n: string) => d.reset({ name: n })],
    ['commit', (n: string) => d.commit({ name: n })],
    ['clone', (n: string) => d.clone({ source: n, name: 'copy' })],
  ] as const) {
    await t.rejects(call('../etc'), { name: 'DriverError', message: /volume name "..\/etc" is not allowed/ }, verb);
    await t.rejects(call('nope'), { name: 'DriverError', message: 'no such volume: nope (see docker volume ls)' }, verb);
  }
  await t.rejects(d.diff(undefined as never), { message: /volume name must be a string, got undefined/ });
  t.same(await state(e), before);
});

t.test('diff lists the changes; reset drops them and the work dir; the next mount sees the base', async (t) => {
  const { d, base, e } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  t.same(await d.diff({ name: 'v' }), { changes: [] });
  await change(d, 'v', edits);
  t.same((await d.diff({ name: 'v' })).changes, [
    { kind: 'C', path: '/change.txt' },
    { kind: 'A', path: '/dir' },
    { kind: 'A', path: '/dir/added.txt' },
    { kind: 'D', path: '/gone.txt' },
  ]);
  t.same(await d.reset({ name: 'v' }), { name: 'v' });
  t.same((await d.diff({ name: 'v' })).changes, []);
  t.notOk(fs.existsSync(path.join(e.root, 'volumes/v/work')), 'work/ went too (made again by the next mount)');
  await change(d, 'v', async (m) => t.same((await fsp.readdir(m)).sort(), ['change.txt', 'gone.txt', 'keep.txt']));
  t.equal(fs.readFileSync(path.join(base, 'change.txt'), 'utf8'), 'old\n', 'the base never changed');
});

t.test('commit writes the changes into the base and leaves the volume empty, its view the same; --dry-run writes nothing', async (t) => {
  const { d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await change(d, 'v', edits);
  const dry = await d.commit({ name: 'v', dryRun: true });
  t.match(dry, { name: 'v', base, dryRun: true });
  t.equal(dry.changes.length, 4);
  t.equal(fs.readFileSync(path.join(base, 'change.txt'), 'utf8'), 'old\n', 'a dry run writes nothing');
  const progress: unknown[] = [];
  const done = await d.commit({ name: 'v' }, (p) => progress.push(p));
  t.match(done, { name: 'v', base, dryRun: false });
  t.same((await fsp.readdir(base)).sort(), ['change.txt', 'dir', 'keep.txt']);
  t.equal(fs.readFileSync(path.join(base, 'change.txt'), 'utf8'), 'new\n');
  t.equal(fs.readFileSync(path.join(base, 'dir/added.txt'), 'utf8'), 'added\n');
  t.same((await d.diff({ name: 'v' })).changes, [], 'no changes left');
  await change(d, 'v', async (m) => t.same((await fsp.readdir(m)).sort(), ['change.txt', 'dir', 'keep.txt'], 'the view is as before'));
});

t.test('reset, commit and clone of a volume in use are refused, saying how many mounts hold it; diff and ls work', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const [a, b] = [mountId(), mountId()];
  const { Mountpoint } = await d.mount({ Name: 'v', ID: a });
  await d.mount({ Name: 'v', ID: b });
  await fsp.writeFile(path.join(Mountpoint, 'new.txt'), 'x');
  const before = await state(e);
  const used = 'volume v is in use by 2 mounts; stop its containers first';
  await t.rejects(d.reset({ name: 'v' }), { name: 'DriverError', message: used });
  await t.rejects(d.commit({ name: 'v' }), { name: 'DriverError', message: used });
  await t.rejects(d.clone({ source: 'v', name: 'copy' }), { name: 'DriverError', message: used });
  await t.rejects(d.create({ Name: 'copy', Opts: { from: 'v' } }), { name: 'DriverError', message: used });
  t.same(await state(e), before, 'nothing changed');
  t.same((await d.diff({ name: 'v' })).changes, [{ kind: 'A', path: '/new.txt' }]);
  t.match((await d.ls()).volumes, [{ name: 'v', base, volatile: false, users: 2, mounted: true, size: { files: 1, bytes: 1 } }]);
  await d.unmount({ Name: 'v', ID: b });
  await t.rejects(d.reset({ name: 'v' }), { message: 'volume v is in use by 1 mount; stop its containers first' });
  await d.unmount({ Name: 'v', ID: a });
  t.equal(fs.readFileSync(path.join(base, 'keep.txt'), 'utf8'), 'keep\n');
});

t.test('an overlay left mounted by a failed unmount blocks reset and commit', async (t) => {
  const { d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  const id = mountId();
  const { Mountpoint } = await d.mount({ Name: 'v', ID: id });
  const fd = fs.openSync(path.join(Mountpoint, 'keep.txt'), 'r');
  t.teardown(() => fs.closeSync(fd));
  await d.unmount({ Name: 'v', ID: id }); // EBUSY: left mounted
  t.equal((await d.ls()).volumes[0]!.mounted, true);
  await t.rejects(d.reset({ name: 'v' }), { message: /volume v cannot be reset: its overlay is still mounted on .*merged \(an unmount failed/ });
  await t.rejects(d.commit({ name: 'v' }), { message: /cannot be committed: its overlay is still mounted/ });
});

t.test('a damaged volume is refused clearly, and listed with its problems', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await d.create({ Name: 'w', Opts: { base } });
  fs.writeFileSync(path.join(e.root, 'volumes/v/volume.json'), '{broken');
  const before = await state(e);
  for (const call of [() => d.diff({ name: 'v' }), () => d.reset({ name: 'v' }), () => d.commit({ name: 'v' }), () => d.clone({ source: 'v', name: 'c' })]) {
    await t.rejects(call(), { name: 'DriverError', message: /^volume v is damaged \(volume.json is damaged .*\): .*Remove it \(docker volume rm v\)$/ });
  }
  t.same(await state(e), before);
  const rows = (await d.ls()).volumes;
  t.match(rows[0], { name: 'v', users: 0, mounted: false, problems: [/volume.json is damaged/] });
  t.notOk('base' in rows[0]!);
  t.match(rows[1], { name: 'w', base, volatile: false, size: { files: 0, bytes: 0 }, created: /Z$/ });
  t.notOk('problems' in rows[1]!);

  // Damaged mount records: nobody can tell whether containers use it.
  await d.close();
  fs.mkdirSync(path.join(e.root, 'volumes/w/users'));
  fs.mkdirSync(path.join(e.root, 'volumes/w/users/notafile'));
  const d2 = await e.open();
  await t.rejects(d2.reset({ name: 'w' }), { message: /volume w cannot be reset: its mount records are damaged/ });
  t.match((await d2.ls()).volumes[1], { name: 'w', problems: [/users\/notafile/] });
});

t.test('a volume whose changes cannot be read is listed with the reason', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'vol', Opts: { base, volatile: 'true' } });
  fs.rmSync(path.join(e.root, 'volumes/vol/upper'), { recursive: true });
  t.match((await d.ls()).volumes, [{ name: 'vol', problems: [/its changes cannot be read/] }]);
});

t.test('commit into a base that is gone, read-only or swapped by a symlink is refused before anything is written', async (t) => {
  const { e, d, base } = await setup(t);
  const ro = await e.base('ro');
  await sysMount('tmpfs', ro, 'tmpfs', constants.MS_RDONLY, 'size=1m');
  for (const [name, b] of [['gone', base], ['ro', ro], ['swapped', await e.base('swapped')]] as const) {
    await d.create({ Name: name, Opts: { base: b } });
    await change(d, name, async (m) => fsp.writeFile(path.join(m, 'x'), 'x'));
  }
  await fsp.rename(base, base + '.moved');
  const swapped = path.join(e.dir, 'swapped');
  await fsp.rename(swapped, swapped + '.real');
  await fsp.symlink(base + '.moved', swapped);
  await t.rejects(d.commit({ name: 'gone' }), { message: new RegExp(`^volume gone cannot take a commit: its base ${base} is gone \\(.*ENOENT.*\\): restore it, or remove the volume$`) });
  await t.rejects(d.diff({ name: 'gone' }), { message: /volume gone cannot be compared with its base: its base .* is gone/ });
  await t.rejects(d.commit({ name: 'ro' }), { message: `volume ro cannot be committed: its base ${ro} is on a read-only filesystem; nothing was changed` });
  t.same((await d.commit({ name: 'ro', dryRun: true })).changes, [{ kind: 'A', path: '/x' }], 'a dry run needs no writable base');
  await t.rejects(d.commit({ name: 'swapped' }), { message: /its base .*swapped now resolves to .*base.moved \(a symlink changed\)/ });
  t.same((await d.diff({ name: 'ro' })).changes, [{ kind: 'A', path: '/x' }], 'the changes are still there');
});

t.test('clone and from=: a copy of the changes over the same base, the source’s volatile unless given', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'src', Opts: { base, volatile: 'false' } });
  await change(d, 'src', edits);
  const progress: unknown[] = [];
  const made = await d.clone({ source: 'src', name: 'copy' }, (p) => progress.push(p));
  t.match(made, { name: 'copy', source: 'src', base, volatile: false });
  t.same((await d.diff({ name: 'copy' })).changes, (await d.diff({ name: 'src' })).changes, 'the same changes');
  t.same(JSON.parse(fs.readFileSync(path.join(e.root, 'volumes/copy/volume.json'), 'utf8')).options, { from: 'src' });
  await change(d, 'copy', async (m) => {
    t.equal(fs.readFileSync(path.join(m, 'change.txt'), 'utf8'), 'new\n');
    t.notOk(fs.existsSync(path.join(m, 'gone.txt')), 'the deletion (a whiteout) was copied as such');
  });

  t.same(await d.create({ Name: 'viaopt', Opts: { from: 'src', volatile: 'yes' } }), {});
  t.match(await d.get({ Name: 'viaopt' }), { Volume: { Status: { base, volatile: true } } });
  t.same(await d.create({ Name: 'viaopt', Opts: { from: 'src', volatile: 'true' } }), {}, 'Create is idempotent for the same source and options');
  t.same(await d.create({ Name: 'withbase', Opts: { from: 'src', base } }), {}, 'base= naming the same directory is fine');
  await t.rejects(d.create({ Name: 'viaopt', Opts: { from: 'src' } }), { message: 'volume viaopt already exists (volatile is true, not false): remove it first, or choose another name' });
  await t.rejects(d.create({ Name: 'viaopt', Opts: { from: 'copy', volatile: 'true' } }), { message: /already exists \(it is not a clone of copy\)/ });
  await t.rejects(d.clone({ source: 'src', name: 'copy' }), { message: 'volume copy already exists: choose another name, or remove it first' });
  fs.writeFileSync(path.join(e.root, 'volumes/withbase/volume.json'), 'x');
  await d.close();
  const d2 = await e.open();
  await t.rejects(d2.create({ Name: 'withbase', Opts: { from: 'src' } }), { message: /already exists \(it is damaged\)/ });
});

t.test('from= naming itself, a missing or invalid volume, another base, a source whose base is gone: refused, nothing made', async (t) => {
  const { e, d, base } = await setup(t);
  const other = await e.base('other');
  await d.create({ Name: 'src', Opts: { base } });
  const before = await state(e);
  const cases: Array<[Record<string, string>, string, RegExp]> = [
    [{ from: 'src' }, 'src', /^from=src names the volume being created: give another volume to copy$/],
    [{ from: 'nope' }, 'n', /^no such volume: nope/],
    [{ from: '../x' }, 'n', /^option from: volume name "..\/x" is not allowed/],
    [{ from: 'src', base: other }, 'n', new RegExp(`^from=src makes a volume over src's base ${base}, and base=${other} is another: leave base out$`)],
    [{ from: 'src', volatile: 'maybe' }, 'n', /volatile="maybe" is not understood/],
    [{ from: 'src', colour: 'red' }, 'n', /unknown option "colour": the known options are base, volatile, upper, size, from/],
  ];
  for (const [Opts, Name, message] of cases) await t.rejects(d.create({ Name, Opts }), { name: 'DriverError', message }, JSON.stringify(Opts));
  await t.rejects(d.clone({ source: 'src', name: 'src' }), { message: /names the volume being created/ });
  await t.rejects(d.clone({ source: 'src', name: 'bad/name' }), { message: /volume name "bad\/name" is not allowed/ });
  await fsp.rename(base, base + '.moved');
  await t.rejects(d.clone({ source: 'src', name: 'n' }), { message: /^volume src cannot be cloned: its base .* does not exist on the host/ });
  t.same(await state(e), before, 'nothing made, nothing left in tmp/');
  t.same((await d.list()).Volumes.map((v) => v.Name), ['src']);
});

t.test('a clone that fills the disk fails saying so, and leaves no volume and nothing in tmp/', async (t) => {
  const e = await env(t);
  await fsp.mkdir(e.root);
  await sysMount('tmpfs', e.root, 'tmpfs', 0, 'size=1m');
  const d = await e.open();
  const base = await e.base('base');
  await d.create({ Name: 'src', Opts: { base } });
  await change(d, 'src', async (m) => fsp.writeFile(path.join(m, 'big'), Buffer.alloc(640 * 1024, 1)));
  const before = await state(e);
  await t.rejects(d.clone({ source: 'src', name: 'copy' }), { name: 'DriverError', message: /^clone of volume copy failed: no space left on the state root's filesystem/ });
  t.same(await state(e), before, 'no copy, nothing in tmp/');
  t.same((await d.list()).Volumes.map((v) => v.Name), ['src']);
});

t.test('commit and clone hold the volume’s queue: a Mount waits for them', async (t) => {
  const { d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await change(d, 'v', edits);
  const order: string[] = [];
  const committing = d.commit({ name: 'v' }).then(() => order.push('commit'));
  const id = mountId();
  const mounting = d.mount({ Name: 'v', ID: id }).then(() => order.push('mount'));
  await Promise.all([committing, mounting]);
  t.same(order, ['commit', 'mount']);
  await d.unmount({ Name: 'v', ID: id });
});

t.test('a first Mount after a commit killed midway first undoes its temporary files in the base; commit then finishes', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await change(d, 'v', edits);
  // What a commit killed after writing its first temporary file leaves: the file, and the journal naming it.
  const temp = path.join(base, '.ontop-commit-killed');
  fs.writeFileSync(temp, 'half');
  const journal = path.join(e.root, 'volumes/v/commit.journal');
  fs.writeFileSync(journal, JSON.stringify({ t: Buffer.from(temp).toString('base64') }) + '\n{"t":"cut sh');
  await change(d, 'v', async (m) => t.notOk(fs.existsSync(path.join(m, '.ontop-commit-killed')), 'the container never sees it'));
  t.notOk(fs.existsSync(temp), 'gone from the base');
  t.notOk(fs.existsSync(journal), 'the journal is done with');
  t.ok(e.log.has('warn', /a commit of this volume was interrupted/));
  t.equal((await d.commit({ name: 'v' })).changes.length, 4);
  t.equal(fs.readFileSync(path.join(base, 'change.txt'), 'utf8'), 'new\n');
});

t.test('a base that became a kernel pseudo-filesystem, or lies outside --allow-base now, is refused', async (t) => {
  const e = await env(t);
  const allowed = await e.base('allowed');
  const base = await e.base('allowed/base', { 'a.txt': 'a' });
  const d = await e.open({ allowBases: [allowed] });
  await d.create({ Name: 'v', Opts: { base } });
  await d.create({ Name: 'p', Opts: { base } });
  await change(d, 'v', async (m) => fsp.writeFile(path.join(m, 'x'), 'x'));
  await d.close();
  const d2 = await e.open({ allowBases: [await e.base('elsewhere')] });
  await t.rejects(d2.commit({ name: 'v' }), { message: new RegExp(`^volume v cannot take a commit: its base ${base} is outside the allowed base directories`) });
  await d2.close();
  const d3 = await e.open();
  await sysMount('proc', base, 'proc', 0, '');
  await t.rejects(d3.diff({ name: 'p' }), { message: /its base .* is on proc, a kernel pseudo-filesystem/ });
});

t.test('reset works with the base gone (the changes are only emptied); ls finding an unreadable layer leaves Get as it was', async (t) => {
  const { e, d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await change(d, 'v', edits);
  await fsp.rename(base, base + '.moved');
  t.same(await d.reset({ name: 'v' }), { name: 'v' });
  t.same(fs.readdirSync(path.join(e.root, 'volumes/v/upper')), []);

  await d.create({ Name: 'vol', Opts: { base: base + '.moved', volatile: 'true' } });
  fs.rmSync(path.join(e.root, 'volumes/vol/upper'), { recursive: true });
  t.match((await d.ls()).volumes[1], { name: 'vol', problems: [/its changes cannot be read/] });
  t.notOk('problems' in (await d.get({ Name: 'vol' })).Volume.Status!, 'ls does not mark the volume damaged');
});

t.test('clone with volatile given, and with no arguments at all', async (t) => {
  const { d, base } = await setup(t);
  await d.create({ Name: 'src', Opts: { base } });
  t.match(await d.clone({ source: 'src', name: 'c', volatile: 'true' }), { volatile: true });
  await t.rejects(d.clone(undefined as never), { name: 'DriverError', message: 'option from must be a string' });
});

t.test('commit into a base that cannot be written for another reason (immutable) says why', { skip: chattrUnsupported() }, async (t) => {
  const { d, base } = await setup(t);
  await d.create({ Name: 'v', Opts: { base } });
  await change(d, 'v', edits);
  chattr(t, '+i', base);
  await t.rejects(d.commit({ name: 'v' }), { message: new RegExp(`^volume v cannot be committed: its base ${base} cannot be written \\(EPERM.*\\); nothing was changed$`) });
  chattr(t, '-i', base);
});

// The operator's verbs on volumes of other shapes: a stacked base (diff
// against every layer, a clone keeps the stack, commit is refused), a tmpfs
// upper (changes only while mounted; a clone of an idle one is empty), and
// from= refusing upper= and size=, which a clone takes from its source.
import t from 'tap';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { mountId } from './helpers/client.js';
import { env } from './helpers/tmp.js';

t.test('a stacked volume: diff reads every layer, a clone keeps the stack, commit is refused and writes nothing', async (t) => {
  const e = await env(t);
  const d = await e.open();
  const top = await e.base('top', { 'top.txt': 'top\n' });
  const bottom = await e.base('bottom', { 'low.txt': 'low\n', 'gone.txt': 'gone\n' });
  await d.create({ Name: 'stack', Opts: { base: `${top}:${bottom}` } });
  const id = mountId();
  const { Mountpoint: m } = await d.mount({ Name: 'stack', ID: id });
  await fsp.writeFile(path.join(m, 'low.txt'), 'changed\n');
  await fsp.rm(path.join(m, 'gone.txt'));
  await fsp.writeFile(path.join(m, 'new.txt'), 'new\n');
  await d.unmount({ Name: 'stack', ID: id });

  const { changes } = await d.diff({ name: 'stack' });
  t.same(
    changes.map((c) => `${c.kind} ${c.path}`),
    ['D /gone.txt', 'C /low.txt', 'A /new.txt'],
    'a change to a lower layer is C, a deletion there D, a new file A',
  );
  t.match((await d.ls()).volumes.find((v) => v.name === 'stack'), { layers: [top, bottom], upper: 'disk', size: { files: 2 } }, 'ls shows the stack');
  await t.rejects(d.commit({ name: 'stack' }), { message: /^volume stack stacks 2 bases, and a commit writes one/ });
  t.equal(await fsp.readFile(path.join(bottom, 'low.txt'), 'utf8'), 'low\n', 'no layer was written');

  await d.create({ Name: 'copy', Opts: { from: 'stack' } });
  const got = await d.get({ Name: 'copy' });
  t.same((got.Volume.Status as { layers?: string[] }).layers, [top, bottom], 'the clone stacks the same layers');
  const copied = await d.diff({ name: 'copy' });
  t.same(copied.changes, changes, 'and holds the same changes');
  await t.rejects(d.create({ Name: 'other', Opts: { from: 'stack', base: top } }), { message: /makes a volume over stack's base .*, and base=.* is another: leave base out/ });
  await d.create({ Name: 'copy', Opts: { from: 'stack', base: `${top}:${bottom}` } });
  t.pass('from= with the same layers given again is accepted (and the existing clone is the answer)');
});

t.test('a tmpfs volume: no changes while idle, its changes while mounted; a clone of it is an empty tmpfs volume', async (t) => {
  const e = await env(t);
  const d = await e.open();
  const base = await e.base('base', { 'a.txt': 'a\n' });
  await d.create({ Name: 'ram', Opts: { base, upper: 'tmpfs', size: '8m' } });
  t.same((await d.diff({ name: 'ram' })).changes, [], 'idle: nothing to diff');
  t.same((await d.commit({ name: 'ram', dryRun: true })).changes, [], 'idle: nothing to commit');
  const ls = await d.ls();
  t.match(ls.volumes.find((v) => v.name === 'ram'), { upper: 'tmpfs', limit: 8 * 2 ** 20, size: { files: 0, bytes: 0 } }, 'ls: its shape, and no changes');

  const id = mountId();
  const { Mountpoint: m } = await d.mount({ Name: 'ram', ID: id });
  await fsp.writeFile(path.join(m, 'b.txt'), 'bb\n');
  t.same(
    (await d.diff({ name: 'ram' })).changes.map((c) => `${c.kind} ${c.path}`),
    ['A /b.txt'],
    'mounted: diff reads the tmpfs',
  );
  t.same((await d.ls()).volumes.find((v) => v.name === 'ram')?.size, { files: 1, bytes: 3 }, 'ls sizes the tmpfs changes');
  await t.rejects(d.reset({ name: 'ram' }), { message: /in use by 1 mount/ });
  await d.unmount({ Name: 'ram', ID: id });
  await d.reset({ name: 'ram' });

  await d.create({ Name: 'ram2', Opts: { from: 'ram' } });
  const info = (await d.get({ Name: 'ram2' })).Volume.Status as { upperKind?: string; size?: number };
  t.equal(info.upperKind, 'tmpfs', 'the clone keeps its upper kind');
  t.equal(info.size, 8 * 2 ** 20, 'and its size');
  for (const key of ['upper', 'size']) {
    await t.rejects(d.create({ Name: 'ram3', Opts: { from: 'ram', [key]: key === 'upper' ? 'disk' : '1m' } }), {
      message: new RegExp(`^option ${key} cannot be given with from=: a clone has its source's ${key}$`),
    });
  }
  t.notOk((await d.list()).Volumes.some((v) => v.Name === 'ram3'), 'nothing made');
});

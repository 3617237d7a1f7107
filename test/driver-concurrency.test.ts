// Many calls at once on one volume: the per-volume lock keeps exactly one
// overlay while any user remains and none after, and Create/Remove races end
// in a whole volume or none.
import t from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { mountId } from './helpers/client.js';
import { env, mountCount } from './helpers/tmp.js';

t.test('50 concurrent Mount/Unmount pairs on one volume keep exactly one overlay while any user remains, and none after', async (t) => {
  const e = await env(t);
  const d = await e.open();
  const base = await e.base('b', { f: 'x' });
  await d.create({ Name: 'v', Opts: { base } });
  const merged = path.join(e.root, 'volumes/v/merged');
  const violations: string[] = [];
  await Promise.all(
    Array.from({ length: 50 }, async (_, i) => {
      const ID = mountId();
      const { Mountpoint } = await d.mount({ Name: 'v', ID });
      const n = mountCount(merged);
      if (n !== 1) violations.push(`after mount ${i}: ${n} overlays`);
      if (!fs.existsSync(path.join(Mountpoint, 'f'))) violations.push(`after mount ${i}: base not visible`);
      await new Promise((r) => setTimeout(r, Math.random() * 5));
      await d.unmount({ Name: 'v', ID });
    }),
  );
  t.same(violations, []);
  t.equal(mountCount(merged), 0, 'none after the last Unmount');
  t.same(await fsp.readdir(path.join(e.root, 'volumes/v/users')), []);

  const ids = Array.from({ length: 50 }, () => mountId());
  await Promise.all(ids.map((ID) => d.mount({ Name: 'v', ID })));
  t.equal(mountCount(merged), 1, '50 users at once share one overlay');
  t.match(await d.get({ Name: 'v' }), { Volume: { Status: { users: 50 } } });
  await Promise.all(ids.slice(1).map((ID) => d.unmount({ Name: 'v', ID })));
  t.equal(mountCount(merged), 1, 'one user left: still mounted');
  await d.unmount({ Name: 'v', ID: ids[0]! });
  t.equal(mountCount(merged), 0);
});

t.test('concurrent Creates of one name with the same options all succeed; with other options exactly one wins', async (t) => {
  const e = await env(t);
  const d = await e.open();
  const a = await e.base('a');
  const b = await e.base('b');
  const same = await Promise.allSettled(Array.from({ length: 20 }, () => d.create({ Name: 'v', Opts: { base: a } })));
  t.ok(same.every((r) => r.status === 'fulfilled'));
  const mixed = await Promise.allSettled([d.create({ Name: 'w', Opts: { base: a } }), d.create({ Name: 'w', Opts: { base: b } })]);
  t.same(mixed.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
  const winner = mixed[0]!.status === 'fulfilled' ? a : b;
  t.match(await d.get({ Name: 'w' }), { Volume: { Status: { base: winner } } });
  t.same((await d.list()).Volumes.map((v) => v.Name).sort(), ['v', 'w']);
});

t.test('racing Create, Mount, Unmount and Remove of one name ends in a whole volume or none, with no stray lock files or mounts', async (t) => {
  const e = await env(t);
  const d = await e.open();
  const base = await e.base();
  for (let round = 0; round < 20; round++) {
    const ID = mountId();
    await Promise.allSettled([
      d.create({ Name: 'r', Opts: { base } }),
      d.mount({ Name: 'r', ID }).then(() => d.unmount({ Name: 'r', ID })),
      d.remove({ Name: 'r' }),
      d.create({ Name: 'r', Opts: { base } }),
    ]);
  }
  const listed = (await d.list()).Volumes.map((v) => v.Name);
  const onDisk = await fsp.readdir(path.join(e.root, 'volumes'));
  t.same(onDisk, listed, 'memory and disk agree');
  if (listed.length === 1) t.same((await fsp.readdir(path.join(e.root, 'volumes/r'))).sort(), ['merged', 'upper', 'users', 'volume.json', 'work'].filter((n) => fs.existsSync(path.join(e.root, 'volumes/r', n))));
  t.same(await fsp.readdir(path.join(e.root, 'locks')), listed, 'a lock file only for a volume that exists');
  t.equal(mountCount(path.join(e.root, 'volumes/r/merged')), 0);
  await d.close();
  t.same(await fsp.readdir(path.join(e.root, 'trash')), []);
});

// Many calls at once on one volume: the per-volume lock keeps exactly one
// overlay while any user remains and none after, and Create/Remove races end
// in a whole volume or none.
import t from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { mountId } from './helpers/client.js';
import { seeded } from './helpers/seed.js';
import { env, mountCount, records } from './helpers/tmp.js';

/** A settled call as its value, or its error. */
function outcome<T>(r: PromiseSettledResult<T>): T | Error {
  return r.status === 'fulfilled' ? r.value : (r.reason as Error);
}

t.test('50 concurrent Mount/Unmount pairs on one volume keep exactly one overlay while any user remains, and none after', async (t) => {
  const { rand } = seeded(t);
  const e = await env(t);
  const d = await e.open();
  const base = await e.base('b', { f: 'x' });
  await d.create({ Name: 'v', Opts: { base } });
  const merged = path.join(e.root, 'volumes/v/merged');
  const violations: string[] = [];
  await Promise.all(
    Array.from({ length: 50 }, async (_, i) => {
      const ID = mountId(rand);
      const pause = rand() * 5;
      const { Mountpoint } = await d.mount({ Name: 'v', ID });
      if (Mountpoint !== merged) violations.push(`mount ${i} answered ${Mountpoint}`);
      const n = mountCount(merged);
      if (n !== 1) violations.push(`after mount ${i}: ${n} overlays`);
      if (!fs.existsSync(path.join(Mountpoint, 'f'))) violations.push(`after mount ${i}: base not visible`);
      await new Promise((r) => setTimeout(r, pause));
      const u = await d.unmount({ Name: 'v', ID });
      if (JSON.stringify(u) !== '{}') violations.push(`unmount ${i} answered ${JSON.stringify(u)}`);
    }),
  );
  t.same(violations, []);
  t.equal(mountCount(merged), 0, 'none after the last Unmount');
  t.same(records(await fsp.readdir(path.join(e.root, 'volumes/v/users'))), []);

  const ids = Array.from({ length: 50 }, () => mountId(rand));
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
  t.same(same.map(outcome), Array.from({ length: 20 }, () => ({})), 'every Create of v answers {}');
  const mixed = await Promise.allSettled([d.create({ Name: 'w', Opts: { base: a } }), d.create({ Name: 'w', Opts: { base: b } })]);
  t.same(mixed.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
  const winner = mixed[0]!.status === 'fulfilled' ? a : b;
  const loser = winner === a ? b : a;
  t.match(
    mixed.map(outcome).find((o) => o instanceof Error),
    { name: 'DriverError', message: `volume w already exists with other options (base is ${winner}, not ${loser}): remove it first, or choose another name` },
    'the loser is told why',
  );
  t.match(await d.get({ Name: 'w' }), { Volume: { Status: { base: winner } } });
  t.same((await d.list()).Volumes.map((v) => v.Name).sort(), ['v', 'w']);
});

t.test('racing Create, Mount, Unmount and Remove of one name ends in a whole volume or none, with no stray mounts', async (t) => {
  const { rand, int } = seeded(t);
  const e = await env(t);
  const d = await e.open();
  const base = await e.base();
  const unexpected: string[] = [];
  const seen = new Set<string>();
  const merged = path.join(e.root, 'volumes/r/merged');
  for (let round = 0; round < 40; round++) {
    const ID = mountId(rand);
    const calls: Array<[string, () => Promise<unknown>]> = [
      ['create', () => d.create({ Name: 'r', Opts: { base } })],
      [
        'mount+unmount',
        () =>
          d.mount({ Name: 'r', ID }).then(async (m) => {
            if (m.Mountpoint !== merged) unexpected.push(`round ${round}: Mount answered ${JSON.stringify(m)}`);
            return d.unmount({ Name: 'r', ID });
          }),
      ],
      ['remove', () => d.remove({ Name: 'r' })],
      ['remove', () => d.remove({ Name: 'r' })],
      ['create', () => d.create({ Name: 'r', Opts: { base } })],
    ];
    // A seeded order per round: each verb meets the others ahead of it and behind it in the volume's queue.
    for (let i = calls.length - 1; i > 0; i--) {
      const j = int(i + 1);
      [calls[i], calls[j]] = [calls[j]!, calls[i]!];
    }
    const results = await Promise.allSettled(calls.map(([, call]) => call()));
    // Each call either did its work ({}) or found no volume (a Remove got there first); nothing else.
    for (const [i, r] of results.entries()) {
      const verb = calls[i]![0];
      const o = outcome(r);
      const ok = o instanceof Error ? verb !== 'create' && o.name === 'DriverError' && /^no such volume: r /.test(o.message) : JSON.stringify(o) === '{}';
      seen.add(`${verb} ${o instanceof Error ? 'no such volume' : 'ok'}`);
      if (!ok) unexpected.push(`round ${round}, ${verb}: ${o instanceof Error ? `${o.name}: ${o.message}` : JSON.stringify(o)}`);
    }
  }
  t.same(unexpected, [], 'every call succeeded or was told the volume does not exist');
  t.comment(`outcomes seen: ${[...seen].sort().join('; ')}`);
  t.same(e.log.lines.filter((l) => l.level === 'error'), [], 'no call failed unexpectedly (logged as an error)');
  const listed = (await d.list()).Volumes.map((v) => v.Name);
  const onDisk = await fsp.readdir(path.join(e.root, 'volumes'));
  t.same(onDisk, listed, 'memory and disk agree');
  if (listed.length === 1) t.same((await fsp.readdir(path.join(e.root, 'volumes/r'))).sort(), ['merged', 'upper', 'users', 'volume.json', 'work'].filter((n) => fs.existsSync(path.join(e.root, 'volumes/r', n))));
  t.equal(mountCount(path.join(e.root, 'volumes/r/merged')), 0);
  await d.close();
  t.same(await fsp.readdir(path.join(e.root, 'trash')), []);
});

t.test('a call queued behind the Remove of its volume is told the volume no longer exists', async (t) => {
  const e = await env(t);
  const d = await e.open();
  const base = await e.base();
  const gone = { name: 'DriverError', message: /^no such volume: q / };
  for (const verb of ['mount', 'unmount', 'remove'] as const) {
    await d.create({ Name: 'q', Opts: { base } });
    await d.mount({ Name: 'q', ID: 'a' });
    // Both calls find the volume when they are made; the second waits in the volume's queue behind the Remove.
    const removed = d.remove({ Name: 'q' });
    const late: Promise<unknown> = verb === 'remove' ? d.remove({ Name: 'q' }) : verb === 'mount' ? d.mount({ Name: 'q', ID: 'a' }) : d.unmount({ Name: 'q', ID: 'a' });
    t.same(await removed, {});
    await t.rejects(late, gone, `${verb} behind the Remove`);
  }
  t.same(e.log.lines.filter((l) => l.level === 'error'), [], 'no call failed unexpectedly (logged as an error)');
  t.same(await fsp.readdir(path.join(e.root, 'volumes')), [], 'nothing made again for the removed name');
});

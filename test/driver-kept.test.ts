// The last Unmount of a volume while a Mount of it already waits in its queue:
// the overlay is kept for that Mount instead of being unmounted and mounted
// again, except for a volatile volume (its changes go with its last user),
// and a kept overlay whose Mount then fails is taken down.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import type { Driver, DriverOptions } from '../lib/driver.js';
import { env, mountCount } from './helpers/tmp.js';

type Tap = import('tap').Test;

/**
 * Mounts `a`; then Unmounts it while a Mount of `b` is made to wait in the
 * queue (started from inside the Unmount, at its fault point after the
 * record is gone). `sabotage` runs at that point too. Returns what the
 * Mount of `b` settled to and the device of merged/ before and after.
 */
async function unmountWithMountWaiting(t: Tap, volatile: boolean, sabotage?: (root: string) => void) {
  const e = await env(t);
  const base = await e.base('base', { 'a.txt': 'from base' });
  let d: Driver | undefined;
  let waiting: Promise<unknown> | undefined;
  const faults: DriverOptions['faults'] = async (point) => {
    if (point !== 'unmount:after-unrecord' || waiting !== undefined) return;
    sabotage?.(e.root);
    waiting = d!.mount({ Name: 'v', ID: 'b' }).then(
      (r) => r,
      (err: unknown) => err,
    );
  };
  d = await e.open({ faults });
  await d.create({ Name: 'v', Opts: { base, volatile: String(volatile) } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  const devBefore = fs.statSync(Mountpoint).dev;
  fs.writeFileSync(path.join(Mountpoint, 'change.txt'), 'made by a');
  await d.unmount({ Name: 'v', ID: 'a' });
  const settled = await waiting;
  const mounted = mountCount(Mountpoint);
  const devAfter = mounted > 0 ? fs.statSync(Mountpoint).dev : undefined;
  return { e, d, Mountpoint, settled, devBefore, devAfter, mounted };
}

t.test('a non-volatile overlay stays mounted for a Mount already waiting, and goes with its last user', async (t) => {
  const { e, d, Mountpoint, settled, devBefore, devAfter, mounted } = await unmountWithMountWaiting(t, false);
  t.same(settled, { Mountpoint });
  t.equal(mounted, 1, 'one overlay on merged/');
  t.equal(devAfter, devBefore, 'the same overlay: never unmounted in between');
  t.equal(e.log.lines.filter((l) => l.msg === 'overlay mounted').length, 1);
  t.ok(e.log.lines.some((l) => l.msg === 'overlay kept for a Mount waiting in the queue'));
  t.equal(fs.readFileSync(path.join(Mountpoint, 'change.txt'), 'utf8'), 'made by a');
  t.match((await d.get({ Name: 'v' })).Volume.Status, { mounted: true, users: 1 });
  await d.unmount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(Mountpoint), 0, 'the last Unmount with nobody waiting unmounts');
  await d.close();
});

t.test('a volatile overlay is unmounted even with a Mount waiting: its changes go with its last user', async (t) => {
  const { e, d, Mountpoint, settled, mounted } = await unmountWithMountWaiting(t, true);
  t.same(settled, { Mountpoint });
  t.equal(mounted, 1);
  // (merged/'s device cannot tell: the kernel may give the new overlay the number the old one freed.)
  t.equal(e.log.lines.filter((l) => l.msg === 'overlay unmounted').length, 1, 'unmounted in between');
  t.equal(e.log.lines.filter((l) => l.msg === 'overlay mounted').length, 2, 'and mounted afresh');
  t.notOk(e.log.lines.some((l) => l.msg === 'overlay kept for a Mount waiting in the queue'));
  t.notOk(fs.existsSync(path.join(Mountpoint, 'change.txt')), 'the changes of the last use are gone from the view');
  await d.unmount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(Mountpoint), 0);
  await d.close();
});

t.test('a kept overlay whose Mount fails is unmounted, not left without users', async (t) => {
  // users/ becomes a file: the waiting Mount cannot write its record.
  const { e, d, Mountpoint, settled, mounted } = await unmountWithMountWaiting(t, false, (root) => {
    const users = path.join(root, 'volumes/v/users');
    fs.renameSync(users, `${users}.aside`);
    fs.writeFileSync(users, 'not a directory');
  });
  t.match(settled, { name: 'DriverError', message: /^mount of volume v failed: ENOTDIR/ });
  t.equal(mounted, 0, 'nothing left mounted');
  t.ok(e.log.lines.some((l) => l.msg === 'overlay unmounted'));
  t.match((await d.get({ Name: 'v' })).Volume.Status, { mounted: false, users: 0 });
  t.equal(fs.readFileSync(path.join(e.root, 'volumes/v/upper/change.txt'), 'utf8'), 'made by a', 'the changes stay in the volume');
  await d.close();
  t.equal(mountCount(Mountpoint), 0);
});

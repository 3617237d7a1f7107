// Bases on a filesystem that stopped answering (a dead NFS server, a hung
// FUSE daemon): a Mount over one waits, on a thread of its own, until the
// filesystem answers or fails; Get, List and every other volume go on.
// Simulated with a FUSE mount whose /dev/fuse descriptor nobody reads.
import t from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { DriverError } from '../../lib/errors.js';
import { constants, mount, umount2 } from '../../lib/native.js';
import { env, mountCount } from '../helpers/tmp.js';

function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), ms)))]).finally(() => clearTimeout(timer));
}

t.test('four Mounts hung on dead bases stop neither Get, List nor another volume\'s Create, Mount, Unmount and Remove', async (t) => {
  const e = await env(t);
  const parent = path.join(e.dir, 'nfs');
  const bases = [0, 1, 2, 3].map((i) => path.join(parent, `b${i}`));
  for (const b of bases) await fsp.mkdir(b, { recursive: true });
  const healthy = await e.base('healthy', { 'a.txt': 'A' });
  const d = await e.open();
  for (const [i, base] of bases.entries()) await d.create({ Name: `hung${i}`, Opts: { base } });

  // The filesystem under the bases stops answering.
  let fuse: number | undefined = fs.openSync('/dev/fuse', 'r+');
  const abort = (): void => {
    if (fuse !== undefined) fs.closeSync(fuse);
    fuse = undefined;
  };
  await mount('ontop-test', parent, 'fuse', 0, `fd=${fuse},rootmode=40000,user_id=0,group_id=0`);
  t.teardown(async () => {
    abort();
    await umount2(parent, constants.MNT_DETACH).catch(() => {});
  });

  const hung = bases.map((_, i) => d.mount({ Name: `hung${i}`, ID: 'a' }).then(() => 'mounted', (err: Error) => err));
  t.equal(await within(Promise.race(hung), 300), 'timeout', 'the Mounts over dead bases wait');

  const others = (async () => {
    t.match(await d.get({ Name: 'hung0' }), { Volume: { Name: 'hung0', Status: { mounted: false } } }, 'Get answers');
    t.equal((await d.list()).Volumes.length, 4, 'List answers');
    await d.create({ Name: 'ok', Opts: { base: healthy } });
    const { Mountpoint } = await d.mount({ Name: 'ok', ID: 'a' });
    t.equal(fs.readFileSync(path.join(Mountpoint, 'a.txt'), 'utf8'), 'A', 'another volume mounts');
    await d.unmount({ Name: 'ok', ID: 'a' });
    t.equal(mountCount(Mountpoint), 0);
    await d.remove({ Name: 'ok' });
    return 'done';
  })();
  t.equal(await within(others, 10_000), 'done', 'everything else is answered meanwhile');

  abort(); // the filesystem fails for good: the hung calls come back with an error
  for (const r of await Promise.all(hung)) {
    t.ok(r instanceof DriverError && /cannot be mounted: its base .* is gone \(ENOTCONN/.test(r.message), String(r));
  }
  t.same(fs.readdirSync(path.join(e.root, 'volumes')).sort(), ['hung0', 'hung1', 'hung2', 'hung3']);
});

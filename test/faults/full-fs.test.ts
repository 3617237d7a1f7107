// A full filesystem under the state root: a 1 MiB tmpfs with 64 inodes as
// the root, filled up by inodes or by blocks. Create fails with a message
// that names the cause and leaves nothing (no tmp/ entry, no volumes/
// entry, no lock file); Mount fails cleanly; Remove still works; and once
// space is freed everything works again.
import t from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { mount as sysMount } from '../../lib/native.js';
import { env, mountCount } from '../helpers/tmp.js';
import { usersWithoutMount } from '../helpers/faults.js';

type Tap = import('tap').Test;

const NO_SPACE = /^create of volume v failed: no space left on the state root's filesystem \(.*\): free some space or inodes there, then try again \(ENOSPC/;

async function smallRoot(t: Tap) {
  const e = await env(t);
  const small = path.join(e.dir, 'small');
  await fsp.mkdir(small);
  await sysMount('ontop-test', small, 'tmpfs', 0, 'size=1m,nr_inodes=64,mode=0700');
  const root = path.join(small, 'root');
  const d = await e.open({ root });
  const base = await e.base('base', { 'a.txt': 'A' });
  const filler = path.join(small, 'filler');
  await fsp.mkdir(filler);
  /** Nothing of a failed Create is left anywhere under the root. */
  const nothingLeft = (name: string) => {
    t.same(fs.readdirSync(path.join(root, 'tmp')), [], 'no tmp/ entry');
    t.notOk(fs.existsSync(path.join(root, 'volumes', name)), 'no volumes/ entry');
  };
  return { e, d, root, base, filler, nothingLeft };
}

/** Creates files until the filesystem says ENOSPC; returns how many. */
async function exhaust(make: (i: number) => Promise<void>): Promise<number> {
  for (let i = 0; ; i++) {
    try {
      await make(i);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
      return i;
    }
  }
}

t.test('out of inodes: Create fails saying the state root is full and leaves nothing; Mount fails cleanly; Remove works; freed, all works', async (t) => {
  const { d, root, base, filler, nothingLeft } = await smallRoot(t);
  await d.create({ Name: 'w', Opts: { base } });
  await d.create({ Name: 'x', Opts: { base } });
  const made = await exhaust((i) => fsp.writeFile(path.join(filler, `f${i}`), ''));
  t.ok(made > 0, `filled the last ${made} inodes`);
  await t.rejects(d.create({ Name: 'v', Opts: { base } }), { name: 'DriverError', message: NO_SPACE });
  nothingLeft('v');
  await t.rejects(d.mount({ Name: 'w', ID: 'a' }), { name: 'DriverError', message: /^mount of volume w failed: no space left on the state root's filesystem/ });
  t.same(usersWithoutMount(root), [], 'no mount record without its overlay');
  t.same(await d.remove({ Name: 'x' }), {}, 'Remove needs no new inode');
  t.same(await d.list(), { Volumes: [{ Name: 'w' }] });

  await fsp.rm(filler, { recursive: true });
  t.same(await d.create({ Name: 'v', Opts: { base } }), {}, 'with space again, Create works');
  const { Mountpoint } = await d.mount({ Name: 'w', ID: 'a' });
  t.equal(fs.readFileSync(path.join(Mountpoint, 'a.txt'), 'utf8'), 'A', 'and Mount (tmpfs can hold an upper layer)');
  await d.unmount({ Name: 'w', ID: 'a' });
  t.equal(mountCount(Mountpoint), 0);
});

t.test('out of blocks: Create fails saying the state root is full and leaves nothing; freed, it works', async (t) => {
  const { d, base, filler, nothingLeft } = await smallRoot(t);
  const big = await fsp.open(path.join(filler, 'big'), 'w');
  const chunk = Buffer.alloc(4096, 1);
  await exhaust(async () => void (await big.write(chunk)));
  await big.close();
  await t.rejects(d.create({ Name: 'v', Opts: { base } }), { name: 'DriverError', message: NO_SPACE });
  nothingLeft('v');
  await fsp.rm(path.join(filler, 'big'));
  t.same(await d.create({ Name: 'v', Opts: { base } }), {});
  t.match(await d.get({ Name: 'v' }), { Volume: { Name: 'v' } });
  t.notOk((await d.get({ Name: 'v' })).Volume.Status?.problems);
});

// A state root on btrfs, against the real kernel, on an image this test
// makes (mkfs.btrfs on a loop device): every volume's upper is a subvolume,
// size= is its quota group's limit (quotas on) or refused naming the command
// that turns them on (quotas off), Remove destroys the subvolume, and a
// clone can snapshot it.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Store } from '../lib/store.js';
import type { Env } from './helpers/tmp.js';
import { env } from './helpers/tmp.js';

const MiB = 2 ** 20;
const run = (cmd: string, args: string[]): string => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const missing = ['mkfs.btrfs', 'btrfs', 'losetup'].filter((c) => {
  try {
    run('sh', ['-c', `command -v ${c}`]);
    return false;
  } catch {
    return true;
  }
});

/** A fresh btrfs mounted at e.dir/btrfs (quotas on when asked); unmounted and its loop device freed at teardown. */
function btrfs(t: import('tap').Test, e: Env, quotas: boolean): string {
  const img = path.join(e.dir, 'btrfs.img');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 256 * MiB);
  run('mkfs.btrfs', ['-q', '-f', img]);
  const loop = run('losetup', ['-f', '--show', img]).trim();
  const mnt = path.join(e.dir, 'btrfs');
  fs.mkdirSync(mnt);
  // Teardowns run last registered first: the env's (which detaches mounts) has run by the time this one does.
  t.teardown(() => {
    try {
      run('umount', ['-l', mnt]);
    } catch {
      // already detached by the env's teardown
    }
    run('losetup', ['-d', loop]);
  });
  run('mount', [loop, mnt]);
  if (quotas) run('btrfs', ['quota', 'enable', mnt]);
  return mnt;
}

/** Writes 1 MiB chunks until refused; bytes written and the refusal's code (EDQUOT has no name in Node: E122). */
function fill(file: string, limit = 64 * MiB): { bytes: number; code?: string } {
  const fd = fs.openSync(file, 'w');
  let bytes = 0;
  try {
    while (bytes < limit) {
      bytes += fs.writeSync(fd, Buffer.alloc(MiB, 1));
      fs.fsyncSync(fd); // quota groups count what reached the disk
    }
    return { bytes };
  } catch (err) {
    return { bytes, code: String((err as NodeJS.ErrnoException).errno) };
  } finally {
    fs.closeSync(fd);
  }
}

const subvolumes = (mnt: string): string => run('btrfs', ['subvolume', 'list', mnt]).trim();

t.test('btrfs state root', { skip: missing.length > 0 ? `needs ${missing.join(', ')} (btrfs-progs, util-linux)` : false }, async (t) => {
  t.test('quotas off: every upper is a subvolume; size= is refused naming `btrfs quota enable`, leaving nothing', async (t) => {
    const e = await env(t);
    const mnt = btrfs(t, e, false);
    const d = await e.open({ root: path.join(mnt, 'state') });
    const base = await e.base('base', { 'a.txt': 'A' });
    await d.create({ Name: 'v', Opts: { base } });
    const upper = path.join(mnt, 'state/volumes/v/upper');
    t.equal(fs.statSync(upper).ino, 256, 'the upper is the root of a subvolume');
    t.match(subvolumes(mnt), /path state\/volumes\/v\/upper$/);
    t.match((await d.get({ Name: 'v' })).Volume.Status, { upperKind: 'btrfs-subvolume' });
    t.notOk('used' in ((await d.get({ Name: 'v' })).Volume.Status ?? {}), 'no limit, no count');
    await t.rejects(d.create({ Name: 'w', Opts: { base, size: '8m' } }), {
      name: 'DriverError',
      message: new RegExp(`option size needs btrfs quotas, which are off .*: turn them on with \`btrfs quota enable ${mnt}\``),
    });
    t.same(fs.readdirSync(path.join(mnt, 'state/tmp')), [], 'nothing left in tmp/');
    t.same(fs.readdirSync(path.join(mnt, 'state/volumes')), ['v']);
    t.match(subvolumes(mnt), /^[^\n]*v\/upper$/, 'only the first volume’s subvolume');
    // A volume that keeps its changes, used and removed: its subvolume is destroyed by the trash.
    const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
    fs.writeFileSync(path.join(Mountpoint, 'new'), 'n');
    await d.unmount({ Name: 'v', ID: 'a' });
    await d.remove({ Name: 'v' });
    await d.close();
    t.equal(subvolumes(mnt), '', 'Remove destroyed the subvolume');
    t.same(fs.readdirSync(path.join(mnt, 'state/trash')), []);
  });

  t.test('quotas on: size= limits the changes (EDQUOT), others are unaffected, Remove destroys the subvolume; volatile ones get a fresh limited subvolume', async (t) => {
    const e = await env(t);
    const mnt = btrfs(t, e, true);
    const d = await e.open({ root: path.join(mnt, 'state') });
    const base = await e.base('base', { 'a.txt': 'A' });
    await d.create({ Name: 'small', Opts: { base, size: '8m' } });
    await d.create({ Name: 'free', Opts: { base } });
    await d.create({ Name: 'scratch', Opts: { base, size: '4m', volatile: 'true' } });
    t.match((await d.get({ Name: 'small' })).Volume.Status, { upperKind: 'btrfs-subvolume', size: 8 * MiB });
    const small = await d.mount({ Name: 'small', ID: 'a' });
    const r = fill(path.join(small.Mountpoint, 'big'));
    t.ok(r.code === '-122' || r.code === '-28', `refused with EDQUOT or ENOSPC (${r.code})`);
    t.ok(r.bytes >= 4 * MiB && r.bytes <= 8 * MiB, `near the 8 MiB limit (${r.bytes})`);
    const used = (await d.get({ Name: 'small' })).Volume.Status?.used as number;
    t.ok(used > 4 * MiB && used <= 9 * MiB, `Status.used counts it (${used})`);
    const free = await d.mount({ Name: 'free', ID: 'a' });
    t.same(fill(path.join(free.Mountpoint, 'big'), 24 * MiB), { bytes: 24 * MiB }, 'a volume without a limit is unaffected');
    await d.unmount({ Name: 'free', ID: 'a' });
    await d.unmount({ Name: 'small', ID: 'a' });

    for (const id of ['a', 'b']) {
      const s = await d.mount({ Name: 'scratch', ID: id });
      const w = fill(path.join(s.Mountpoint, 'big'));
      t.ok(w.bytes <= 4 * MiB && w.code !== undefined, `use ${id}: the fresh subvolume is limited too (${w.bytes}, ${w.code})`);
      await d.unmount({ Name: 'scratch', ID: id });
    }

    run('btrfs', ['quota', 'disable', mnt]);
    t.notOk('used' in ((await d.get({ Name: 'small' })).Volume.Status ?? {}), 'quotas turned off since: no count, and Get does not fail');
    for (const name of ['small', 'free', 'scratch']) await d.remove({ Name: name });
    await d.close();
    t.equal(subvolumes(mnt), '', 'every subvolume destroyed, old volatile uppers included');
  });

  t.test('uppers.snapshot: a clone’s upper as a snapshot, limited when asked; false (nothing done) off btrfs', async (t) => {
    const e = await env(t);
    const mnt = btrfs(t, e, true);
    const root = path.join(mnt, 'state');
    const d = await e.open({ root });
    const base = await e.base();
    await d.create({ Name: 'src', Opts: { base } });
    fs.writeFileSync(path.join(root, 'volumes/src/upper/f'), 'changes');
    const store = new Store(root, e.log.logger);
    const dst = path.join(root, 'tmp/clone');
    fs.mkdirSync(dst);
    t.equal(await store.uppers.snapshot(path.join(root, 'volumes/src/upper'), path.join(dst, 'upper'), 4 * MiB), true);
    t.equal(fs.readFileSync(path.join(dst, 'upper/f'), 'utf8'), 'changes');
    t.equal(fs.statSync(path.join(dst, 'upper')).ino, 256, 'a subvolume of its own');
    t.ok(fill(path.join(dst, 'upper/big')).code !== undefined, 'with the limit asked for');
    await store.removeTree(dst);
    t.match(subvolumes(mnt), /^[^\n]*src\/upper$/, 'removeTree destroyed the snapshot');
    const meta = { version: 1 as const, base, volatile: false, upper: 'btrfs-subvolume' as const, createdAt: new Date().toISOString(), options: {} };
    await store.create('copy', meta, { uid: 0, gid: 0, mode: 0o40700 }, { snapshotOf: 'src' });
    t.equal(fs.readFileSync(path.join(root, 'volumes/copy/upper/f'), 'utf8'), 'changes', 'create(..., snapshotOf): the new volume starts from a snapshot');
    await store.create('empty', meta, { uid: 0, gid: 0, mode: 0o40700 }, 'missing-volume');
    t.same(fs.readdirSync(path.join(root, 'volumes/empty/upper')), [], 'no subvolume to snapshot: an empty upper');
    for (const n of ['copy', 'empty']) await store.removeTree(path.join(root, 'volumes', n));
    await d.remove({ Name: 'src' });
    await d.close();

    const plain = await env(t);
    const pd = await plain.open();
    await pd.create({ Name: 'src', Opts: { base } });
    t.equal(await new Store(plain.root, plain.log.logger).uppers.snapshot(path.join(plain.root, 'volumes/src/upper'), path.join(plain.root, 'tmp/x')), false);
    t.notOk(fs.existsSync(path.join(plain.root, 'tmp/x')));
  });

  t.test('a crash between making the subvolume and the rename leaves it in tmp/; the next start destroys it', async (t) => {
    const e = await env(t);
    const mnt = btrfs(t, e, true);
    const root = path.join(mnt, 'state');
    const d = await e.open({
      root,
      faults: (point) => {
        if (point === 'create:before-rename') throw new Error('crash');
      },
    });
    const base = await e.base();
    // The fault throws inside create's try: create cleans up itself, as after any failure there.
    await t.rejects(d.create({ Name: 'v', Opts: { base, size: '8m' } }), /crash/);
    t.equal(subvolumes(mnt), '', 'a failed Create destroys its subvolume');
    await d.close();
    // Now as a real crash would leave it: a subvolume in tmp/, then a start.
    const store = new Store(root, e.log.logger);
    fs.mkdirSync(path.join(root, 'tmp/v.0123'));
    await store.uppers.make(path.join(root, 'tmp/v.0123'), 'btrfs-subvolume', 8 * MiB, { uid: 0, gid: 0, mode: 0o40755 });
    t.match(subvolumes(mnt), /tmp\/v.0123\/upper$/);
    const d2 = await e.open({ root });
    await d2.close();
    t.equal(subvolumes(mnt), '', 'destroyed at start');
  });
});

// Volumes shaped to the job, against the real kernel: changes on a tmpfs of
// their own (upper=tmpfs, size=), stacked bases, and overlayfs's own
// `volatile` option with its crash marker. btrfs uppers: btrfs.test.ts.
import t from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { parseMountinfo } from '../lib/mountinfo.js';
import { mount as sysMount } from '../lib/native.js';
import { checkMeta, layersOf, Store } from '../lib/store.js';
import { bytesOnDisk, env, mountCount } from './helpers/tmp.js';

const MiB = 2 ** 20;

/** Writes 1 MiB chunks to `file` until the filesystem refuses one; the bytes written and the refusal's code. */
function fill(file: string, limit = 64 * MiB): { bytes: number; code?: string } {
  const fd = fs.openSync(file, 'w');
  const chunk = Buffer.alloc(MiB, 7);
  let bytes = 0;
  try {
    while (bytes < limit) bytes += fs.writeSync(fd, chunk);
    return { bytes };
  } catch (err) {
    return { bytes, code: (err as NodeJS.ErrnoException).code };
  } finally {
    fs.closeSync(fd);
  }
}


/** The super options of what is mounted on `p` (the top mount). */
function superOptions(p: string): string {
  const e = parseMountinfo(fs.readFileSync('/proc/self/mountinfo', 'utf8')).filter((m) => m.mountPoint === p);
  return e[e.length - 1]?.superOptions ?? '';
}

t.test('upper=tmpfs,size=8m: writes stop with ENOSPC at 8 MiB, nothing reaches the state root, and the changes go with the last user', async (t) => {
  const e = await env(t);
  const d = await e.open();
  const base = await e.base('base', { 'a.txt': 'A' });
  fs.chmodSync(base, 0o751);
  await d.create({ Name: 'v', Opts: { base, upper: 'tmpfs', size: '8m' } });
  const dir = path.join(e.root, 'volumes/v');
  t.same(fs.readdirSync(dir).sort(), ['volume.json'], 'no upper/ on the state root for a tmpfs volume');
  t.match(JSON.parse(fs.readFileSync(path.join(dir, 'volume.json'), 'utf8')), { upper: 'tmpfs', size: 8 * MiB, volatile: true });
  t.match((await d.get({ Name: 'v' })).Volume.Status, { upperKind: 'tmpfs', size: 8 * MiB, used: 0, layers: [base], volatile: true, upper: path.join(dir, 'scratch/upper') });

  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  const scratch = path.join(dir, 'scratch');
  t.equal(mountCount(scratch), 1, 'a tmpfs on scratch/');
  t.match(superOptions(scratch), /size=8192k/);
  t.equal(fs.statSync(path.join(scratch, 'upper')).mode & 0o777, 0o751, 'the upper is owned like the base');
  t.match(superOptions(Mountpoint), /upperdir=.*\/scratch\/upper/);
  const r = fill(path.join(Mountpoint, 'big'));
  t.equal(r.code, 'ENOSPC', 'the writer is refused with ENOSPC');
  t.ok(r.bytes >= 7 * MiB && r.bytes <= 8 * MiB, `it stopped at the 8 MiB limit (${r.bytes} bytes)`);
  t.equal(bytesOnDisk(e.root) < 64 * 1024, true, 'none of it landed in the state root');
  const used = (await d.get({ Name: 'v' })).Volume.Status?.used as number;
  t.ok(used >= 7 * MiB && used <= 8 * MiB, `Status.used shows it (${used})`);
  const store = new Store(e.root, e.log.logger);
  t.equal(store.upperPath('v', { upper: 'tmpfs' }), path.join(scratch, 'upper'), 'upperPath: the tmpfs upper while mounted');
  t.equal(fs.readFileSync(path.join(Mountpoint, 'a.txt'), 'utf8'), 'A');

  await d.unmount({ Name: 'v', ID: 'a' });
  t.equal(mountCount(scratch), 0, 'the tmpfs went with the last user');
  t.equal(mountCount(Mountpoint), 0);
  t.equal(store.upperPath('v', { upper: 'tmpfs' }), undefined, 'upperPath: undefined while unmounted');
  t.match((await d.get({ Name: 'v' })).Volume.Status, { used: 0 });
  t.notOk('lastChanges' in ((await d.get({ Name: 'v' })).Volume.Status ?? {}), 'nothing to recover: the changes are gone');

  await d.mount({ Name: 'v', ID: 'b' });
  t.same(fs.readdirSync(Mountpoint), ['a.txt'], 'the next user starts from the pristine base');
  fs.writeFileSync(path.join(Mountpoint, 'x'), 'x');
  await d.remove({ Name: 'v' }); // with a user still recorded (a lost Unmount): the overlay and the tmpfs go
  t.equal(mountCount(Mountpoint), 0);
  t.equal(mountCount(scratch), 0);
  t.same(fs.readdirSync(path.join(e.root, 'volumes')), []);
});

t.test('a tmpfs volume without size gets a tenth of memory; Remove never leaves its tmpfs mounted', async (t) => {
  const e = await env(t);
  const d = await e.open();
  const base = await e.base();
  await d.create({ Name: 'v', Opts: { base, upper: 'tmpfs' } });
  const size = (await d.get({ Name: 'v' })).Volume.Status?.size as number;
  t.ok(size > 0 && size % 4096 === 0, 'a whole number of pages');
  await d.mount({ Name: 'v', ID: 'a' });
  const scratch = path.join(e.root, 'volumes/v/scratch');
  // A second tmpfs stacked by hand on scratch/: Remove detaches every one.
  await sysMount('ontop-test', scratch, 'tmpfs', 0, 'size=1m');
  await d.unmount({ Name: 'v', ID: 'a' });
  t.equal(mountCount(scratch), 0, 'both detached by the last Unmount');
  await sysMount('ontop-test', scratch, 'tmpfs', 0, 'size=1m');
  await d.remove({ Name: 'v' });
  t.equal(mountCount(scratch), 0, 'and by Remove');
  t.same(fs.readdirSync(path.join(e.root, 'volumes')), []);
});

t.test('a tmpfs left mounted by a crash before its overlay is detached at the next start; the next Mount starts afresh', async (t) => {
  const e = await env(t);
  let crash = false;
  const d = await e.open({
    faults: (point) => {
      if (crash && point === 'mount:before-mount') throw new Error('crash');
    },
  });
  const base = await e.base('base', { 'a.txt': 'A' });
  await d.create({ Name: 'v', Opts: { base, upper: 'tmpfs', size: '1m' } });
  await d.create({ Name: 'w', Opts: { base, upper: 'tmpfs', size: '1m' } });
  crash = true;
  await t.rejects(d.mount({ Name: 'v', ID: 'a' }), /crash/);
  crash = false;
  const scratch = path.join(e.root, 'volumes/v/scratch');
  t.equal(mountCount(scratch), 1, 'the crash left the tmpfs');
  // A live volume keeps its tmpfs across the restart.
  const { Mountpoint } = await d.mount({ Name: 'w', ID: 'a' });
  fs.writeFileSync(path.join(Mountpoint, 'kept'), 'k');
  await d.close();
  const d2 = await e.open();
  t.equal(mountCount(scratch), 0, 'released at start');
  t.match(e.log.lines.findLast((l) => l.msg === 'state root recovered'), { unmounted: 1 });
  t.equal(fs.readFileSync(path.join(Mountpoint, 'kept'), 'utf8'), 'k', 'the volume in use keeps its tmpfs and changes');
  await d2.mount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(scratch), 1);
  await d2.unmount({ Name: 'v', ID: 'b' });
  await d2.unmount({ Name: 'w', ID: 'a' });
  t.equal(mountCount(path.join(e.root, 'volumes/w/scratch')), 0);
});

t.test('a stacked base: the top layer wins, every layer shows, the changes stay in the upper, no layer is written', async (t) => {
  const e = await env(t);
  const d = await e.open();
  const top = await e.base('top', { 'a.txt': 'top a' });
  const mid = await e.base('mid,x:y', { 'a.txt': 'mid a', 'b.txt': 'mid b' });
  const bottom = await e.base('bottom', { 'a.txt': 'bottom a', 'b.txt': 'bottom b', 'c.txt': 'bottom c' });
  const escaped = mid.replace(/\\/g, '\\\\').replace(/:/g, '\\:');
  await d.create({ Name: 'v', Opts: { base: `${top}:${escaped}:${bottom}` } });
  const meta = JSON.parse(fs.readFileSync(path.join(e.root, 'volumes/v/volume.json'), 'utf8'));
  t.same(meta.layers, [top, mid, bottom], 'volume.json keeps every layer, top first');
  t.equal(meta.base, top, 'and base, the top one, for readers that know only base');
  t.same(layersOf(meta), [top, mid, bottom]);
  t.match((await d.get({ Name: 'v' })).Volume.Status, { base: top, layers: [top, mid, bottom], upperKind: 'disk' });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  const opts = superOptions(Mountpoint);
  t.equal(opts.match(/lowerdir\+=\/proc\/self\/fd\/[0-9]+/g)?.length, 3, 'one lowerdir+ per layer, each a descriptor');
  const read = (f: string) => fs.readFileSync(path.join(Mountpoint, f), 'utf8');
  t.same([read('a.txt'), read('b.txt'), read('c.txt')], ['top a', 'mid b', 'bottom c']);
  fs.writeFileSync(path.join(Mountpoint, 'c.txt'), 'changed');
  fs.rmSync(path.join(Mountpoint, 'b.txt'));
  await d.unmount({ Name: 'v', ID: 'a' });
  const upper = path.join(e.root, 'volumes/v/upper');
  t.equal(fs.readFileSync(path.join(upper, 'c.txt'), 'utf8'), 'changed', 'the change is in the upper');
  t.ok(fs.lstatSync(path.join(upper, 'b.txt')).isCharacterDevice(), 'the deletion too (a whiteout)');
  t.same([fs.readdirSync(top), fs.readdirSync(mid).sort(), fs.readdirSync(bottom).sort()], [['a.txt'], ['a.txt', 'b.txt'], ['a.txt', 'b.txt', 'c.txt']]);
  t.equal(fs.readFileSync(path.join(bottom, 'c.txt'), 'utf8'), 'bottom c', 'no layer written');
  await d.mount({ Name: 'v', ID: 'b' });
  t.equal(read('c.txt'), 'changed', 'the next use sees the changes');
  t.notOk(fs.existsSync(path.join(Mountpoint, 'b.txt')));
  await d.unmount({ Name: 'v', ID: 'b' });
  t.same(await d.create({ Name: 'v', Opts: { base: `${top}:${escaped}:${bottom}` } }), {}, 'the same Create again is fine');
  await t.rejects(d.create({ Name: 'v', Opts: { base: `${top}:${bottom}` } }), { message: new RegExp(`already exists with other options \\(base is ${top}:.*:${bottom}, not ${top}:${bottom}\\)`) });
});

t.test('a layer that vanished after Create refuses the Mount, naming it', async (t) => {
  const e = await env(t);
  const d = await e.open();
  const top = await e.base('top');
  const bottom = await e.base('bottom');
  await d.create({ Name: 'v', Opts: { base: `${top}:${bottom}` } });
  fs.rmSync(bottom, { recursive: true });
  await t.rejects(d.mount({ Name: 'v', ID: 'a' }), { message: new RegExp(`volume v cannot be mounted: its base ${bottom} is gone`) });
  t.equal(mountCount(path.join(e.root, 'volumes/v/merged')), 0);
});

t.test('a volatile volume mounts with overlayfs volatile; the crash marker it leaves never blocks the next mount', async (t) => {
  const e = await env(t);
  const d = await e.open();
  const base = await e.base('base', { 'a.txt': 'A' });
  await d.create({ Name: 'v', Opts: { base, volatile: 'true' } });
  await d.create({ Name: 'k', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  t.match(superOptions(Mountpoint), /(^|,)(volatile|fsync=volatile)(,|$)/, 'volatile in the mount table');
  const k = await d.mount({ Name: 'k', ID: 'a' });
  t.notMatch(superOptions(k.Mountpoint), /volatile/, 'a volume that keeps its changes is not volatile');
  await d.unmount({ Name: 'k', ID: 'a' });
  await d.unmount({ Name: 'v', ID: 'a' });
  const work = path.join(e.root, 'volumes/v/work');
  t.ok(fs.existsSync(path.join(work, 'work/incompat/volatile')), 'the kernel left its marker');
  await d.mount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(Mountpoint), 1, 'and the next mount is not refused');
  await d.unmount({ Name: 'v', ID: 'b' });
  // After an unclean stop (a leftover overlay detached, not unmounted) the marker sits in a workdir set aside whole.
  await d.mount({ Name: 'v', ID: 'c' });
  const held = await fsp.open(path.join(Mountpoint, 'held'), 'w');
  t.teardown(() => held.close().catch(() => {}));
  await d.unmount({ Name: 'v', ID: 'c' });
  t.equal(mountCount(Mountpoint), 1, 'held busy');
  await d.mount({ Name: 'v', ID: 'd' });
  t.equal(mountCount(Mountpoint), 1, 'detached and mounted afresh');
  await d.unmount({ Name: 'v', ID: 'd' });
});

t.test('volume.json with bad layers, upper or size is damage, reported; a volume from before layers reads as its one base', async (t) => {
  const good = { version: 1, base: '/b', volatile: false, createdAt: new Date().toISOString(), options: {} };
  t.same(checkMeta(good), []);
  t.same(layersOf(good), ['/b']);
  t.same(checkMeta({ ...good, layers: ['/b', '/c'], upper: 'btrfs-subvolume', size: 4096 }), []);
  t.match(checkMeta({ ...good, layers: ['/c'] }), [/"layers" that are not absolute paths starting with "base"/]);
  t.match(checkMeta({ ...good, layers: [] }), [/"layers"/]);
  t.match(checkMeta({ ...good, layers: ['/b', 'rel'] }), [/"layers"/]);
  t.match(checkMeta({ ...good, layers: 'x' }), [/"layers"/]);
  t.match(checkMeta({ ...good, upper: 'ram' }), [/unknown "upper" "ram"/]);
  t.match(checkMeta({ ...good, size: -1 }), [/"size"/]);
  t.match(checkMeta({ ...good, size: 1.5 }), [/"size"/]);
  const e = await env(t);
  const d = await e.open();
  const base = await e.base();
  await d.create({ Name: 'v', Opts: { base } });
  t.match((await d.get({ Name: 'v' })).Volume.Status, { layers: [base], upperKind: 'disk' });
  t.notOk('used' in ((await d.get({ Name: 'v' })).Volume.Status ?? {}), 'no use for a plain disk upper: a walk is too slow for Get');
  t.notOk('size' in ((await d.get({ Name: 'v' })).Volume.Status ?? {}));
  await t.rejects(d.create({ Name: 'v', Opts: { base, upper: 'tmpfs' } }), { message: /already exists with other options \(volatile is false, not true; upper is disk, not tmpfs; size is unlimited, not [0-9]+\)/ });
  fs.writeFileSync(path.join(e.root, 'volumes/v/volume.json'), '{"version": 1}');
  const d2 = await (async () => {
    await d.close();
    return e.open();
  })();
  const status = (await d2.get({ Name: 'v' })).Volume.Status;
  t.equal(status?.layers, undefined, 'a damaged volume.json shows no layers, and Get does not fail');
  t.notOk('used' in (status ?? {}));
});

t.test('a kernel without lowerdir+ (EINVAL on the first) gets the stack in the escaped string; one too long for it is refused, saying why', async (t) => {
  const e = await env(t);
  const native = await import('../lib/native.js');
  const calls: string[] = [];
  let failure: Record<string, string> = { syscall: 'fsconfig', key: 'lowerdir+', code: 'EINVAL' };
  const overlay = await t.mockImport<typeof import('../lib/overlay.js')>('../lib/overlay.js', {
    '../lib/native.js': {
      ...native,
      fsMount: async () => {
        calls.push('fsMount');
        throw Object.assign(new Error('stubbed'), failure);
      },
      mount: async (...args: Parameters<typeof native.mount>) => {
        calls.push('mount');
        return native.mount(...args);
      },
    },
  });
  const top = await e.base('top,x', { 'a.txt': 'top' });
  const bottom = await e.base('bottom', { 'a.txt': 'bottom', 'b.txt': 'b' });
  const [upper, work, merged] = await Promise.all(['upper', 'work', 'merged'].map((n) => e.base(n)));
  const layers = { lower: [top, bottom], upper: upper as string, work: work as string, volatile: true };
  await overlay.mountOverlay(layers, merged as string);
  t.same(calls, ['fsMount', 'mount']);
  t.same(fs.readdirSync(merged as string).sort(), ['a.txt', 'b.txt']);
  t.equal(fs.readFileSync(path.join(merged as string, 'a.txt'), 'utf8'), 'top');
  t.match(superOptions(merged as string), /lowerdir=[^,]*top\\,x:[^,]*bottom,/, 'the comma in a path escaped, the layers joined by a colon');
  failure = { syscall: 'fsconfig', key: 'upperdir', code: 'EINVAL' };
  await t.rejects(overlay.mountOverlay(layers, path.join(e.dir, 'elsewhere')), { message: 'stubbed', key: 'upperdir' }, 'any other failure is passed on');
  t.throws(() => overlay.overlayData({ ...layers, lower: Array(300).fill(top) }), { message: /more than the kernel's 4095: this kernel takes a stack of layers only in one string .* give fewer layers/ });
  t.same(overlay.overlayParams({ lower: ['/a', '/b'], upper: '/u', work: '/w' }).slice(0, 5), [['source', 'ontop'], ['lowerdir+', '/a'], ['lowerdir+', '/b'], ['upperdir', '/u'], ['workdir', '/w']]);
});

t.test('a tmpfs volume whose overlay cannot be mounted releases its tmpfs; one whose volume.json has no size gets the default', async (t) => {
  const e = await env(t);
  const real = await import('../lib/overlay.js');
  let fail = true;
  const { openDriver } = await t.mockImport<typeof import('../lib/driver.js')>('../lib/driver.js', {
    '../lib/mounter.js': await t.mockImport('../lib/mounter.js', {
      '../lib/overlay.js': {
        ...real,
        mountOverlay: async (...args: Parameters<typeof real.mountOverlay>) => {
          if (fail) throw Object.assign(new Error('EIO: stubbed, mount'), { code: 'EIO' });
          return real.mountOverlay(...args);
        },
      },
    }),
  });
  const d = await openDriver({ root: e.root, logger: e.log.logger });
  t.teardown(() => d.close());
  const base = await e.base();
  await d.create({ Name: 'v', Opts: { base, upper: 'tmpfs', size: '1m' } });
  await t.rejects(d.create({ Name: 'v', Opts: { base } }), { message: /already exists with other options \(volatile is true, not false; upper is tmpfs, not disk; size is 1048576, not unlimited\)/ });
  await t.rejects(d.mount({ Name: 'v', ID: 'a' }), { message: /volume v cannot be mounted: EIO: stubbed/ });
  const scratch = path.join(e.root, 'volumes/v/scratch');
  t.equal(mountCount(scratch), 0, 'no tmpfs left behind');
  fail = false;
  const metaFile = path.join(e.root, 'volumes/v/volume.json');
  const meta = JSON.parse(fs.readFileSync(metaFile, 'utf8'));
  delete meta.size;
  fs.writeFileSync(metaFile, JSON.stringify(meta));
  await d.mount({ Name: 'v', ID: 'b' });
  const size = Number(/size=([0-9]+)k/.exec(superOptions(scratch))?.[1]) * 1024;
  t.ok(size > 2 ** 20, `the default size, not the 1m of before (${size})`);
  await d.unmount({ Name: 'v', ID: 'b' });
});

// Never two overlays over one upper layer: what a first Mount does with
// what it finds on merged/ (a busy overlay left by an earlier use, a stack,
// an overlay unmounted by hand that containers still hold), against the
// real kernel.
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Driver } from '../lib/driver.js';
import { mount as sysMount, umount2 } from '../lib/native.js';
import type { Env } from './helpers/tmp.js';
import { env, mountCount } from './helpers/tmp.js';

type Tap = import('tap').Test;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Overlays on `merged` whose upperdir is `upper`, as the mount table says. */
function overlaysOver(upper: string): number {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(' - overlay ') && l.includes(`upperdir=${upper}`)).length;
}

/**
 * A volume whose first use left its overlay mounted and busy (a file held open through it), with a second
 * overlay over the same upper stacked on it by hand, itself held busy: the state a crash in the middle of
 * an earlier run could leave.
 */
async function stacked(t: Tap, volatile: boolean): Promise<{ e: Env; d: Driver; merged: string; upper: string; top: fsp.FileHandle; bottom: fsp.FileHandle }> {
  const e = await env(t);
  const d = await e.open();
  const base = await e.base('base', { 'a.txt': 'from base' });
  await d.create({ Name: 'v', Opts: { base, volatile: String(volatile) } });
  const { Mountpoint: merged } = await d.mount({ Name: 'v', ID: 'a' });
  const upper = path.join(e.root, 'volumes/v/upper');
  const bottom = await fsp.open(path.join(merged, 'kept'), 'w');
  t.teardown(() => bottom.close().catch(() => {}));
  await d.unmount({ Name: 'v', ID: 'a' });
  t.equal(mountCount(merged), 1, 'the busy overlay stayed');
  const work2 = path.join(e.dir, 'work2');
  await fsp.mkdir(work2);
  await sysMount('ontop', merged, 'overlay', 0, `lowerdir=${base},upperdir=${upper},workdir=${work2},index=off,metacopy=off,redirect_dir=off,xino=off`);
  const top = await fsp.open(path.join(merged, 'a.txt'), 'r');
  t.teardown(() => top.close().catch(() => {}));
  t.equal(mountCount(merged), 2);
  return { e, d, merged, upper, top, bottom };
}

t.test('a busy second overlay over the upper of a volume that keeps its changes is refused, naming its holder, and never detached', async (t) => {
  const { d, merged, upper, top, bottom } = await stacked(t, false);
  await t.rejects(d.mount({ Name: 'v', ID: 'b' }), {
    name: 'DriverError',
    message: new RegExp(`^volume v cannot be mounted: an earlier overlay of it is still mounted on ${merged} and in use \\(process ${process.pid} \\([^)]+\\)\\); a second overlay over the same changes is not safe`),
  });
  t.equal(mountCount(merged), 2, 'nothing detached, nothing added');
  t.equal(overlaysOver(upper), 2);
  await top.close();
  // With the top one free, it is unmounted and the lone overlay of the earlier use is reused.
  await d.mount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(merged), 1);
  t.equal(overlaysOver(upper), 1, 'one overlay over the upper');
  t.ok(fs.readdirSync(merged).includes('kept'), 'the reused overlay is the one with the changes');
  await bottom.close();
  await d.unmount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(merged), 0);
});

t.test('a second overlay kept busy by a mount below it is refused too, saying so', async (t) => {
  const { d, merged, top, bottom } = await stacked(t, false);
  await top.close();
  await bottom.close(); // no process holds a file in either: only the mount below keeps the top busy
  const sub = path.join(merged, 'sub');
  fs.mkdirSync(sub);
  await sysMount('ontop-test', sub, 'tmpfs', 0, 'size=1m');
  await t.rejects(d.mount({ Name: 'v', ID: 'b' }), { name: 'DriverError', message: /is still mounted on .* and in use \(by a mount below it, or a process ontop cannot see\)/ });
  t.equal(mountCount(merged), 2);
  await umount2(sub, 0);
  await d.mount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(merged), 1);
  await d.unmount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(merged), 0);
});

t.test('a volatile volume detaches busy leftovers and starts on a fresh upper, so no upper is shared', async (t) => {
  const { e, d, merged, upper, top, bottom } = await stacked(t, true);
  const oldUpper = fs.statSync(upper).ino;
  await d.mount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(merged), 1);
  t.not(fs.statSync(upper).ino, oldUpper, 'a new upper directory');
  t.same(fs.readdirSync(merged), ['a.txt'], 'the pristine base');
  t.equal(overlaysOver(upper), 1, 'one overlay over the new upper');
  t.ok(e.log.has('warn', /detaching a busy leftover mount/));
  await top.close();
  await bottom.close();
  await d.unmount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(merged), 0);
});

t.test('an overlay unmounted by hand while a container still holds it is not mounted a second time', async (t) => {
  const e = await env(t);
  const d = await e.open();
  const base = await e.base('base', { 'a.txt': 'A' });
  await d.create({ Name: 'v', Opts: { base } });
  const { Mountpoint } = await d.mount({ Name: 'v', ID: 'a' });
  const child = spawn('unshare', ['-m', '--propagation', 'private', 'sleep', '30'], { stdio: 'ignore' });
  e.children.push(child);
  // Until unshare has run, the child is still in our namespace: wait for a namespace of its own.
  const ours = fs.readlinkSync('/proc/self/ns/mnt');
  for (let i = 0; i < 300 && fs.readlinkSync(`/proc/${child.pid}/ns/mnt`) === ours; i++) await sleep(10);
  t.ok(fs.readFileSync(`/proc/${child.pid}/mountinfo`, 'utf8').includes(Mountpoint), 'the child holds the overlay');
  await umount2(Mountpoint, 0);
  await t.rejects(d.mount({ Name: 'v', ID: 'b' }), {
    name: 'DriverError',
    message: new RegExp(`its overlay was unmounted from ${Mountpoint} by hand, but processes still use it \\(process ${child.pid} \\(sleep\\)\\)`),
  });
  t.equal(mountCount(Mountpoint), 0, 'no second overlay');
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  await d.mount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(Mountpoint), 1, 'mounted again once nobody holds the old one');
  await d.unmount({ Name: 'v', ID: 'a' });
  await d.unmount({ Name: 'v', ID: 'b' });
  t.equal(mountCount(Mountpoint), 0);
});

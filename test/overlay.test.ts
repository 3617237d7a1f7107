// The overlay's mount data: escaping that keeps every byte of a path inside
// its option, checked against the kernel, and the one-page limit.
import t from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { mountsAt, readMountinfo } from '../lib/mountinfo.js';
import {
  MAX_DATA_BYTES,
  OVERLAY_OPTIONS,
  detachOverlay,
  escapeLayerPath,
  isOverlayOf,
  mountOverlay,
  overlayData,
  unmountOverlay,
} from '../lib/overlay.js';
import { env } from './helpers/tmp.js';

t.test('escapeLayerPath puts a backslash before \\ , and : only', async (t) => {
  t.equal(escapeLayerPath('/a,b:c\\d e\nf'), '/a\\,b\\:c\\\\d e\nf');
});

t.test('overlayData passes the fixed options and refuses data longer than 4095 bytes', async (t) => {
  t.equal(overlayData({ lower: '/l', upper: '/u', work: '/w' }), `lowerdir=/l,upperdir=/u,workdir=/w,${OVERLAY_OPTIONS}`);
  t.equal(OVERLAY_OPTIONS, 'index=off,metacopy=off,redirect_dir=off,xino=off');
  const long = '/' + 'a'.repeat(MAX_DATA_BYTES);
  t.throws(() => overlayData({ lower: long, upper: '/u', work: '/w' }), { name: 'DriverError', message: /more than the kernel's 4095: use a state root with a shorter path/ });
  const commas = '/' + ','.repeat(2050); // escaping doubles it: 4100 bytes
  t.throws(() => overlayData({ lower: commas, upper: '/u', work: '/w' }), { name: 'DriverError' });
});

async function layers(dir: string): Promise<{ upper: string; work: string; merged: string }> {
  const l = { upper: path.join(dir, 'u'), work: path.join(dir, 'w'), merged: path.join(dir, 'm') };
  for (const d of Object.values(l)) await fsp.mkdir(d, { recursive: true });
  return l;
}

t.test('a base literally named "/…/x,upperdir=/…/y" mounts that directory and never writes into /…/y', async (t) => {
  const e = await env(t);
  const y = await e.base('y');
  const base = await e.base(`x,upperdir=${y}`, { 'in-base': 'base' });
  await e.base('x', { 'wrong-x': '' });
  const l = await layers(path.join(e.dir, 'layers'));
  await mountOverlay({ lower: base, ...l }, l.merged);
  t.same(fs.readdirSync(l.merged), ['in-base'], 'the merged view is the oddly named base');
  fs.writeFileSync(path.join(l.merged, 'written'), 'w');
  t.same(fs.readdirSync(y), [], 'nothing was written to the would-be upperdir');
  t.same(fs.readdirSync(l.upper), ['written'], 'writes went to the real upper');
  const [entry] = mountsAt(await readMountinfo(), l.merged);
  t.ok(isOverlayOf(entry!, l.upper), 'mountinfo shows our upper, and isOverlayOf recognizes it');
  t.notOk(isOverlayOf(entry!, y));
  await unmountOverlay(l.merged);
  t.same(mountsAt(await readMountinfo(), l.merged), []);
});

t.test('bases with ":", "\\", a newline, spaces and tabs mount exactly themselves, and so do layers with ","', async (t) => {
  const e = await env(t);
  const base = await e.base('a:b\\c\nd e\tf,g', { here: '' });
  await e.base('a', { 'wrong-a': '' });
  const l = await layers(path.join(e.dir, 'lay,ers:\\ x'));
  await mountOverlay({ lower: base, ...l }, l.merged);
  t.same(fs.readdirSync(l.merged), ['here']);
  const [entry] = mountsAt(await readMountinfo(), l.merged);
  t.ok(isOverlayOf(entry!, l.upper), 'an upper with odd bytes is recognized in mountinfo');
  await detachOverlay(l.merged);
  t.same(mountsAt(await readMountinfo(), l.merged), []);
});

t.test('isOverlayOf rejects a mount that is not an ontop overlay', async (t) => {
  const base = { id: 1, parentId: 0, device: '0:1', root: '/', mountPoint: '/m', optional: [], superOptions: 'upperdir=/u' };
  t.notOk(isOverlayOf({ ...base, fstype: 'tmpfs', source: 'ontop' }, '/u'));
  t.notOk(isOverlayOf({ ...base, fstype: 'overlay', source: 'overlay' }, '/u'));
  t.ok(isOverlayOf({ ...base, fstype: 'overlay', source: 'ontop' }, '/u'));
});

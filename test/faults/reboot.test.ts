// The first start after a reboot, killed early: the records and overlays a
// start makes in this boot must never be taken for the last boot's by the
// next start. A real daemon, 5,000 volumes with stale records from "the last
// boot" (a boot id in the state root that is not the kernel's), a container
// (a private mount namespace) holding the view, and a real SIGKILL.
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { call } from '../helpers/client.js';
import { env, mountCount } from '../helpers/tmp.js';
import { requireBuild, spawnDaemon, sleep } from '../helpers/faults.js';

const VOLUMES = 5000;
const A = 'a'.repeat(64);
const B = 'b'.repeat(64);

function logLines(logs: string, msg: string): Array<Record<string, unknown>> {
  return logs
    .split('\n')
    .filter((l) => l.includes(`"msg":"${msg}"`))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

t.test('a start after a reboot killed right after serving a Mount never unmounts or doubles that overlay at the next start', async (t) => {
  requireBuild(t);
  const e = await env(t);
  const base = await e.base('base', { 'a.txt': 'A' });
  const volumes = path.join(e.root, 'volumes');
  fs.mkdirSync(volumes, { recursive: true });
  const meta = JSON.stringify({ version: 1, base, volatile: false, createdAt: new Date().toISOString(), options: { base } });
  for (let i = 0; i < VOLUMES; i++) {
    const dir = path.join(volumes, `v${i}`);
    fs.mkdirSync(path.join(dir, 'upper'), { recursive: true });
    fs.mkdirSync(path.join(dir, 'users'));
    fs.writeFileSync(path.join(dir, 'volume.json'), meta);
    fs.writeFileSync(path.join(dir, 'users', 'c'.repeat(64)), '1'); // a container of the last boot
  }
  fs.writeFileSync(path.join(e.root, 'boot-id'), 'a-boot-that-is-not-this-one\n');
  const socket = path.join(e.dir, 'x.sock');

  const first = spawnDaemon(t, e.root, socket);
  const started = Date.now();
  await first.ready;
  t.comment(`socket ready after ${Date.now() - started} ms with ${VOLUMES} volumes to clear`);
  t.match(logLines(first.logs(), 'state root recovered')[0], { rebooted: true, recordsCleared: VOLUMES });
  const { json } = await call(socket, '/VolumeDriver.Mount', { Name: 'v0', ID: A });
  const merged = path.join(volumes, 'v0', 'merged');
  t.same(json, { Mountpoint: merged });

  // A container takes the view into a mount namespace of its own.
  const container = spawn('unshare', ['-m', '--propagation', 'private', 'sleep', '60'], { stdio: 'ignore' });
  e.children.push(container);
  const ours = fs.readlinkSync('/proc/self/ns/mnt');
  for (let i = 0; i < 300 && fs.readlinkSync(`/proc/${container.pid}/ns/mnt`) === ours; i++) await sleep(10);
  t.ok(fs.readFileSync(`/proc/${container.pid}/mountinfo`, 'utf8').includes(merged), 'the container holds the overlay');

  first.proc.kill('SIGKILL');
  await first.exited;

  const second = spawnDaemon(t, e.root, socket);
  await second.ready;
  t.match(logLines(second.logs(), 'state root recovered')[0], { rebooted: false, recordsCleared: 0, unmounted: 0 }, 'this boot is not taken for the last');
  t.equal(mountCount(merged), 1, 'the overlay of this boot is still mounted');
  t.match((await call(socket, '/VolumeDriver.Get', { Name: 'v0' })).json, { Volume: { Status: { mounted: true, users: 1 } } });
  t.same((await call(socket, '/VolumeDriver.Mount', { Name: 'v0', ID: B })).json, { Mountpoint: merged });
  t.equal(mountCount(merged), 1, 'the next Mount shares it: no second overlay over the same upper');
  t.same((await call(socket, '/VolumeDriver.Unmount', { Name: 'v0', ID: A })).json, {});
  t.same((await call(socket, '/VolumeDriver.Unmount', { Name: 'v0', ID: B })).json, {});
  t.equal(mountCount(merged), 0);
  container.kill('SIGKILL');
  second.proc.kill('SIGTERM');
  t.equal(await second.exited, 0);
});

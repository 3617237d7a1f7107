// End to end, through a real dockerd: the daemon dies (SIGKILL) while
// containers use its volumes, and comes back. dockerd caches an activated
// plugin and never activates it again, so the new process must answer at
// once; running containers keep their mounts; the later Unmount must succeed.
import t from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { setupE2E, socketAnswers } from '../helpers/daemon.js';
import { docker, inspectVolume, isMounted, liveMountpoint, mountsUnder, Scope, scratchDir, SH, snapshot, waitFor, writeTree } from '../helpers/docker.js';

const d = await setupE2E(t);

if (d) {
  for (const volatile of [false, true]) {
    t.test(`SIGKILL of the daemon while a container uses a volume, then a restart: the container finishes, its unmount succeeds, the data is there, nothing stays mounted (volatile=${volatile})`, async (t) => {
      const base = await scratchDir(t, 'base');
      const s = new Scope(t);
      await writeTree(base, { 'base.txt': 'base\n' });
      const before = await snapshot(base);
      const v = await s.createVolume(d.name, volatile ? { base, volatile: 'true' } : { base });
      const a = await s.start([`${v}:/d`], SH + 'echo before > /d/before; await_file /d/go; cat /d/base.txt; echo after > /d/after; sync');
      const mp = await liveMountpoint(v);
      t.ok(await waitFor(() => fs.existsSync(path.join(mp, 'before')), 30_000), 'the container runs and writes');

      const sig = await d.kill('SIGKILL');
      t.equal(sig, 'SIGKILL', 'the daemon is killed');
      t.notOk(await socketAnswers(d.socket), 'nobody answers on its socket');
      t.ok(isMounted(mp), 'the overlay stays mounted for the running container');

      // While the daemon is down the container keeps working.
      const alive = await docker(['exec', a, 'cat', '/d/before']);
      t.equal(alive.stdout, 'before\n', 'the container still reads its volume');

      await d.restart();
      t.pass('the daemon restarts and answers on the same socket');
      t.ok(isMounted(mp), 'start-up recovery keeps the overlay of a container that still runs');

      const get = await docker(['volume', 'inspect', v]);
      t.equal(get.code, 0, 'dockerd reaches the restarted daemon without a new handshake', { stderr: get.stderr });
      const peer = await s.run([`${v}:/d`], 'cat /d/before');
      t.equal(peer.stdout, 'before\n', 'a new container after the restart shares the running container’s view');

      await fsp.writeFile(path.join(mp, 'go'), '');
      const ra = await s.wait(a);
      t.equal(ra.code, 0, 'the container finishes normally', { logs: ra.logs });
      t.equal(ra.logs, 'base\n', 'it still read the base after the restart');

      t.ok(await waitFor(() => !isMounted(mp), 10_000), 'its unmount succeeds: nothing stays mounted at the mountpoint');
      t.same(mountsUnder(d.root), [], 'nothing stays mounted under the state root');
      const unmountErrors = d.records().filter((r) => /unmount/i.test(String(r.msg)) && (r.level === 'error' || r.level === 'warn'));
      t.same(unmountErrors, [], 'the daemon logged no unmount failure');

      const next = await s.run([`${v}:/d`], 'ls -A /d | tr "\\n" " "; cat /d/after 2>/dev/null || true');
      t.equal(next.code, 0, 'the container exits 0', { stderr: next.stderr });
      t.equal(
        next.stdout,
        volatile ? 'base.txt ' : 'after base.txt before go after\n',
        volatile ? 'a volatile volume is pristine once its last user is gone' : 'the data written before and after the crash is there',
      );
      t.same(await snapshot(base), before, 'the base is unchanged');
    });
  }

  t.test('SIGKILL of the daemon with no user, then a restart: its volumes are all still there and usable', async (t) => {
    const base = await scratchDir(t, 'base');
    const s = new Scope(t);
    await writeTree(base, { 'base.txt': 'base\n' });
    const v = await s.createVolume(d.name, { base });
    const w = await s.run([`${v}:/d`], 'echo kept > /d/kept');
    t.equal(w.code, 0, 'the container exits 0', { stderr: w.stderr });
    t.equal(await d.kill('SIGKILL'), 'SIGKILL');
    await d.restart();
    const info = await inspectVolume(v);
    t.equal(info.Driver, d.name, 'dockerd still finds the volume');
    const r = await s.run([`${v}:/d`], 'cat /d/kept /d/base.txt');
    t.equal(r.stdout, 'kept\nbase\n', 'the data survives the crash');
    t.same(mountsUnder(d.root), [], 'nothing stays mounted under the state root');
  });

  t.test('SIGTERM stops the daemon cleanly: exit 0, the socket is removed, a restart serves the same volumes', async (t) => {
    const base = await scratchDir(t, 'base');
    const s = new Scope(t);
    await writeTree(base, { 'base.txt': 'base\n' });
    const v = await s.createVolume(d.name, { base });
    t.equal(await d.stop(), 0, 'exit status 0 on SIGTERM');
    t.notOk(fs.existsSync(d.socket), 'the socket file is gone, so dockerd does not wait on a dead plugin');
    await d.restart();
    const r = await s.run([`${v}:/d`], 'cat /d/base.txt');
    t.equal(r.stdout, 'base\n');
  });
}

// End to end, through a real dockerd: many users of one volume at once, and a
// host process that keeps the mountpoint busy while containers come and go.
import t from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { setupE2E } from '../helpers/daemon.js';
import { isMounted, liveMountpoint, mountsUnder, Scope, scratchDir, SH, snapshot, waitFor, writeTree } from '../helpers/docker.js';

const d = await setupE2E(t);

if (d) {
  t.test('eight containers started at once on one volume share one view, all writes land, nothing stays mounted', async (t) => {
    const base = await scratchDir(t, 'base');
    const s = new Scope(t);
    await writeTree(base, { 'base.txt': 'base\n' });
    const before = await snapshot(base);
    const v = await s.createVolume(d.name, { base });
    const N = 8;
    // Each writes its own file and waits until it sees all eight: the eight
    // run at the same time and see one another's writes.
    const results = await Promise.all(
      Array.from({ length: N }, (_, i) =>
        s.run(
          [`${v}:/d`],
          `cat /d/base.txt >/dev/null; echo ${i} > /d/f${i}; n=0; ` +
            `while [ "$(ls /d | grep -c '^f')" -lt ${N} ]; do sleep 0.1; n=$((n+1)); [ $n -lt 900 ] || exit 3; done; echo ok`,
        ),
      ),
    );
    results.forEach((r, i) => t.same({ code: r.code, out: r.stdout }, { code: 0, out: 'ok\n' }, `container ${i} saw all ${N} writes`, { stderr: r.stderr }));

    t.same(mountsUnder(d.root), [], 'nothing stays mounted under the state root');
    const all = await s.run([`${v}:/d`], `for i in $(seq 0 ${N - 1}); do cat /d/f$i; done | tr "\\n" " "`);
    t.equal(all.stdout, Array.from({ length: N }, (_, i) => `${i} `).join(''), 'every write landed');
    t.same(await snapshot(base), before, 'the base is unchanged');
  });

  t.test('eight containers started at once on eight new volumes of one base each get their own volume', async (t) => {
    const base = await scratchDir(t, 'base');
    const s = new Scope(t);
    await writeTree(base, { 'base.txt': 'base\n' });
    const vols = await Promise.all(Array.from({ length: 8 }, () => s.createVolume(d.name, { base })));
    const results = await Promise.all(vols.map((v, i) => s.run([`${v}:/d`], `echo ${i} > /d/mine; ls /d | tr "\\n" " "`)));
    results.forEach((r, i) => t.same({ code: r.code, out: r.stdout }, { code: 0, out: 'base.txt mine ' }, `container ${i} sees the base and its own write only`, { stderr: r.stderr }));
    const back = await Promise.all(vols.map((v) => s.run([`${v}:/d`], 'cat /d/mine')));
    t.same(back.map((r) => r.stdout), vols.map((_, i) => `${i}\n`), 'each volume kept its own write');
    t.same(mountsUnder(d.root), [], 'nothing stays mounted under the state root');
  });

  for (const volatile of [false, true]) {
    t.test(`a host process holding a file open in the mountpoint while the container exits does not break later containers (volatile=${volatile})`, async (t) => {
      const base = await scratchDir(t, 'base');
      const s = new Scope(t);
      await writeTree(base, { 'base.txt': 'base\n' });
      const before = await snapshot(base);
      const v = await s.createVolume(d.name, volatile ? { base, volatile: 'true' } : { base });
      const a = await s.start([`${v}:/d`], SH + 'echo held > /d/held.txt; await_file /d/go');
      const mp = await liveMountpoint(v);
      t.ok(await waitFor(() => fs.existsSync(path.join(mp, 'held.txt')), 30_000), 'the host sees the container’s file in the mountpoint');
      const fh = await fsp.open(path.join(mp, 'held.txt'), 'r');
      let closed = false;
      t.teardown(() => (closed ? undefined : fh.close()));
      const cwdHolder = await fsp.opendir(mp);
      t.teardown(() => cwdHolder.close().catch(() => {}));

      await fsp.writeFile(path.join(mp, 'go'), '');
      const ra = await s.wait(a);
      t.equal(ra.code, 0, 'the container exits normally while the host holds a file open', { logs: ra.logs });
      t.equal((await fh.readFile('utf8')), 'held\n', 'the host still reads its open file');

      const b = await s.run([`${v}:/d`], 'ls -A /d | tr "\\n" " "; echo b > /d/b');
      t.equal(b.code, 0, 'the next container starts', { stderr: b.stderr });
      t.equal(b.stdout, volatile ? 'base.txt ' : 'base.txt go held.txt ', volatile ? 'a volatile volume starts pristine' : 'it sees the earlier writes');
      const c = await s.run([`${v}:/d`], 'ls -A /d | tr "\\n" " "');
      t.equal(c.stdout, volatile ? 'base.txt ' : 'b base.txt go held.txt ', 'the one after it sees a consistent view too');

      await fh.close();
      closed = true;
      await cwdHolder.close();
      const e = await s.run([`${v}:/d`], 'cat /d/base.txt; ls -A /d | wc -l');
      t.equal(e.code, 0, 'the container exits 0', { stderr: e.stderr });
      t.equal(e.stdout, volatile ? 'base\n1\n' : 'base\n4\n', 'after the host lets go, containers still work');
      t.ok(await waitFor(() => !isMounted(mp), 5_000), 'once nobody uses it, the mountpoint is unmounted');
      t.same(mountsUnder(d.root), [], 'no overlay is left behind under the state root');
      t.same(await snapshot(base), before, 'the base is unchanged');
    });
  }
}

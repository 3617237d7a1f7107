// End to end, through a real dockerd: a container filling an
// upper=tmpfs,size=8m volume is refused with ENOSPC at 8 MiB and nothing of
// it reaches the state root; a stacked base shows its top layer over the
// lower ones; docker volume inspect shows the shape.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { setupE2E } from '../helpers/daemon.js';
import { bytesOnDisk } from '../helpers/tmp.js';
import { docker, inspectVolume, mountsUnder, RUN_ID, Scope, scratchDir, snapshot, uniq, writeTree } from '../helpers/docker.js';

const d = await setupE2E(t);


if (d) {
  t.test('upper=tmpfs,size=8m: a container filling it gets "No space left on device" at 8 MiB; nothing lands in the state root; the next container starts clean', async (t) => {
    const base = await scratchDir(t, 'base');
    await writeTree(base, { 'a.txt': 'A\n' });
    const s = new Scope(t);
    const v = await s.createVolume(d.name, { base, upper: 'tmpfs', size: '8m' });
    t.match((await inspectVolume(v)).Status, { upperKind: 'tmpfs', size: 8 * 2 ** 20, volatile: true, layers: [base] });
    const r = await s.run([`${v}:/d`], 'dd if=/dev/zero of=/d/big bs=1M count=64 2>&1; echo "exit $?"; ls -l /d/big; cat /d/a.txt');
    t.match(r.stdout, /No space left on device/, 'dd is refused');
    t.match(r.stdout, /exit 1/);
    const size = Number(/ (\d+) [A-Z][a-z]{2} .* \/d\/big/.exec(r.stdout)?.[1]);
    t.ok(size >= 7 * 2 ** 20 && size <= 8 * 2 ** 20, `the file stopped at the limit (${size} bytes)`);
    t.match(r.stdout, /A\n$/, 'the base shows through');
    t.ok(bytesOnDisk(d.root) < 256 * 1024, 'none of it reached the state root');
    t.same(mountsUnder(d.root), [], 'the overlay and its tmpfs are gone with the container');
    const next = await s.run([`${v}:/d`], 'ls /d');
    t.equal(next.stdout, 'a.txt\n', 'the next container sees the pristine base');
  });

  t.test('a stacked base: the container sees the top layer over the lower ones; its changes stay in the volume; no layer changes', async (t) => {
    const top = await scratchDir(t, 'top');
    const bottom = await scratchDir(t, 'bottom');
    await writeTree(top, { 'a.txt': 'top\n' });
    await writeTree(bottom, { 'a.txt': 'bottom\n', 'b.txt': 'b\n' });
    const before = [await snapshot(top), await snapshot(bottom)];
    const s = new Scope(t);
    const v = await s.createVolume(d.name, { base: `${top}:${bottom}` });
    t.match((await inspectVolume(v)).Status, { base: top, layers: [top, bottom], upperKind: 'disk' });
    const r = await s.run([`${v}:/d`], 'cat /d/a.txt /d/b.txt; echo new > /d/b.txt');
    t.equal(r.stdout, 'top\nb\n');
    const again = await s.run([`${v}:/d`], 'cat /d/b.txt');
    t.equal(again.stdout, 'new\n', 'the change persists in the volume');
    t.same([await snapshot(top), await snapshot(bottom)], before, 'no layer was written');
  });

  t.test('size= on a disk upper off btrfs is refused by docker volume create, naming what would allow it', async (t) => {
    const base = await scratchDir(t, 'base');
    // Not in a Scope: removing a name dockerd never made is slow (it asks every plugin it knows).
    const name = uniq(`oe${RUN_ID}-v`);
    const r = await docker(['volume', 'create', '-d', d.name, '-o', `base=${base}`, '-o', 'size=64m', name]);
    t.not(r.code, 0);
    t.match(r.stderr, /option size cannot bound a disk upper .* Use upper=tmpfs/);
    t.same(fs.readdirSync(path.join(d.root, 'volumes')), []);
  });
}

// End to end, through a real dockerd: what containers see of a volume, and
// what never reaches its base. Copy-on-write, sharing between running
// containers, volatile volumes, docker cp (moby#47964), large files.
import t from 'tap';
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { setupE2E } from '../helpers/daemon.js';
import {
  docker,
  dockerOk,
  mountsUnder,
  Scope,
  scratchDir,
  SH,
  snapshot,
  waitFor,
  writeTree,
} from '../helpers/docker.js';

const d = await setupE2E(t);

if (d) {
  const BASE = {
    'keep.txt': 'keep\n',
    'change.txt': 'old\n',
    'delete.txt': 'bye\n',
    'sub/deep.txt': 'deep\n',
    'gone/x.txt': 'x\n',
  };

  t.test('copy-on-write: a container reads the base, its deletes, changes and additions stay in the volume, the base is unchanged, the next container sees the changes', async (t) => {
    const base = await scratchDir(t, 'base');
    const s = new Scope(t);
    await writeTree(base, BASE);
    const before = await snapshot(base);
    const v = await s.createVolume(d.name, { base });

    const first = await s.run(
      [`${v}:/d`],
      'set -e; cat /d/keep.txt /d/sub/deep.txt /d/change.txt; ' +
        'rm /d/delete.txt; rm -r /d/gone; echo new > /d/change.txt; echo more >> /d/sub/deep.txt; ' +
        'echo added > /d/added.txt; mkdir /d/newdir; echo n > /d/newdir/n.txt; chmod 600 /d/keep.txt',
    );
    t.equal(first.code, 0, 'first container succeeds', { stderr: first.stderr });
    t.equal(first.stdout, 'keep\ndeep\nold\n', 'the first container reads the base');
    t.same(await snapshot(base), before, 'the base on the host is unchanged (content, modes, mtimes)');

    const second = await s.run(
      [`${v}:/d`],
      'cd /d; ls -A | sort | tr "\\n" " "; echo; cat change.txt sub/deep.txt added.txt newdir/n.txt; stat -c %a keep.txt; ' +
        'test ! -e delete.txt && test ! -e gone && echo deleted-stay-deleted',
    );
    t.equal(second.code, 0, 'the container exits 0', { stderr: second.stderr });
    t.equal(
      second.stdout,
      'added.txt change.txt keep.txt newdir sub \nnew\ndeep\nmore\nadded\nn\n600\ndeleted-stay-deleted\n',
      'the next container sees every change of the first',
    );
    t.same(await snapshot(base), before, 'the base is still unchanged');
    t.same(mountsUnder(d.root), [], 'the overlay is unmounted once no container uses the volume');
  });

  t.test('volatile: running containers share changes; they survive while any user remains; after the last exits the next container sees the pristine base', async (t) => {
    const base = await scratchDir(t, 'base');
    const s = new Scope(t);
    await writeTree(base, { 'base.txt': 'orig\n' });
    const before = await snapshot(base);
    const v = await s.createVolume(d.name, { base, volatile: 'true' });

    const a = await s.start([`${v}:/d`], SH + 'echo a > /d/a; echo changed > /d/base.txt; await_file /d/stop; cat /d/b');
    const b = await s.run([`${v}:/d`], SH + 'await_file /d/a; cat /d/a /d/base.txt; echo b > /d/b');
    t.equal(b.code, 0, 'the container exits 0', { stderr: b.stderr });
    t.equal(b.stdout, 'a\nchanged\n', 'a second running container sees the first one’s changes');

    const c = await s.run([`${v}:/d`], 'cat /d/a /d/b /d/base.txt; touch /d/stop');
    t.equal(c.code, 0, 'the container exits 0', { stderr: c.stderr });
    t.equal(c.stdout, 'a\nb\nchanged\n', 'changes survive the exit of one user while another still runs');

    const ra = await s.wait(a);
    t.equal(ra.code, 0, 'the first container exits cleanly', { logs: ra.logs });
    t.equal(ra.logs, 'b\n', 'the first container saw the second one’s write');

    const after = await s.run([`${v}:/d`], 'ls -A /d; cat /d/base.txt');
    t.equal(after.code, 0, 'the container exits 0', { stderr: after.stderr });
    t.equal(after.stdout, 'base.txt\norig\n', 'after the last user exits, the next container sees the pristine base');
    t.same(await snapshot(base), before, 'the base is unchanged');

    const again = await s.run([`${v}:/d`], 'echo x > /d/x; cat /d/base.txt');
    t.equal(again.stdout, 'orig\n');
    const fresh = await s.run([`${v}:/d`], 'ls -A /d');
    t.equal(fresh.stdout, 'base.txt\n', 'each new round starts pristine');
  });

  t.test('sharing: a running container sees another one’s writes at once, also through --volumes-from and at another path', async (t) => {
    const base = await scratchDir(t, 'base');
    const s = new Scope(t);
    await writeTree(base, { 'seed.txt': 'seed\n' });
    const v = await s.createVolume(d.name, { base });

    const a = await s.start([`${v}:/d`], SH + 'await_file /d/ping; cat /d/ping; echo pong > /d/pong; await_file /d/done');
    const started = Date.now();
    const b = await s.run([], SH + 'echo ping > /d/ping; await_file /d/pong; cat /d/pong /d/seed.txt', ['--volumes-from', a]);
    t.equal(b.code, 0, 'the --volumes-from container gets the volume at the same path', { stderr: b.stderr });
    t.equal(b.stdout, 'pong\nseed\n', 'each sees the other’s write while both run');
    t.ok(Date.now() - started < 30_000, 'the exchange takes seconds, not a remount');

    const c = await s.run([`${v}:/elsewhere:ro`], 'cat /elsewhere/ping /elsewhere/pong; touch /elsewhere/nope 2>/dev/null && echo writable || echo read-only');
    t.equal(c.stdout, 'ping\npong\nread-only\n', 'a read-only user at another path sees the same view');

    const done = await s.run([`${v}:/d`], 'touch /d/done');
    t.equal(done.code, 0, 'the container exits 0', { stderr: done.stderr });
    const ra = await s.wait(a);
    t.equal(ra.code, 0, 'the detached container exits 0', { logs: ra.logs });
    t.equal(ra.logs, 'ping\n', 'the first container read the --volumes-from container’s write');
  });

  for (const volatile of [false, true]) {
    t.test(`docker cp on a running container does not reset its view (moby#47964), volatile=${volatile}`, async (t) => {
      const base = await scratchDir(t, 'base');
      const out = await scratchDir(t, 'cp');
      const s = new Scope(t);
      await writeTree(base, { 'base.txt': 'base\n' });
      const v = await s.createVolume(d.name, volatile ? { base, volatile: 'true' } : { base });

      const a = await s.start([`${v}:/d`], SH + 'echo 1 > /d/state; await_file /d/go; cat /d/state /d/in.txt /d/fromB');
      const ready = await waitFor(async () => (await docker(['exec', a, 'cat', '/d/state'])).stdout === '1\n', 30_000, 200);
      t.ok(ready, 'the first container wrote its state');

      const cpOut = await docker(['cp', `${a}:/d/state`, path.join(out, 'state')]);
      t.equal(cpOut.code, 0, 'docker cp out of the running container works', { stderr: cpOut.stderr });
      t.equal(await fsp.readFile(path.join(out, 'state'), 'utf8'), '1\n', 'docker cp copies the container’s view');
      await fsp.writeFile(path.join(out, 'in.txt'), 'copied in\n');
      const cpIn = await docker(['cp', path.join(out, 'in.txt'), `${a}:/d/in.txt`]);
      t.equal(cpIn.code, 0, 'docker cp into the running container works', { stderr: cpIn.stderr });

      const b = await s.run([`${v}:/d`], 'cat /d/state /d/in.txt; echo B > /d/fromB; touch /d/go');
      t.equal(b.code, 0, 'the container exits 0', { stderr: b.stderr });
      t.equal(b.stdout, '1\ncopied in\n', 'a new container after docker cp shares the running container’s view');

      const ra = await s.wait(a);
      t.equal(ra.code, 0, 'the detached container exits 0', { logs: ra.logs });
      t.equal(ra.logs, '1\ncopied in\nB\n', 'the first container still shares the view with the new one');

      t.same(mountsUnder(d.root), [], 'nothing stays mounted once both are gone');
      const next = await s.run([`${v}:/d`], 'ls -A /d | tr "\\n" " "');
      t.equal(next.stdout, volatile ? 'base.txt ' : 'base.txt fromB go in.txt state ', volatile ? 'then pristine' : 'then persisted');
    });
  }

  t.test('a 10 MiB random file keeps its checksum: read from the base, copied up, written and read back across containers', async (t) => {
    const base = await scratchDir(t, 'base');
    const s = new Scope(t);
    const data = crypto.randomBytes(10 * 1024 * 1024);
    await fsp.writeFile(path.join(base, 'big.bin'), data);
    const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');
    const baseSum = sha(data);
    const appendedSum = sha(Buffer.concat([data, Buffer.from('x\n')]));
    const v = await s.createVolume(d.name, { base });

    const first = await s.run(
      [`${v}:/d`],
      'set -e; sha256sum /d/big.bin | cut -d" " -f1; head -c 10485760 /dev/urandom > /d/made.bin; ' +
        'sha256sum /d/made.bin | cut -d" " -f1; echo x >> /d/big.bin; sha256sum /d/big.bin | cut -d" " -f1; sync',
    );
    t.equal(first.code, 0, 'the container exits 0', { stderr: first.stderr });
    const [read, made, appended] = first.stdout.trim().split('\n');
    t.equal(read, baseSum, 'the container reads the base file intact');
    t.equal(appended, appendedSum, 'the copied-up file holds the base bytes plus the append');
    t.match(made, /^[0-9a-f]{64}$/);

    const second = await s.run([`${v}:/d`], 'sha256sum /d/made.bin /d/big.bin | cut -d" " -f1; stat -c %s /d/made.bin');
    t.equal(second.code, 0, 'the container exits 0', { stderr: second.stderr });
    t.equal(second.stdout, `${made}\n${appendedSum}\n10485760\n`, 'the next container reads both files back intact');
    t.equal(sha(await fsp.readFile(path.join(base, 'big.bin'))), baseSum, 'the base file is unchanged');
  });

  t.test('removing a volume leaves its base, and a new volume on the same base starts from it', async (t) => {
    const base = await scratchDir(t, 'base');
    const s = new Scope(t);
    await writeTree(base, BASE);
    const before = await snapshot(base);
    const v = await s.createVolume(d.name, { base });
    const w = await s.run([`${v}:/d`], 'rm -r /d/*; echo only > /d/only.txt');
    t.equal(w.code, 0, 'the container exits 0', { stderr: w.stderr });
    await dockerOk(['volume', 'rm', v]);
    s.volumes.delete(v);
    t.same(await snapshot(base), before, 'the base is whole after the volume is removed');
    const v2 = await s.createVolume(d.name, { base });
    const r = await s.run([`${v2}:/d`], 'ls -A /d | tr "\\n" " "');
    t.equal(r.stdout, 'change.txt delete.txt gone keep.txt sub ', 'a new volume on the same base sees the base, not the old changes');
  });
}

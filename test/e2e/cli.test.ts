// End to end, through a real dockerd: the docker volume commands, and every
// kind of bad input a user can give `docker volume create`. dockerd passes any
// name and any -o options to a plugin as they are (checked against dockerd
// 20.10: names such as "..", "a/b", "../x", " x" and 300 characters all reach
// the driver), so the driver's message is what the user reads:
// "Error response from daemon: create NAME: <Err>".
import t from 'tap';
import type { Test } from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { call } from '../helpers/client.js';
import { setupE2E } from '../helpers/daemon.js';
import { docker, dockerOk, inspectVolume, isMounted, liveMountpoint, mountsUnder, RUN_ID, Scope, scratchDir, SH, snapshot, uniq, waitFor, writeTree } from '../helpers/docker.js';

const d = await setupE2E(t);
/** Names that refused() tried, checked against `docker volume ls` once at the end. */
const refusedNames: string[] = [];

/** Every path under dir (relative, sorted), to show that nothing was created. */
async function listing(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(rel: string): Promise<void> {
    for (const e of await fsp.readdir(path.join(dir, rel), { withFileTypes: true })) {
      const r = path.join(rel, e.name);
      out.push(e.isDirectory() ? r + '/' : r);
      // What trash/ holds is on its way out: earlier tests' removed volumes, deleted in the background.
      if (e.isDirectory() && r !== 'trash') await walk(r);
    }
  }
  await walk('');
  return out.sort();
}

if (d) {
  t.test('docker volume ls and inspect show the driver, Mountpoint, CreatedAt, Options and Status; rm removes the volume and leaves the base', async (t) => {
    const base = await scratchDir(t, 'base');
    const s = new Scope(t);
    await writeTree(base, { 'a.txt': 'a\n', 'dir/b.txt': 'b\n' });
    const before = await snapshot(base);
    const t0 = Date.now();
    const v = s.volume();
    const created = await docker(['volume', 'create', '-d', d.name, '-o', `base=${base}`, v]);
    t.equal(created.code, 0, 'docker volume create succeeds', { stderr: created.stderr });
    t.equal(created.stdout.trim(), v, 'docker volume create prints the name');

    const again = await docker(['volume', 'create', '-d', d.name, '-o', `base=${base}`, v]);
    t.equal(again.code, 0, 'creating the same volume again with the same options succeeds', { stderr: again.stderr });

    const ls = await dockerOk(['volume', 'ls', '--filter', `driver=${d.name}`, '--format', '{{.Driver}} {{.Name}}']);
    t.equal(ls, `${d.name} ${v}`, 'docker volume ls lists it under the driver');

    const info = await inspectVolume(v);
    t.equal(info.Name, v);
    t.equal(info.Driver, d.name, 'inspect shows the driver');
    t.equal(info.Scope, 'local', 'the scope is local');
    t.ok(info.Mountpoint === '' || info.Mountpoint.startsWith(d.root + '/'), 'while unused, Mountpoint is empty or in the state root', { Mountpoint: info.Mountpoint });
    const createdAt = Date.parse(info.CreatedAt);
    t.ok(Number.isFinite(createdAt), `CreatedAt is a date: ${info.CreatedAt}`);
    t.ok(createdAt >= t0 - 2000 && createdAt <= Date.now() + 2000, 'CreatedAt is the creation time');
    t.same(info.Options, { base }, 'inspect shows the options given');
    t.type(info.Status, 'object', 'Status is an object');
    t.not(info.Status, null);
    t.match(JSON.stringify(info.Status), base, 'Status tells the base');

    const inUse = await s.start([`${v}:/d`], SH + 'echo w > /d/w; await_file /d/stop');
    await waitFor(async () => (await docker(['exec', inUse, 'cat', '/d/w'])).code === 0, 30_000, 200);
    const mp = await liveMountpoint(v);
    t.ok(path.isAbsolute(mp), 'while in use, inspect shows the Mountpoint, an absolute path', { Mountpoint: mp });
    t.ok(mp.startsWith(d.root + '/'), 'Mountpoint lies in the daemon’s state root');
    t.ok(isMounted(mp), 'the Mountpoint is a mount point while in use');
    t.equal(fs.readFileSync(path.join(mp, 'w'), 'utf8'), 'w\n', 'the host sees the container’s write at the Mountpoint');
    const busy = await docker(['volume', 'rm', v]);
    t.not(busy.code, 0, 'docker volume rm refuses a volume in use');
    t.match(busy.stderr, /in use/);
    const still = await s.run([`${v}:/d`], 'cat /d/w; touch /d/stop');
    t.equal(still.stdout, 'w\n', 'the refused rm left the volume’s data');
    t.equal((await s.wait(inUse)).code, 0);
    await dockerOk(['rm', inUse]);
    s.containers.delete(inUse);

    const rm = await docker(['volume', 'rm', v]);
    t.equal(rm.code, 0, 'docker volume rm removes it', { stderr: rm.stderr });
    t.equal(rm.stdout.trim(), v);
    s.volumes.delete(v);
    // Not `docker volume inspect`: for a name it does not know, dockerd asks
    // every plugin it ever used, 15 s of retries for each one that is gone.
    t.equal(await dockerOk(['volume', 'ls', '--filter', `driver=${d.name}`, '-q']), '', 'ls no longer lists it');
    t.ok((await call(d.socket, '/VolumeDriver.Get', { Name: v })).json?.Err, 'the driver no longer knows it');
    t.ok(await waitFor(() => !fs.existsSync(mp), 10_000), 'its directory is gone from the state root');
    t.same(mountsUnder(d.root), [], 'nothing is mounted under the state root');
    t.same(await snapshot(base), before, 'the base is untouched');
  });

  t.test('docker volume create again with another base keeps the existing volume and its first base', async (t) => {
    const base1 = await scratchDir(t, 'base');
    const base2 = await scratchDir(t, 'base');
    const s = new Scope(t);
    await writeTree(base1, { 'which.txt': 'one\n' });
    await writeTree(base2, { 'which.txt': 'two\n' });
    const v = await s.createVolume(d.name, { base: base1 });
    // dockerd finds the volume through Get and answers with it without a
    // Create (it does not compare options), so this may succeed; it must not
    // change the volume.
    await docker(['volume', 'create', '-d', d.name, '-o', `base=${base2}`, v]);
    t.same((await inspectVolume(v)).Options, { base: base1 }, 'dockerd keeps the first options');
    const seen = await s.run([`${v}:/d`], 'cat /d/which.txt');
    t.equal(seen.stdout, 'one\n', 'the volume keeps its first base');
  });

  // Each bad input through the docker CLI: the driver's own message reaches
  // the user, and nothing is created, neither in dockerd nor on disk.
  const scratch = await fsp.mkdtemp(path.join(os.tmpdir(), `ontop-e2e-${RUN_ID}-bad-`));
  t.teardown(() => fsp.rm(scratch, { recursive: true, force: true }));
  const aFile = path.join(scratch, 'a-file');
  const okBase = path.join(scratch, 'ok-base');
  await fsp.writeFile(aFile, 'not a directory\n');
  await fsp.mkdir(okBase);

  const badOptions: Array<[string, string[], RegExp]> = [
    ['a missing base option', [], /base/],
    ['a relative base', ['-o', 'base=relative/dir'], /base|absolute/i],
    ['a base that does not exist', ['-o', `base=${scratch}/does-not-exist`], /base|exist|ENOENT/i],
    ['a base that is a file', ['-o', `base=${aFile}`], /base|director|ENOTDIR/i],
    ['an empty base', ['-o', 'base='], /base/],
    ['an unknown option', ['-o', `base=${okBase}`, '-o', 'foo=bar'], /foo/],
    ['a bad volatile value', ['-o', `base=${okBase}`, '-o', 'volatile=maybe'], /volatile/],
    ['a base that smuggles overlay options after a comma', ['-o', `base=${scratch}/nope,upperdir=${scratch}/evil`], /base/],
  ];
  for (const [what, opts, about] of badOptions) {
    t.test(`docker volume create with ${what} fails with the driver's message and creates nothing`, async (t) => {
      await refused(t, uniq(`oe${RUN_ID}-bad`), opts, about);
    });
  }

  const badNames: Array<[string, string]> = [
    ['..', 'the parent directory'],
    ['.', 'the current directory'],
    ['a/b', 'a path with a slash'],
    ['../escape', 'a relative path out of the state root'],
    ['x'.repeat(300), 'a name longer than a file name may be'],
  ];
  for (const [name, what] of badNames) {
    t.test(`docker volume create with a bad name (${what}) fails with the driver's message and creates nothing`, async (t) => {
      await refused(t, name, ['-o', `base=${okBase}`], /name|long/i);
    });
  }

  // dockerd calls List on every plugin it ever activated, and a gone one
  // costs each `docker volume ls` 15 s of retries; so one ls for all of them.
  t.test('after the refused creates, docker volume ls lists none of the refused names', async (t) => {
    const names = (await dockerOk(['volume', 'ls', '-q'])).split('\n');
    t.ok(refusedNames.length >= badOptions.length + badNames.length, 'every refusal was tried');
    t.same(refusedNames.filter((n) => names.includes(n)), [], 'dockerd recorded none of them');
  });

  async function refused(t: Test, name: string, opts: string[], about: RegExp): Promise<void> {
    const rootBefore = await listing(d!.root);
    // Where a careless driver would put a volume with this name, outside the listing of the root.
    const outside = [path.resolve(d!.root, name), path.resolve(d!.root, 'volumes', name)].filter(
      (p) => !p.startsWith(d!.root + '/') && !fs.existsSync(p),
    );
    // The driver's own answer, asked directly: the text the user must see.
    const optsObj: Record<string, string> = {};
    for (let i = 1; i < opts.length; i += 2) {
      const kv = opts[i]!;
      const eq = kv.indexOf('=');
      optsObj[kv.slice(0, eq)] = kv.slice(eq + 1);
    }
    const direct = await call(d!.socket, '/VolumeDriver.Create', { Name: name, Opts: opts.length ? optsObj : null });
    const err: string = direct.json?.Err ?? '';
    t.ok(err.length > 0, `the driver refuses it: ${direct.status} ${direct.text.trim()}`);
    t.match(err, about, 'the message says what is wrong');

    const r = await docker(['volume', 'create', '-d', d!.name, ...opts, '--', name]);
    t.not(r.code, 0, 'docker volume create fails');
    t.ok(err && r.stderr.includes(err), "the user sees the driver's message", { stderr: r.stderr, driverErr: err });

    refusedNames.push(name);
    t.same(await listing(d!.root), rootBefore, 'nothing was created in the state root');
    for (const p of outside) t.notOk(fs.existsSync(p), `nothing was created outside the state root at ${p}`);
    if (!name.includes('/')) {
      const get = await call(d!.socket, '/VolumeDriver.Get', { Name: name });
      t.ok(get.json?.Err, 'the driver does not know the volume');
    }
  }

  t.test('a base whose name holds "," ":" "=" is used literally or refused, never parsed into overlay options', async (t) => {
    const root = await scratchDir(t, 'odd');
    const s = new Scope(t);
    const other = path.join(root, 'other');
    const evil = path.join(root, 'evil');
    await writeTree(other, { 'marker.txt': 'other\n' });
    await fsp.mkdir(evil);
    for (const base of [`${root}/odd,upperdir=${evil}`, `${root}/odd:${other}`, `${root}/odd\\,x=y`]) {
      await writeTree(base, { 'marker.txt': 'literal\n' });
      const before = await snapshot(root);
      const v = s.volume('odd');
      const c = await docker(['volume', 'create', '-d', d.name, '-o', `base=${base}`, v]);
      if (c.code !== 0) {
        t.match(c.stderr, /base/, 'refused with a message about the base', { stderr: c.stderr });
        s.volumes.delete(v);
      } else {
        const r = await s.run([`${v}:/d`], 'ls -A /d | tr "\\n" " "; cat /d/marker.txt; echo w > /d/written.txt');
        t.equal(r.code, 0, 'the container exits 0', { stderr: r.stderr });
        t.equal(r.stdout, 'marker.txt literal\n', `the volume shows exactly the literal directory ${base}`);
        t.same(await snapshot(root), before, 'no write landed anywhere under the scratch dir');
        t.same(await fsp.readdir(evil), [], 'nothing went to the would-be upperdir');
      }
    }
  });
}

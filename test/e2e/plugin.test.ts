// The managed (v2) plugin end to end: package it with scripts/package-plugin.mjs,
// `docker plugin create` + `enable` on a real dockerd, then copy-on-write,
// volatile volumes, ls/inspect, settings, disable/enable keeping the volumes,
// and removal. Everything it makes is removed at teardown, even on failure.
//
// Runs when a Docker engine and ONTOP_TEST_IMAGE are usable (see
// test/helpers/docker.ts); fails instead of skipping when ONTOP_E2E_REQUIRED=1.
import t from 'tap';
import { execFile, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import {
  docker,
  dockerOk,
  inspectVolume,
  mountsUnder,
  REPO,
  requireEngine,
  RUN_ID,
  Scope,
  scratchDir,
  SH,
  snapshot,
  writeTree,
} from '../helpers/docker.js';

// Run through `env -u NODE_OPTIONS`: the packager is a build tool, not part of lib/, and
// tap's coverage hooks (which it adds to a child's NODE_OPTIONS) would count it.
const PACKAGER = path.join(REPO, 'scripts', 'package-plugin.mjs');
/** Where the plugin keeps its state: its propagatedMount. */
const STATE = '/var/lib/ontop';

function run(cmd: string, args: string[], timeout = 300_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as NodeJS.ErrnoException).code === 'number' ? Number((err as NodeJS.ErrnoException).code) : 127) : 0;
      resolve({ code, stdout, stderr: stderr + (err && code === 127 ? `\n${err.message}` : '') });
    });
  });
}

/**
 * Distinct filesystems (major:minor) mounted at or below dir in our mount
 * namespace. dockerd's data root and the plugin's propagated mount are peers,
 * so the host sees each overlay of the plugin twice; a device counts once.
 */
function devicesUnder(dir: string): string[] {
  const decode = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  const devices = new Set<string>();
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const f = line.split(' ');
    if (f.length < 5) continue;
    const mp = decode(f[4]!);
    if (mp === dir || mp.startsWith(dir + '/')) devices.add(f[2]!);
  }
  return [...devices];
}

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const start = Date.now();
  const v = await fn();
  return [v, Date.now() - start];
}

if (await requireEngine(t)) {
  // One parent test owns the plugin: its teardown runs after every subtest, and
  // tap's top level would end early on an await with a teardown pending.
  t.test('managed plugin: package, create, enable, use, disable/enable, remove', async (t) => {
    const plugin = `ontop-e2e-${RUN_ID}-${crypto.randomBytes(3).toString('hex')}:test`;
    const work = await scratchDir(t, 'plugin');
    const out = path.join(work, 'plugin');

    // Registered before any Scope, so it runs after their cleanups (teardowns run last-in, first-out).
    t.teardown(async () => {
      const known = await docker(['plugin', 'inspect', '--format', '{{.Id}}', plugin]);
      if (known.code !== 0) return; // removed by the test, or never created
      const left = await docker(['volume', 'ls', '-q', '--filter', `driver=${plugin}`]);
      for (const v of left.stdout.split('\n').filter(Boolean)) await docker(['volume', 'rm', '-f', v]);
      await docker(['plugin', 'disable', '-f', plugin]);
      await docker(['plugin', 'rm', '-f', plugin]);
    });

    const dataRoot = await dockerOk(['info', '--format', '{{.DockerRootDir}}']);
    // ONTOP_E2E_MAIN points the tests at another build: package that one.
    const distArgs = process.env.ONTOP_E2E_MAIN ? ['--dist', path.dirname(path.resolve(process.env.ONTOP_E2E_MAIN))] : [];

    const [pack, packMs] = await timed(() => run('env', ['-u', 'NODE_OPTIONS', process.execPath, PACKAGER, '--out', out, ...distArgs]));
    t.equal(pack.code, 0, `the packaging script succeeds (${packMs} ms): ${pack.stderr.trim()}`);
    const [created, createMs] = await timed(() => docker(['plugin', 'create', plugin, out]));
    t.equal(created.code, 0, `docker plugin create (${createMs} ms): ${created.stderr.trim()}`);
    const [enabled, enableMs] = await timed(() => docker(['plugin', 'enable', plugin]));
    t.equal(enabled.code, 0, `docker plugin enable (${enableMs} ms): ${enabled.stderr.trim()}`);

    if (pack.code === 0 && created.code === 0 && enabled.code === 0) {
      const id = await dockerOk(['plugin', 'inspect', '--format', '{{.Id}}', plugin]);
      /** The host path dockerd maps the plugin's state root to. */
      const propagated = path.join(dataRoot, 'plugins', id, 'propagated-mount');
      const hostPath = (mountpoint: string) => path.join(propagated, path.relative(STATE, mountpoint));
      const overlaysMounted = () => devicesUnder(path.join(propagated, 'volumes'));

      t.test('the plugin is installed as configured and reported as a volume plugin', async (t) => {
        const p = JSON.parse(await dockerOk(['plugin', 'inspect', plugin]))[0];
        t.equal(p.Enabled, true, 'enabled');
        t.same(p.Config.Interface.Types, ['docker.volumedriver/1.0'], 'a volume driver');
        t.equal(p.Config.Interface.Socket, 'ontop.sock', 'its socket');
        t.equal(p.Config.PropagatedMount, STATE, 'state under the propagated mount');
        t.same(p.Config.Linux.Capabilities, ['CAP_SYS_ADMIN'], 'only CAP_SYS_ADMIN added');
        const env = Object.fromEntries((p.Settings.Env as string[]).map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
        t.match(env, { ONTOP_ROOT: STATE, ONTOP_HOST_ROOT: '/host', ONTOP_SOCKET: '/run/docker/plugins/ontop.sock', ONTOP_LOG_LEVEL: 'info', ONTOP_ALLOW_BASE: '' }, 'env');
        // What a swarm node reports to the scheduler: enabled managed plugins by capability,
        // from the first moment (docker info's Plugins.Volume lists only legacy plugins).
        const listed = await dockerOk(['plugin', 'ls', '--filter', 'capability=volumedriver', '--filter', 'enabled=true', '--format', '{{.Name}}']);
        t.ok(listed.split('\n').includes(plugin), `listed as an enabled volume driver before any use:\n${listed}`);
      });

      t.test('copy-on-write through the plugin: the base (a host path) is read, never written; the next container sees the changes; ls and inspect show the volume', async (t) => {
        const base = await scratchDir(t, 'base');
        await writeTree(base, { 'keep.txt': 'keep\n', 'change.txt': 'old\n', 'sub/deep.txt': 'deep\n' });
        const before = await snapshot(base);
        const s = new Scope(t);
        const v = await s.createVolume(plugin, { base });

        const ls = await dockerOk(['volume', 'ls', '--format', '{{.Driver}} {{.Name}}']);
        t.ok(ls.split('\n').includes(`${plugin} ${v}`), `docker volume ls shows it with its driver:\n${ls}`);
        const info = await inspectVolume(v);
        t.equal(info.Driver, plugin, 'inspect: driver');
        t.equal(info.Mountpoint ?? '', '', 'inspect: no mountpoint while no container uses it');
        t.equal(info.Status?.base, base, 'inspect: Status shows the base as the host path the user gave (not under /host)');

        const first = await s.run([`${v}:/d`], 'set -e; cat /d/keep.txt /d/change.txt /d/sub/deep.txt; echo new > /d/change.txt; echo added > /d/added.txt; rm /d/keep.txt');
        t.equal(first.code, 0, `first container: ${first.stderr}`);
        t.equal(first.stdout, 'keep\nold\ndeep\n', 'the container reads the base');
        t.same(await snapshot(base), before, 'the base on the host is unchanged');

        const second = await s.run([`${v}:/d`], 'cd /d; ls | sort | tr "\\n" " "; echo; cat change.txt added.txt');
        t.equal(second.code, 0, `container second exits 0 ${second.stderr.trim()}`);
        t.equal(second.stdout, 'added.txt change.txt sub \nnew\nadded\n', 'the next container sees the changes');
        t.same(overlaysMounted(), [], 'no overlay stays mounted once no container uses the volume');
        t.same(await snapshot(base), before, 'the base is still unchanged');
      });

      t.test('volatile through the plugin: changes are shared while a container runs and gone after the last one', async (t) => {
        const base = await scratchDir(t, 'base');
        await writeTree(base, { 'base.txt': 'orig\n' });
        const before = await snapshot(base);
        const s = new Scope(t);
        const v = await s.createVolume(plugin, { base, volatile: 'true' });

        const a = await s.start([`${v}:/d`], SH + 'echo a > /d/a; echo changed > /d/base.txt; await_file /d/stop');
        const b = await s.run([`${v}:/d`], SH + 'await_file /d/a; cat /d/a /d/base.txt');
        t.equal(b.code, 0, `container b exits 0 ${b.stderr.trim()}`);
        t.equal(b.stdout, 'a\nchanged\n', 'a second container sees the running one’s changes');
        t.equal(overlaysMounted().length, 1, 'one overlay while containers use the volume');
        const mp = (await inspectVolume(v)).Mountpoint;
        t.equal(mp, `${STATE}/volumes/${v}/merged`, 'inspect: the mountpoint while in use, under the propagated mount');
        t.ok(mountsUnder(hostPath(mp)).includes(hostPath(mp)), 'dockerd’s host path for it is the mounted overlay');
        const stop = await s.run([`${v}:/d`], 'touch /d/stop');
        t.equal(stop.code, 0, `container stop exits 0 ${stop.stderr.trim()}`);
        const done = await s.wait(a);
        t.equal(done.code, 0, done.logs);
        await dockerOk(['rm', a]);

        const after = await s.run([`${v}:/d`], 'ls /d | tr "\\n" " "; cat /d/base.txt');
        t.equal(after.code, 0, `container after exits 0 ${after.stderr.trim()}`);
        t.equal(after.stdout, 'base.txt orig\n', 'after the last user the next container sees the pristine base');
        t.same(await snapshot(base), before, 'the base is unchanged');
      });

      t.test('disable and enable keep the volumes and their data; settings apply on enable', async (t) => {
        const base = await scratchDir(t, 'base');
        const other = await scratchDir(t, 'other');
        await writeTree(base, { 'base.txt': 'orig\n', 'sub/x.txt': 'x\n' });
        await writeTree(other, { 'x.txt': 'x\n' });
        const s = new Scope(t);
        const v = await s.createVolume(plugin, { base });
        const w = await s.run([`${v}:/d`], 'echo kept > /d/kept.txt');
        t.equal(w.code, 0, `container w exits 0 ${w.stderr.trim()}`);

        const busy = await docker(['plugin', 'disable', plugin]);
        t.not(busy.code, 0, 'dockerd refuses a plain disable while volumes of the plugin exist');
        t.match(busy.stderr, /in use/, busy.stderr.trim());

        const [off, offMs] = await timed(() => docker(['plugin', 'disable', '-f', plugin]));
        t.equal(off.code, 0, `disable -f: ${off.stderr.trim()}`);
        t.ok(offMs < 9_000, `the plugin exits on SIGTERM, well before dockerd's SIGKILL (${offMs} ms)`);
        // Only while disabled; ALLOW_BASE lists host paths.
        await dockerOk(['plugin', 'set', plugin, 'ONTOP_LOG_LEVEL=debug', `ONTOP_ALLOW_BASE=${base}`]);
        // Back to the defaults for the next tests, before the scope's cleanup (which needs the plugin).
        t.teardown(async () => {
          await docker(['plugin', 'disable', '-f', plugin]);
          await docker(['plugin', 'set', plugin, 'ONTOP_LOG_LEVEL=info', 'ONTOP_ALLOW_BASE=']);
          await docker(['plugin', 'enable', plugin]);
        });
        const [on, onMs] = await timed(() => docker(['plugin', 'enable', plugin]));
        t.equal(on.code, 0, `enable again (${onMs} ms): ${on.stderr.trim()}`);

        // (docker volume ls would also ask every other plugin socket in /run/docker/plugins.)
        const again = await inspectVolume(v);
        t.equal(again.Driver, plugin, 'the volume is still there, with its driver');
        t.equal(again.Status?.base, base, 'and its base');
        const r = await s.run([`${v}:/d`], 'cat /d/kept.txt /d/base.txt');
        t.equal(r.code, 0, `container r exits 0 ${r.stderr.trim()}`);
        t.equal(r.stdout, 'kept\norig\n', 'its data survived disable/enable');

        const inside = await docker(['volume', 'create', '-d', plugin, '-o', `base=${base}/sub`, s.volume('in')]);
        t.equal(inside.code, 0, `ONTOP_ALLOW_BASE=${base} admits a base inside it (given as a host path): ${inside.stderr.trim()}`);
        // Not in the scope: it is never created, and removing an unknown name asks every plugin.
        const outName = `oe${RUN_ID}-out-${crypto.randomBytes(3).toString('hex')}`;
        const outside = await docker(['volume', 'create', '-d', plugin, '-o', `base=${other}`, outName]);
        if (outside.code === 0) s.volumes.add(outName);
        t.not(outside.code, 0, `ONTOP_ALLOW_BASE=${base} refuses ${other}`);
        t.match(outside.stderr, other, `the error names the refused base: ${outside.stderr.trim()}`);
      });

      t.test('an overlay left mounted (its Unmount hit EBUSY) is removed by volume rm once released, whatever else runs on the host', async (t) => {
        const base = await scratchDir(t, 'base');
        await writeTree(base, { 'base.txt': 'orig\n' });
        const s = new Scope(t);
        const v = await s.createVolume(plugin, { base });
        const c = await s.start([`${v}:/d`], 'exec sleep 600');
        const mp = hostPath((await inspectVolume(v)).Mountpoint);

        // A host process with its working directory in the overlay keeps it busy, and
        // an unrelated one without capabilities (the driver, pidHost, can read its mount table).
        const holder = spawn('sleep', ['600'], { cwd: mp, stdio: 'ignore' });
        const setpriv = ['/usr/bin/setpriv', '/bin/setpriv'].find((f) => fs.existsSync(f));
        const bystander = setpriv ? spawn(setpriv, ['--bounding-set', '-all', '--inh-caps', '-all', 'sleep', '600'], { stdio: 'ignore' }) : undefined;
        t.teardown(() => {
          holder.kill('SIGKILL');
          bystander?.kill('SIGKILL');
        });
        await new Promise((resolve) => holder.once('spawn', resolve));

        await dockerOk(['rm', '-f', c]);
        s.containers.delete(c);
        t.equal(overlaysMounted().length, 1, 'the overlay stays mounted while a host process holds it');
        holder.kill('SIGKILL');
        await new Promise((resolve) => (holder.exitCode === null && holder.signalCode === null ? holder.once('exit', resolve) : resolve(undefined)));

        const rm = await docker(['volume', 'rm', v]);
        // dockerd's propagated copy of the overlay (same peer group, another mount point)
        // in the host's mount namespace is not a use.
        t.equal(rm.code, 0, `docker volume rm once nothing holds it: ${rm.stderr.trim()}`);
        if (rm.code === 0) {
          s.volumes.delete(v);
          t.same(overlaysMounted(), [], 'its overlay is gone');
        }
      });

      t.test('volume rm, then disable and rm of the plugin, leave nothing behind', async (t) => {
        const base = await scratchDir(t, 'base');
        await writeTree(base, { 'base.txt': 'orig\n' });
        const s = new Scope(t);
        const v = await s.createVolume(plugin, { base });
        const w = await s.run([`${v}:/d`], 'echo data > /d/data.txt');
        t.equal(w.code, 0, `container w exits 0 ${w.stderr.trim()}`);
        // No container uses it now, so inspect shows no Mountpoint: find its directory by the layout.
        const dir = hostPath(`${STATE}/volumes/${v}`);
        t.ok(fs.existsSync(path.join(dir, 'volume.json')), 'the volume lives in the propagated mount');

        const rm = await docker(['volume', 'rm', v]);
        t.equal(rm.code, 0, `docker volume rm: ${rm.stderr.trim()}`);
        s.volumes.delete(v);
        // (No docker volume inspect of the gone name: for an unknown name dockerd asks every
        // plugin, 15 s for each dead socket in /run/docker/plugins. The plain disable below
        // proves dockerd holds no volume of the plugin any more.)
        await t.rejects(fsp.stat(dir), { code: 'ENOENT' }, 'its state is gone from the propagated mount');

        // dockerd refuses a plain disable while any volume of the plugin exists.
        const off = await docker(['plugin', 'disable', plugin]);
        t.equal(off.code, 0, `docker plugin disable: no volumes of the plugin are left: ${off.stderr.trim()}`);
        const gone = await docker(['plugin', 'rm', plugin]);
        t.equal(gone.code, 0, `docker plugin rm: ${gone.stderr.trim()}`);
        const plugins = await dockerOk(['plugin', 'ls', '--format', '{{.Name}}']);
        t.notOk(plugins.split('\n').includes(plugin), 'the plugin is gone');
        t.same(mountsUnder(path.join(dataRoot, 'plugins', id)), [], 'nothing stays mounted under the plugin’s directory');
        await t.rejects(fsp.stat(path.join(dataRoot, 'plugins', id)), { code: 'ENOENT' }, 'dockerd removed the plugin’s directory');
      });
    }
  });
}

// The `ontop` commands in-process: arguments and exit codes, output on a
// terminal and in pipes, progress, the check that the daemon reached serves
// the state root asked for, and offline mode's refusals; against a fake
// Operator (the endpoints and the real driver have their own tests).
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { COMMANDS, defaultCliDeps, humanBytes, runCommand, type CliDeps } from '../lib/cli.js';
import { NoDaemonError, RemoteOperator } from '../lib/client.js';
import type { Driver, DriverOptions } from '../lib/driver.js';
import { DriverError } from '../lib/errors.js';
import { RootBusyError } from '../lib/holder.js';
import type { InfoResult, Operator } from '../lib/operator.js';
import { scratch } from './helpers/fake-driver.js';

interface Harness {
  deps: CliDeps;
  out: string[];
  err: string[];
  calls: Array<[string, unknown]>;
  offline: DriverOptions[];
  closed: number;
}

function fakeOperator(calls: Array<[string, unknown]>, info: Partial<InfoResult> = {}): Operator {
  return {
    info: async () => ({ name: 'ontop', root: '/var/lib/ontop', pid: 42, version: '0.1.0', ...info }),
    ls: async () => ({
      volumes: [
        { name: 'web', base: '/srv/a\tb', volatile: false, upper: 'disk', users: 2, mounted: true, created: '2026-12-01T09:00:00.000Z', size: { files: 3, bytes: 3 * 1024 * 1024 } },
        { name: 'ram', base: '/t:p', layers: ['/t:p', '/low'], volatile: true, upper: 'tmpfs', limit: 8 * 1024 * 1024, users: 0, mounted: false, created: '2026-12-01T09:00:00.000Z', size: { files: 0, bytes: 0 } },
        { name: 'bad', users: 0, mounted: false, problems: ['volume.json is damaged'] },
      ],
    }),
    diff: async (a) => {
      calls.push(['diff', a]);
      if (a.name === 'refused') throw new DriverError('no such volume: refused');
      return {
        changes: [
          { kind: 'A', path: '/new file' },
          { kind: 'D', path: '/\ufffd', pathBase64: Buffer.from([0x2f, 0xff]).toString('base64') },
        ],
      };
    },
    reset: async (a) => (calls.push(['reset', a]), { name: a.name }),
    commit: async (a, onProgress) => {
      calls.push(['commit', a]);
      onProgress?.({ files: 1, bytes: 10 });
      onProgress?.({ files: 1, bytes: 10 });
      return { name: a.name, base: '/srv', dryRun: a.dryRun === true, changes: [{ kind: 'C', path: '/x' }], progress: { files: 1, bytes: 10 } };
    },
    clone: async (a, onProgress) => {
      calls.push(['clone', a]);
      onProgress?.({ files: 2, bytes: 2048 });
      return { name: a.name, source: a.source, base: '/srv', volatile: false, progress: { files: 2, bytes: 2048 } };
    },
  };
}

function harness(over: Partial<CliDeps> = {}, info: Partial<InfoResult> = {}): Harness {
  const h: Harness = { out: [], err: [], calls: [], offline: [], closed: 0, deps: undefined as unknown as CliDeps };
  let clock = 0;
  h.deps = {
    stdout: (s) => void h.out.push(s),
    stderr: (s) => void h.err.push(s),
    stdoutIsTTY: false,
    stderrIsTTY: false,
    getuid: () => 0,
    connect: () => fakeOperator(h.calls, info),
    openOffline: async (opts) => {
      h.offline.push(opts);
      return { ...fakeOperator(h.calls), close: async () => void h.closed++ } as unknown as Driver;
    },
    now: () => (clock += 1000),
    ...over,
  };
  return h;
}

const noDaemon = (code = 'ECONNREFUSED'): Partial<CliDeps> => ({
  connect: (socket) => {
    const op = fakeOperator([]);
    return { ...op, info: async () => Promise.reject(new NoDaemonError(socket, code)) };
  },
});

t.test('an unknown command, a missing or extra argument, an unknown flag or a bad --name/--socket is bad usage: exit 2, nothing called', async (t) => {
  for (const argv of [['frobnicate'], ['diff'], ['diff', 'a', 'b'], ['ls', 'x'], ['clone', 'a'], ['reset', '--force', 'a'], ['diff', '--name', 'a/b', 'v'], ['diff', '--socket', 'rel.sock', 'v'], ['ls', '--root', 'rel']]) {
    const h = harness();
    t.equal(await runCommand(argv, {}, h.deps), 2, argv.join(' '));
    t.match(h.err.join(''), /^ontop: .+\n$/, 'one line on stderr, starting ontop:');
    t.same(h.calls, []);
    t.same(h.out, []);
  }
  const h = harness();
  await runCommand(['diff', '--socket', 'x'], { ONTOP_SOCKET: 'rel' }, h.deps);
  t.match(h.err.join(''), /takes VOLUME, got none/);
  const e = harness();
  t.equal(await runCommand(['ls'], { ONTOP_ROOT: 'relative' }, e.deps), 2);
  t.match(e.err.join(''), /ONTOP_ROOT: "relative" is not an absolute path/);
});

t.test('--help of every command prints its usage and the common options, exit 0', async (t) => {
  for (const c of COMMANDS) {
    const h = harness();
    t.equal(await runCommand([c, '--help'], {}, h.deps), 0);
    t.match(h.out.join(''), new RegExp(`^Usage: ontop ${c}[\\s\\S]*--socket PATH[\\s\\S]*Exit status`));
  }
});

t.test('diff prints A/C/D lines, unusual bytes escaped; --json prints the exact result', async (t) => {
  const h = harness();
  t.equal(await runCommand(['diff', 'web'], {}, h.deps), 0);
  t.same(h.calls, [['diff', { name: 'web' }]]);
  const lines = h.out.join('').split('\n');
  t.equal(lines[0], 'A /new file');
  t.equal(lines[1], 'D "/\\xff"', 'a byte that is not UTF-8 is shown escaped (formatPath), not replaced');
  const j = harness();
  t.equal(await runCommand(['diff', '--json', 'web'], {}, j.deps), 0);
  t.same(JSON.parse(j.out.join('')).changes[1], { kind: 'D', path: '/\ufffd', pathBase64: 'L/8=' });
});

t.test('a refusal exits 1 with its reason on one stderr line', async (t) => {
  const h = harness();
  t.equal(await runCommand(['diff', 'refused'], {}, h.deps), 1);
  t.equal(h.err.join(''), 'ontop: no such volume: refused\n');
  t.same(h.out, []);
});

t.test('ls: tab-separated in a pipe (escaped cells), a table on a terminal, JSON with --json', async (t) => {
  const h = harness();
  t.equal(await runCommand(['ls'], {}, h.deps), 0);
  t.equal(
    h.out.join(''),
    'web\t/srv/a\\tb\tfalse\t2\ttrue\t3\t3145728\t2026-12-01T09:00:00.000Z\t\tdisk\t\t\n' +
      'ram\t/t:p\ttrue\t0\tfalse\t0\t0\t2026-12-01T09:00:00.000Z\t\ttmpfs\t8388608\t/t\\\\:p:/low\n' +
      'bad\t\t\t0\tfalse\t\t\t\tvolume.json is damaged\t\t\t\n',
  );
  const tty = harness({ stdoutIsTTY: true });
  t.equal(await runCommand(['ls'], {}, tty.deps), 0);
  const [head, web, ram, bad] = tty.out.join('').split('\n');
  t.match(head, /^NAME +BASE +VOLATILE +UPPER +LIMIT +USERS +MOUNTED +CHANGES +CREATED$/);
  t.match(web, /^web +\/srv\/a\\tb +false +disk +- +2 +true +3 files, 3\.0 MiB +2026-12-01 09:00:00Z$/);
  t.match(ram, /^ram +\/t\\\\:p:\/low +true +tmpfs +8\.0 MiB +0 +false +0 files, 0 B +2026-12-01 09:00:00Z$/);
  t.match(bad, /^bad +- +- +- +- +0 +false +- +- +damaged: volume.json is damaged$/);
  const j = harness();
  await runCommand(['ls', '--json'], {}, j.deps);
  t.equal(JSON.parse(j.out.join('')).volumes.length, 3);
});

t.test('reset prints nothing (JSON with --json); commit and clone pass their flags and print their result', async (t) => {
  const h = harness();
  t.equal(await runCommand(['reset', 'web'], {}, h.deps), 0);
  t.same(h.out, []);
  await runCommand(['reset', '--json', 'web'], {}, h.deps);
  t.same(JSON.parse(h.out.join('')), { name: 'web' });

  const c = harness();
  t.equal(await runCommand(['commit', '--dry-run', 'web'], {}, c.deps), 0);
  t.equal(await runCommand(['commit', 'web', '--json'], {}, c.deps), 0);
  t.same(c.calls, [['commit', { name: 'web', dryRun: true }], ['commit', { name: 'web', dryRun: false }]]);
  t.equal(c.out[0], 'C /x\n');
  t.match(JSON.parse(c.out[1]!), { name: 'web', dryRun: false, progress: { files: 1, bytes: 10 } });
  t.same(c.err, [], 'no progress when stderr is no terminal');

  const k = harness();
  t.equal(await runCommand(['clone', 'web', 'copy'], {}, k.deps), 0);
  t.equal(await runCommand(['clone', '--volatile', 'true', 'web', 'copy2', '--json'], {}, k.deps), 0);
  t.same(k.calls, [['clone', { source: 'web', name: 'copy' }], ['clone', { source: 'web', name: 'copy2', volatile: 'true' }]]);
  t.equal(k.out[0], 'copy\n');
  t.match(JSON.parse(k.out[1]!), { name: 'copy2', source: 'web' });
});

t.test('on a terminal, commit and clone show files, bytes and rate in place, and clear the line at the end', async (t) => {
  const h = harness({ stderrIsTTY: true });
  t.equal(await runCommand(['clone', 'web', 'copy'], {}, h.deps), 0);
  t.same(h.err, ['\r\x1b[K2 files, 2.0 KiB, 2.0 KiB/s', '\r\x1b[K']);
  const c = harness({ stderrIsTTY: true, now: () => 5 });
  t.equal(await runCommand(['commit', 'web'], {}, c.deps), 0);
  t.same(c.err, ['\r\x1b[K1 files, 10 B, 9.8 KiB/s', '\r\x1b[K'], 'an update within 100 ms of the last one is not drawn');
});

t.test('a given --root or --name must be the daemon’s; an unreachable socket is no reason to go offline', async (t) => {
  const dir = await scratch(t);
  const h = harness({}, { root: dir });
  t.equal(await runCommand(['diff', '--root', dir, 'web'], {}, h.deps), 0, 'the same root (a real path) is fine');
  t.equal(await runCommand(['diff', '--root', path.join(dir, '.'), '--name', 'ontop', 'web'], {}, h.deps), 0);
  const other = harness({}, { root: '/elsewhere' });
  t.equal(await runCommand(['diff', '--root', dir, 'web'], {}, other.deps), 1);
  t.match(other.err.join(''), /serves the state root \/elsewhere, not /);
  t.same(other.calls, [], 'nothing was asked of the wrong daemon');
  const missing = harness({}, { root: '/elsewhere' });
  t.equal(await runCommand(['ls', '--root', path.join(dir, 'nope')], {}, missing.deps), 1);
  const named = harness({}, { name: 'trial' });
  t.equal(await runCommand(['ls'], { ONTOP_NAME: 'other' }, named.deps), 1);
  t.match(named.err.join(''), /is trial, not other/);
  t.equal(await runCommand(['ls'], {}, named.deps), 0, 'not checked when not given');

  const broken = harness({ connect: () => ({ ...fakeOperator([]), info: async () => Promise.reject(new Error('cannot talk to the daemon on /x: EPIPE')) }) });
  t.equal(await runCommand(['ls'], {}, broken.deps), 1);
  t.same(broken.offline, []);
});

t.test('offline: with no daemon answering, the command opens the state root as a command holder, works and closes it', async (t) => {
  const dir = await scratch(t);
  const h = harness(noDaemon());
  t.equal(await runCommand(['commit', '--root', dir, 'web'], {}, h.deps), 0);
  t.equal(h.offline.length, 1);
  t.match(h.offline[0], { root: dir, name: 'ontop', lock: { holder: { command: `ontop commit --root ${dir} web`, role: 'command' } } });
  t.equal(h.closed, 1, 'the driver was closed: daemon.lock released');
  t.same(h.calls, [['commit', { name: 'web', dryRun: false }]]);

  const tty = harness({ ...noDaemon(), stderrIsTTY: true });
  t.equal(await runCommand(['commit', '--root', dir, 'web'], {}, tty.deps), 0);
  t.same(tty.err, ['\r\x1b[K1 files, 10 B, 10 B/s', '\r\x1b[K1 files, 10 B, 5 B/s', '\r\x1b[K'], 'progress offline too (each update a second apart), cleared at the end');

  const confined = harness(noDaemon());
  t.equal(await runCommand(['diff', '--root', dir, '--allow-base', '/srv', '--allow-base', '/data', '--host-root', '/host', 'web'], {}, confined.deps), 0);
  t.match(confined.offline[0], { allowBases: ['/srv', '/data'], hostRoot: '/host' }, 'the daemon\'s confinement, from flags');
  const fromEnv = harness(noDaemon());
  t.equal(await runCommand(['diff', '--root', dir, 'web'], { ONTOP_ALLOW_BASE: '/srv:/data', ONTOP_HOST_ROOT: '/host' }, fromEnv.deps), 0);
  t.match(fromEnv.offline[0], { allowBases: ['/srv', '/data'], hostRoot: '/host' }, 'and from the environment');
  t.match(h.offline[0], { allowBases: [], hostRoot: '/' }, 'none given: none, and /');
  const relative = harness(noDaemon());
  t.equal(await runCommand(['diff', '--root', dir, '--allow-base', 'srv', 'web'], {}, relative.deps), 2);
  t.match(relative.err.join(''), /--allow-base: "srv" is not an absolute path/);

  const refused = harness(noDaemon('ENOENT'));
  t.equal(await runCommand(['diff', '--root', dir, 'refused'], {}, refused.deps), 1);
  t.equal(refused.closed, 1, 'closed after a refusal too');
});

t.test('offline refusals: no state root, not root, the lock held by a silent daemon or by another command', async (t) => {
  const dir = await scratch(t);
  const h = harness(noDaemon());
  t.equal(await runCommand(['ls', '--root', path.join(dir, 'none')], {}, h.deps), 1);
  t.match(h.err.join(''), /there is no state root at .*none: start ontop/);
  t.same(h.offline, [], 'no state root was made');

  const user = harness({ ...noDaemon(), getuid: () => 1000 });
  t.equal(await runCommand(['ls', '--root', dir], {}, user.deps), 1);
  t.match(user.err.join(''), /needs root \(uid 0\), not uid 1000/);

  const busy = (holder: RootBusyError['holder']) =>
    harness({ ...noDaemon(), openOffline: async () => Promise.reject(new RootBusyError('another ontop process is using the state root', holder)) });
  const d = busy({ pid: 7, command: 'ontop --name x', role: 'daemon' });
  t.equal(await runCommand(['ls', '--root', dir], {}, d.deps), 1);
  t.match(d.err.join(''), /the ontop daemon `ontop --name x` \(pid 7\) holds the state root .* but does not answer on \/run\/docker\/plugins\/ontop.sock/);
  const c = busy({ pid: 8, command: 'ontop commit web', role: 'command' });
  t.equal(await runCommand(['ls', '--root', dir], {}, c.deps), 1);
  t.match(c.err.join(''), /`ontop commit web` \(pid 8\) is working on the state root/);
  const u = busy(undefined);
  t.equal(await runCommand(['ls', '--root', dir], {}, u.deps), 1);
  t.equal(u.err.join(''), 'ontop: another ontop process is using the state root\n');
});

t.test('humanBytes and the default deps', async (t) => {
  t.equal(humanBytes(0), '0 B');
  t.equal(humanBytes(1023), '1023 B');
  t.equal(humanBytes(1536), '1.5 KiB');
  t.equal(humanBytes(5 * 1024 ** 5), '5120.0 TiB');
  const deps = defaultCliDeps();
  t.type(deps.connect('/x.sock'), RemoteOperator);
  t.type(deps.now(), 'number');
  t.equal(deps.getuid(), process.getuid!());
  t.equal(typeof deps.stdoutIsTTY, 'boolean');
  const dir = await scratch(t);
  const root = path.join(dir, 'root');
  const d = await deps.openOffline({ root, logger: (await import('../lib/log.js')).createLogger('error', () => {}) });
  t.ok(fs.existsSync(path.join(root, 'daemon.lock')));
  await d.close();
  const write = (s: string) => void s;
  t.ok(write);
});

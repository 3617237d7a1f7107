// The daemon's wiring: exit codes and messages for bad flags and failed
// start-up checks, the listening log, signals (a clean stop, then an
// immediate exit on a second one), and the real entry point in a child.
import t from 'tap';
import type { Test } from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { DriverError } from '../lib/errors.js';
import { defaultDeps, isEntryPoint, limitYoungGeneration, run, start, type Daemon, type MainDeps } from '../lib/main.js';
import { USAGE } from '../lib/config.js';
import { createLogger } from '../lib/log.js';
import { call } from './helpers/client.js';
import { fakeDriver, scratch, type FakeDriver } from './helpers/fake-driver.js';

const PROC_FS = 'nodev\tsysfs\nnodev\tproc\n';

interface Harness {
  deps: MainDeps;
  proc: EventEmitter;
  out: string[];
  err: string[];
  exits: number[];
  driver: FakeDriver;
  files: Record<string, string>;
  /** Parsed JSON log lines written to stderr. */
  logs(): Record<string, unknown>[];
  exited: Promise<number>;
  /** Calls of deps.tuneHeap. */
  tuned: number;
}

function harness(over: Partial<MainDeps> = {}): Harness {
  const proc = new EventEmitter();
  const out: string[] = [];
  const err: string[] = [];
  const exits: number[] = [];
  const driver = fakeDriver();
  const files: Record<string, string> = { '/proc/filesystems': `${PROC_FS}nodev\toverlay\n`, '/etc/group': 'docker:x:998:\n' };
  let exited!: (code: number) => void;
  const h: Harness = {
    proc,
    out,
    err,
    exits,
    driver,
    files,
    logs: () => err.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)),
    exited: new Promise((r) => (exited = r)),
    tuned: 0,
    deps: {
      tuneHeap: () => void h.tuned++,
      stdout: (s) => out.push(s),
      stderr: (s) => err.push(s),
      getuid: () => 0,
      readFile: (f) => {
        if (f in files) return files[f]!;
        throw Object.assign(new Error(`ENOENT: ${f}`), { code: 'ENOENT' });
      },
      openDriver: async () => driver,
      proc,
      exit: (code) => {
        exits.push(code);
        exited(code);
      },
      ...over,
    },
  };
  return h;
}

async function daemon(t: Test, h: Harness, extra: string[] = []): Promise<{ d: Daemon; socket: string }> {
  const dir = await scratch(t);
  const socket = path.join(dir, 'ontop.sock');
  const d = await run(['--socket', socket, '--root', path.join(dir, 'root'), '--log-level', 'debug', ...extra], {}, h.deps);
  if (!d) throw new Error(`did not start: ${h.err.join('')}`);
  t.teardown(() => d.server.close(0));
  return { d, socket };
}

t.test('--help prints the usage on stdout and exits 0; --version prints the version', async (t) => {
  const h = harness();
  await run(['--help'], {}, h.deps);
  t.same(h.out, [USAGE]);
  t.same(h.exits, [0]);
  const v = harness();
  await run(['--version'], {}, v.deps);
  t.match(v.out, [/^\d+\.\d+\.\d+/]);
  t.same(v.exits, [0]);
});

t.test('a bad flag or value prints one line on stderr and exits 2', async (t) => {
  for (const argv of [['--nope'], ['--name', 'local'], ['--root', 'relative']]) {
    const h = harness();
    t.equal(await start(argv, {}, h.deps), 2);
    t.match(h.err.join(''), /^ontop: /);
    t.notMatch(h.err.join(''), /\n\s+at /, 'no stack trace');
  }
  const h = harness();
  t.equal(await start([], { ONTOP_LOG_LEVEL: 'loud' }, h.deps), 2);
  t.match(h.err.join(''), /ONTOP_LOG_LEVEL: unknown log level "loud"/);
});

t.test('not running as root is refused with exit 1 and a clear message', async (t) => {
  const h = harness({ getuid: () => 1000 });
  t.equal(await start([], {}, h.deps), 1);
  t.same(h.err, ['ontop: must run as root (uid 0), not uid 1000: it mounts overlay filesystems\n']);
});

t.test('a kernel without overlayfs is refused with exit 1, unless overlay is a loadable module', async (t) => {
  const h = harness();
  h.files['/proc/filesystems'] = PROC_FS;
  t.equal(await start([], {}, h.deps), 1);
  t.match(h.err.join(''), /^ontop: this kernel does not support overlayfs.*modprobe overlay/);

  const unreadable = harness();
  delete unreadable.files['/proc/filesystems'];
  t.equal(await start([], {}, unreadable.deps), 1, 'an unreadable /proc/filesystems is no support');

  const mod = harness({ openDriver: async () => Promise.reject(new DriverError('stop here')) });
  mod.files['/proc/filesystems'] = PROC_FS;
  const release = (await import('node:os')).release();
  mod.files[`/lib/modules/${release}/modules.dep`] = 'kernel/fs/overlayfs/overlay.ko.zst: \n';
  t.equal(await start([], {}, mod.deps), 1);
  t.same(mod.err, ['ontop: stop here\n'], 'got past the overlay check to the driver');
});

t.test('a driver that refuses the state root ends start-up with its message and exit 1', async (t) => {
  const h = harness({ openDriver: async () => Promise.reject(new DriverError('/x/root is not a directory: pass --root')) });
  t.equal(await start(['--root', '/x/root'], {}, h.deps), 1);
  t.same(h.err, ['ontop: /x/root is not a directory: pass --root\n']);

  const e = harness({ openDriver: async () => Promise.reject(Object.assign(new Error('EACCES: permission denied, mkdir'), { code: 'EACCES' })) });
  t.equal(await start(['--root', '/x/root'], {}, e.deps), 1);
  t.same(e.err, ['ontop: cannot open the state root /x/root: EACCES: permission denied, mkdir\n']);
});

t.test('a socket that cannot be served ends start-up with exit 1 and closes the driver', async (t) => {
  const dir = await scratch(t);
  const file = path.join(dir, 'taken');
  fs.writeFileSync(file, 'user data');
  const h = harness();
  t.equal(await start(['--socket', file], {}, h.deps), 1);
  t.match(h.err.join(''), /^ontop: cannot serve on .*taken: .*exists and is not a socket/);
  t.ok(h.driver.closed);
  t.equal(fs.readFileSync(file, 'utf8'), 'user data');
});

t.test('the driver is opened with the configured root, logger, allowed bases and host root', async (t) => {
  let got: unknown;
  const h = harness({
    openDriver: async (opts) => {
      got = opts;
      return fakeDriver();
    },
  });
  const { d } = await daemon(t, h, ['--allow-base', '/srv', '--host-root', '/host']);
  t.match(got, { root: d.config.root, allowBases: ['/srv'], hostRoot: '/host', logger: d.logger });
});

t.test('once listening, it logs socket, name, root and pid at info, and serves calls', async (t) => {
  const h = harness();
  const { socket } = await daemon(t, h, ['--name', 'cow']);
  t.match(
    h.logs().find((l) => l.msg === 'listening'),
    { level: 'info', socket, name: 'cow', pid: process.pid, root: /root$/ },
  );
  t.equal(h.tuned, 1, 'the heap was tuned once, at start');
  t.same((await call(socket, '/Plugin.Activate')).json, { Implements: ['VolumeDriver'] });
});

t.test('SIGTERM lets an in-flight call finish, removes the socket, closes the driver and exits 0', async (t) => {
  const h = harness();
  const { socket } = await daemon(t, h);
  const pending = call(socket, '/VolumeDriver.Create', { Name: 'slow-200' });
  await new Promise((r) => setTimeout(r, 50));
  h.proc.emit('SIGTERM');
  t.equal(await h.exited, 0);
  t.equal((await pending).status, 200, 'the in-flight call was answered');
  t.notOk(fs.existsSync(socket));
  t.ok(h.driver.closed);
  const msgs = h.logs().map((l) => l.msg);
  t.ok(msgs.indexOf('stopping') < msgs.indexOf('call'), 'the call finished after the stop began');
  t.equal(msgs.at(-1), 'stopped');
});

t.test('a driver that fails to close makes the stop exit 1, with the error and its syscall details logged', async (t) => {
  const busy = Object.assign(new Error('EBUSY: resource busy or locked, umount2'), { code: 'EBUSY', errno: -16, syscall: 'umount2', path: '/r/merged' });
  const broken = { ...fakeDriver(), close: async () => Promise.reject(busy) };
  const h = harness({ openDriver: async () => broken });
  const { socket } = await daemon(t, h);
  h.proc.emit('SIGINT');
  t.equal(await h.exited, 1);
  t.notOk(fs.existsSync(socket));
  t.match(h.logs().find((l) => l.level === 'error'), {
    msg: 'closing the driver failed',
    err: /^EBUSY/,
    code: 'EBUSY',
    errno: -16,
    syscall: 'umount2',
    path: '/r/merged',
    stack: /EBUSY/,
  });
});

t.test('a second signal during a stop exits at once, 143 for SIGTERM and 130 for SIGINT, removing the socket', async (t) => {
  for (const [first, second, code] of [['SIGINT', 'SIGTERM', 143], ['SIGTERM', 'SIGINT', 130]] as const) {
    const h = harness();
    const { socket } = await daemon(t, h);
    const pending = call(socket, '/VolumeDriver.Create', { Name: 'slow-300' }).catch((e: Error) => e);
    await new Promise((r) => setTimeout(r, 50));
    h.proc.emit(first);
    await new Promise((r) => setTimeout(r, 20));
    t.same(h.exits, [], 'still draining');
    h.proc.emit(second);
    t.same(h.exits, [code]);
    t.notOk(fs.existsSync(socket), 'socket removed synchronously');
    t.ok(h.logs().some((l) => l.msg === 'second signal: exiting now'));
    await pending;
  }
});

t.test('uncaught exceptions and unhandled rejections are logged with their stack and the daemon keeps serving', async (t) => {
  const h = harness();
  const { socket } = await daemon(t, h);
  h.proc.emit('uncaughtException', new Error('stray'));
  h.proc.emit('unhandledRejection', new Error('lost'));
  const errors = h.logs().filter((l) => l.level === 'error');
  t.match(errors, [
    { msg: 'uncaught exception', err: 'stray', stack: /Error: stray/ },
    { msg: 'unhandled rejection', err: 'lost', stack: /Error: lost/ },
  ]);
  t.same(h.exits, []);
  t.same((await call(socket, '/Plugin.Activate')).json, { Implements: ['VolumeDriver'] });
});

t.test('isEntryPoint matches the script node runs, through symlinks, and nothing else', async (t) => {
  const dir = await scratch(t);
  const file = path.join(dir, 'm.js');
  fs.writeFileSync(file, '');
  fs.symlinkSync(file, path.join(dir, 'bin'));
  const url = `file://${fs.realpathSync(file)}`;
  t.ok(isEntryPoint(url, file));
  t.ok(isEntryPoint(url, path.join(dir, 'bin')));
  t.notOk(isEntryPoint(url, path.join(dir, 'missing')));
  t.notOk(isEntryPoint(url, undefined));
  t.notOk(isEntryPoint('file:///elsewhere.js', file));
});

t.test('limitYoungGeneration sets the growth factor unless the operator gave node a young-generation flag', async (t) => {
  const set: string[] = [];
  t.ok(limitYoungGeneration(['--enable-source-maps'], '--no-warnings', (f) => set.push(f)));
  t.same(set, ['--semi-space-growth-factor=1']);
  t.notOk(limitYoungGeneration(['--max-semi-space-size=8'], undefined, (f) => set.push(f)), 'on the command line');
  t.notOk(limitYoungGeneration([], '--semi-space-growth-factor=2', (f) => set.push(f)), 'in NODE_OPTIONS');
  t.notOk(limitYoungGeneration(['--max-heap-size=100'], '', (f) => set.push(f)));
  t.same(set, ['--semi-space-growth-factor=1'], 'nothing more was set');
});

t.test('the flag limitYoungGeneration sets, set at run time, keeps V8 new space small under a burst of garbage', async (t) => {
  const flags: string[] = [];
  limitYoungGeneration([], undefined, (f) => flags.push(f));
  // A clean process each (tap's loaders would have grown new space already): V8's own state, not a fake's.
  const newSpaceMiB = (set: string[]): number => {
    const script = `const v8 = require('node:v8');
      for (const f of ${JSON.stringify(set)}) v8.setFlagsFromString(f);
      let keep = [];
      for (let i = 0; i < 2e6; i++) { const o = { i, s: 'x' + i }; if (i % 50 === 0) keep.push(o); if (keep.length > 20000) keep = []; }
      console.log(v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size / 2 ** 20);`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } });
    t.equal(r.status, 0, r.stderr);
    return Number(r.stdout.trim());
  };
  const grown = newSpaceMiB([]);
  const limited = newSpaceMiB(flags);
  t.ok(grown > 4, `without it new space grows (${grown} MiB)`);
  t.ok(limited <= 4, `with ${flags.join(' ')} it stays at ${limited} MiB`);
});

t.test('defaultDeps talk to the real process and open the driver from ./driver.js', async (t) => {
  const deps = defaultDeps();
  t.doesNotThrow(() => deps.tuneHeap(), 'sets the V8 flag in this process (harmless: it only bounds young-generation growth)');
  t.equal(deps.getuid(), process.getuid!());
  t.match(deps.readFile('/proc/filesystems'), /proc/);
  t.equal(deps.proc, process);
  const fake = fakeDriver();
  let got: unknown;
  const mocked = await t.mockImport<typeof import('../lib/main.js')>('../lib/main.js', {
    '../lib/driver.js': { openDriver: async (opts: unknown) => ((got = opts), fake) },
  });
  const opts = { root: '/r', logger: createLogger('error'), allowBases: [], hostRoot: '/' };
  t.equal(await mocked.defaultDeps().openDriver(opts), fake);
  t.equal(got, opts);
});

// The real entry point, in a child running the TypeScript source through
// tap's loader (process.execArgv), so its coverage counts. Children that load
// the real driver run outside tap's coverage tracking: tap re-adds its hook to
// NODE_OPTIONS of every child it sees spawned, so `env -u` drops it just
// before node starts. The driver's own tests account for its lines; these
// only check the wiring.
const MAIN = path.resolve('lib/main.ts');
const node = (args: string[], opts = {}) => spawnSync(process.execPath, [...process.execArgv, ...args], { encoding: 'utf8', ...opts });
const UNTRACKED = ['-u', 'NODE_OPTIONS', process.execPath, ...process.execArgv.filter((a) => !a.includes('@tapjs/processinfo'))];

t.test('as a program: --help exits 0 with the usage, a bad flag exits 2 without a stack trace', async (t) => {
  const help = node([MAIN, '--help']);
  t.equal(help.status, 0);
  t.equal(help.stdout, USAGE);
  const bad = node([MAIN, '--bogus']);
  t.equal(bad.status, 2);
  t.match(bad.stderr, /^ontop: Unknown option '--bogus'/);
  t.notMatch(bad.stderr, /\n\s+at /);
});

t.test('as a program: a state root the driver cannot open exits 1 with one message and no stack trace', async (t) => {
  const dir = await scratch(t);
  const root = path.join(dir, 'root');
  fs.writeFileSync(root, 'not a directory');
  const r = spawnSync('env', [...UNTRACKED, MAIN, '--root', root, '--socket', path.join(dir, 'o.sock')], { encoding: 'utf8' });
  t.equal(r.status, 1);
  t.match(r.stderr, /^ontop: /);
  t.notMatch(r.stderr, /\n\s+at /);
  t.notOk(fs.existsSync(path.join(dir, 'o.sock')));
});

/** Starts the daemon in a child with real signals and process.exit, on the fake driver. */
function child(t: Test, socket: string): { proc: ChildProcess; stderr: () => string; listening: Promise<void>; exit: Promise<number | string> } {
  const script = `
    const { run, defaultDeps } = await import(${JSON.stringify(pathUrl('lib/main.ts'))});
    const { fakeDriver } = await import(${JSON.stringify(pathUrl('test/helpers/fake-driver.ts'))});
    await run(['--socket', ${JSON.stringify(socket)}, '--root', '/nonexistent'], {}, { ...defaultDeps(), openDriver: async () => fakeDriver() });`;
  const proc = spawn(process.execPath, [...process.execArgv, '--input-type=module', '-e', script], { stdio: ['ignore', 'inherit', 'pipe'] });
  t.teardown(() => proc.kill('SIGKILL'));
  let err = '';
  const listening = new Promise<void>((resolve, reject) => {
    proc.stderr!.on('data', (c: Buffer) => {
      err += c.toString();
      if (err.includes('"msg":"listening"')) resolve();
    });
    proc.on('exit', () => reject(new Error(`child exited early: ${err}`)));
  });
  const exit = new Promise<number | string>((r) => proc.on('exit', (code, signal) => r(code ?? signal!)));
  return { proc, stderr: () => err, listening, exit };
}

function pathUrl(rel: string): string {
  return `file://${path.resolve(rel)}`;
}

t.test('as a process: SIGTERM removes the socket and exits 0', async (t) => {
  const dir = await scratch(t);
  const socket = path.join(dir, 'ontop.sock');
  const c = child(t, socket);
  await c.listening;
  t.same((await call(socket, '/Plugin.Activate')).json, { Implements: ['VolumeDriver'] });
  c.proc.kill('SIGTERM');
  t.equal(await c.exit, 0);
  t.notOk(fs.existsSync(socket));
});

t.test('as a process: a second signal while a call is in flight exits 130 at once and removes the socket', async (t) => {
  const dir = await scratch(t);
  const socket = path.join(dir, 'ontop.sock');
  const c = child(t, socket);
  await c.listening;
  const pending = call(socket, '/VolumeDriver.Create', { Name: 'slow-5000' }).catch((e: Error) => e);
  await new Promise((r) => setTimeout(r, 100));
  const started = Date.now();
  c.proc.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 100));
  c.proc.kill('SIGINT');
  t.equal(await c.exit, 130);
  t.ok(Date.now() - started < 2000, 'did not wait for the call');
  t.notOk(fs.existsSync(socket));
  t.match(await pending, { code: /ECONNRESET|EPIPE/ });
});

const haveDriver = fs.existsSync('lib/driver.ts');
t.test(
  'as a program with the real driver: serves on a temp root, and SIGTERM removes the socket and exits 0',
  { skip: haveDriver ? false : 'lib/driver.ts is not written yet' },
  async (t) => {
    const dir = await scratch(t);
    const socket = path.join(dir, 'ontop.sock');
    const proc = spawn('env', [...UNTRACKED, MAIN, '--root', path.join(dir, 'root'), '--socket', socket], {
      stdio: ['ignore', 'inherit', 'pipe'],
    });
    t.teardown(() => proc.kill('SIGKILL'));
    let err = '';
    await new Promise<void>((resolve, reject) => {
      proc.stderr.on('data', (c: Buffer) => {
        err += c.toString();
        if (err.includes('"msg":"listening"')) resolve();
      });
      proc.on('exit', () => reject(new Error(`exited early: ${err}`)));
    });
    t.same((await call(socket, '/VolumeDriver.List', {})).json, { Volumes: [] });
    const exit = new Promise((r) => proc.on('exit', (code) => r(code)));
    proc.kill('SIGTERM');
    t.equal(await exit, 0);
    t.notOk(fs.existsSync(socket));
  },
);

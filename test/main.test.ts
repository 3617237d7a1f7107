// The daemon's wiring: exit codes and messages for bad flags and failed
// start-up checks, the listening log, the stop (bounded as a whole, exit 1 on
// any failure), a second signal, exceptions nothing caught, and the real
// entry point in a child.
import t from 'tap';
import type { Test } from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { DriverError } from '../lib/errors.js';
import { DRAIN_SHARE, STOP_BOUND_MS, defaultDeps, isEntryPoint, limitYoungGeneration, run, start, type Daemon, type MainDeps } from '../lib/main.js';
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
  /** The first exit code, or 'no exit' after 5 s (so that a broken stop fails rather than hangs). */
  exited: Promise<number | 'no exit'>;
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
    exited: Promise.race([new Promise<number>((r) => (exited = r)), new Promise<'no exit'>((r) => setTimeout(r, 5000, 'no exit').unref())]),
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
    t.equal(await run(argv, {}, h.deps), undefined);
    t.same(h.exits, [2], argv.join(' '));
    t.match(h.err.join(''), /^ontop: /);
    t.notMatch(h.err.join(''), /\n\s+at /, 'no stack trace');
  }
  const h = harness();
  await run([], { ONTOP_LOG_LEVEL: 'loud' }, h.deps);
  t.same(h.exits, [2]);
  t.match(h.err.join(''), /ONTOP_LOG_LEVEL: unknown log level "loud"/);
});

t.test('not running as root is refused with exit 1 and a clear message', async (t) => {
  const h = harness({ getuid: () => 1000 });
  t.equal(await run([], {}, h.deps), undefined);
  t.same(h.exits, [1]);
  t.same(h.err, ['ontop: must run as root (uid 0), not uid 1000: it mounts overlay filesystems\n']);
});

t.test('an exception that escapes start-up exits 1 with the error and its stack as a JSON log line', async (t) => {
  const h = harness({
    getuid: () => {
      throw new Error('no uid');
    },
  });
  t.equal(await run([], {}, h.deps), undefined);
  t.same(h.exits, [1]);
  t.match(h.logs(), [{ level: 'error', msg: 'start-up failed', err: 'no uid', stack: /Error: no uid/ }]);
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

t.test('a driver whose close never ends still lets SIGTERM exit 1 within the stop bound, without the socket', async (t) => {
  const stuck = { ...fakeDriver(), close: () => new Promise<void>(() => {}) };
  const h = harness({ openDriver: async () => stuck, stopBoundMs: 300 });
  const { socket } = await daemon(t, h);
  const began = Date.now();
  h.proc.emit('SIGTERM');
  t.equal(await h.exited, 1);
  const took = Date.now() - began;
  t.ok(took >= 290 && took < 1000, `exited at the bound (${took} ms)`);
  t.same(h.exits, [1], 'once');
  t.notOk(fs.existsSync(socket));
  t.match(h.logs().find((l) => l.level === 'error'), { msg: 'stop did not finish in time; exiting anyway', boundMs: 300, pending: /^closing the driver/ });
  t.notOk(h.logs().some((l) => l.msg === 'stopped'));
});

t.test('a server whose close never ends still lets SIGTERM exit 1 within the stop bound, removing the socket itself', async (t) => {
  const h = harness({ stopBoundMs: 300 });
  const { d, socket } = await daemon(t, h);
  // Stands in for a drain stuck inside the real close, which the teardown still runs.
  const realClose = d.server.close;
  d.server.close = () => new Promise<void>(() => {});
  h.proc.emit('SIGTERM');
  t.equal(await h.exited, 1);
  d.server.close = realClose;
  t.notOk(fs.existsSync(socket));
  t.match(h.logs().find((l) => l.level === 'error'), { msg: 'stop did not finish in time; exiting anyway', boundMs: 300, pending: 'answering the calls in flight' });
  t.notOk(h.driver.closed, 'the driver was never reached');
});

t.test('the bound covers the whole stop: a call longer than it is cut, the driver still closes, and the stop exits 0 in time', async (t) => {
  const h = harness({ stopBoundMs: 600 });
  const { socket } = await daemon(t, h);
  const pending = call(socket, '/VolumeDriver.Create', { Name: 'slow-5000' }).catch((e: Error) => e);
  await new Promise((r) => setTimeout(r, 50));
  const began = Date.now();
  h.proc.emit('SIGTERM');
  t.equal(await h.exited, 0);
  const took = Date.now() - began;
  t.ok(took >= 390 && took < 600, `calls in flight got ${DRAIN_SHARE} of the bound (${took} ms)`);
  t.match(await pending, { code: /ECONNRESET|EPIPE/ }, 'the call was cut');
  t.ok(h.driver.closed);
  t.notOk(fs.existsSync(socket));
  t.match(h.logs().find((l) => l.msg === 'stopping'), { signal: 'SIGTERM', boundMs: 600 });
  t.equal(STOP_BOUND_MS, 9_000, 'the default is the documented 9 s, under a managed plugin\'s 10 s');
});

t.test('a server that fails to close makes the stop exit 1, logged, with the socket removed and the driver still closed', async (t) => {
  const h = harness();
  const { d, socket } = await daemon(t, h);
  // Stands in for a failure inside the real close, which the teardown still runs.
  const realClose = d.server.close;
  d.server.close = async () => Promise.reject(Object.assign(new Error('EIO: i/o error, close'), { code: 'EIO' }));
  h.proc.emit('SIGTERM');
  t.equal(await h.exited, 1);
  d.server.close = realClose;
  t.match(h.logs().find((l) => l.level === 'error'), { msg: 'closing the server failed', err: /^EIO/, code: 'EIO', stack: /EIO/ });
  t.notOk(fs.existsSync(socket));
  t.ok(h.driver.closed);
  t.notOk(h.logs().some((l) => l.msg === 'stopped'));
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

t.test('an uncaught exception or unhandled rejection is logged with its stack, removes the socket and exits 1 at once', async (t) => {
  for (const [event, msg] of [['uncaughtException', 'uncaught exception'], ['unhandledRejection', 'unhandled rejection']] as const) {
    const h = harness();
    const { socket } = await daemon(t, h);
    h.proc.emit(event, new Error('stray'));
    t.same(h.exits, [1], event);
    t.notOk(fs.existsSync(socket), 'socket removed before the exit');
    t.match(h.logs().filter((l) => l.level === 'error'), [{ msg, err: 'stray', stack: /Error: stray/ }]);
  }
});

t.test('an uncaught exception during a stop exits 1 at once; the stop ending later exits no second time', async (t) => {
  const h = harness();
  const { socket } = await daemon(t, h);
  const pending = call(socket, '/VolumeDriver.Create', { Name: 'slow-200' }).catch((e: Error) => e);
  await new Promise((r) => setTimeout(r, 50));
  h.proc.emit('SIGTERM');
  h.proc.emit('uncaughtException', 'not even an Error');
  t.same(h.exits, [1]);
  t.notOk(fs.existsSync(socket));
  await pending;
  await new Promise((r) => setTimeout(r, 100));
  t.same(h.exits, [1], 'the finished stop did not exit again');
});

t.test('an uncaught exception while starting exits 1 at once with a JSON log line', async (t) => {
  let release!: () => void;
  const opening = new Promise<void>((r) => (release = r));
  const h = harness({ openDriver: async () => (await opening, fakeDriver()) });
  const dir = await scratch(t);
  const running = run(['--socket', path.join(dir, 's.sock'), '--root', dir], {}, h.deps);
  await new Promise((r) => setTimeout(r, 10));
  h.proc.emit('unhandledRejection', new Error('early'));
  t.same(h.exits, [1]);
  t.match(h.logs(), [{ level: 'error', msg: 'unhandled rejection', err: 'early', stack: /Error: early/ }]);
  release();
  const d = await running;
  t.teardown(() => d?.server.close(0));
});

t.test('a socket that cannot be removed on a fatal exit is logged, and the exit still happens', async (t) => {
  const h = harness();
  const { d, socket } = await daemon(t, h);
  d.server.removeSocketSync = () => {
    throw Object.assign(new Error('EROFS: read-only file system, unlink'), { code: 'EROFS' });
  };
  h.proc.emit('uncaughtException', new Error('stray'));
  t.same(h.exits, [1]);
  t.match(h.logs().filter((l) => l.level === 'error'), [
    { msg: 'uncaught exception' },
    { msg: 'cannot remove the socket', socket, code: 'EROFS' },
  ]);
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
  t.ok(limitYoungGeneration([], undefined, (f) => set.push(f)), 'with no NODE_OPTIONS at all');
  t.same(set, ['--semi-space-growth-factor=1', '--semi-space-growth-factor=1']);
  set.length = 0;
  for (const flag of ['--max-semi-space-size=8', '--min-semi-space-size=1', '--semi-space-growth-factor=2', '--max-heap-size=100']) {
    t.notOk(limitYoungGeneration(['--enable-source-maps', flag], undefined, (f) => set.push(f)), `${flag} on the command line`);
    t.notOk(limitYoungGeneration([], `--no-warnings ${flag}`, (f) => set.push(f)), `${flag} in NODE_OPTIONS`);
  }
  t.same(set, [], 'nothing was set');
});

t.test("defaultDeps' tuneHeap sets V8's flag from this process's own node flags, unless NODE_OPTIONS has one", async (t) => {
  const set: string[] = [];
  const mocked = await t.mockImport<typeof import('../lib/main.js')>('../lib/main.js', {
    'node:v8': { default: { setFlagsFromString: (f: string) => set.push(f) } },
  });
  const saved = process.env.NODE_OPTIONS;
  t.teardown(() => {
    if (saved === undefined) delete process.env.NODE_OPTIONS;
    else process.env.NODE_OPTIONS = saved;
  });
  mocked.defaultDeps().tuneHeap();
  t.same(set, ['--semi-space-growth-factor=1']);
  process.env.NODE_OPTIONS = `${saved ?? ''} --max-semi-space-size=8`;
  mocked.defaultDeps().tuneHeap();
  t.same(set, ['--semi-space-growth-factor=1'], 'the operator\'s flag won');
});

t.test('defaultDeps talk to the real process and open the driver from ./driver.js', async (t) => {
  const deps = defaultDeps();
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

/**
 * Starts the daemon in a child with real signals and process.exit, on the
 * fake driver; `deps` is JavaScript for more MainDeps fields (`fakeDriver` is
 * in scope).
 */
function child(t: Test, socket: string, deps = ''): { proc: ChildProcess; stderr: () => string; listening: Promise<void>; exit: Promise<number | string> } {
  const script = `
    const { run, defaultDeps } = await import(${JSON.stringify(pathUrl('lib/main.ts'))});
    const { fakeDriver } = await import(${JSON.stringify(pathUrl('test/helpers/fake-driver.ts'))});
    await run(['--socket', ${JSON.stringify(socket)}, '--root', '/nonexistent'], {}, { ...defaultDeps(), openDriver: async () => fakeDriver(), ${deps} });`;
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

t.test('as a process: an exception thrown from a timer in the driver is logged with its stack, removes the socket and exits 1', async (t) => {
  const dir = await scratch(t);
  const socket = path.join(dir, 'ontop.sock');
  const c = child(t, socket, `openDriver: async () => ({ ...fakeDriver(), list: async () => { setTimeout(() => { throw new Error('stray'); }); return { Volumes: [] }; } })`);
  await c.listening;
  t.same((await call(socket, '/VolumeDriver.List', {})).json, { Volumes: [] });
  t.equal(await c.exit, 1);
  t.notOk(fs.existsSync(socket));
  t.match(c.stderr(), /"msg":"uncaught exception","err":"stray","stack":"Error: stray\\n\s+at /);
});

t.test('as a process: a driver whose close never ends exits 1 at the stop bound, without the socket', async (t) => {
  const dir = await scratch(t);
  const socket = path.join(dir, 'ontop.sock');
  const c = child(t, socket, `stopBoundMs: 500, openDriver: async () => ({ ...fakeDriver(), close: () => new Promise(() => {}) })`);
  await c.listening;
  const began = Date.now();
  c.proc.kill('SIGTERM');
  t.equal(await c.exit, 1, 'neither kept alive nor let go with 0 by the promise that never settles');
  t.ok(Date.now() - began < 2000);
  t.notOk(fs.existsSync(socket));
  t.match(c.stderr(), /"msg":"stop did not finish in time; exiting anyway","boundMs":500,"pending":"closing the driver/);
});

t.test(
  'as a program with the real driver: serves on a temp root, and SIGTERM removes the socket and exits 0',
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

// Shared tools of the fault suite (test/faults): the real daemon in a child
// process (SIGKILL-able, outside tap's coverage), a client that retries
// transport failures as dockerd does, the in-process server, and checks of
// the invariants every fault must preserve.
import type { Test } from 'tap';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Driver } from '../../lib/driver.js';
import type { Logger } from '../../lib/log.js';
import { parseMountinfo } from '../../lib/mountinfo.js';
import { constants, mount, umount2 } from '../../lib/native.js';
import { startServer, type RunningServer } from '../../lib/server.js';
import { call, type Reply } from './client.js';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const MAIN = path.join(REPO, 'dist', 'main.js');
export const DIST_DRIVER = path.join(REPO, 'dist', 'driver.js');

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * The compiled daemon must match lib/: the child runs dist/, the assertions
 * are about lib/. Fails loudly rather than testing a stale build.
 */
export function requireBuild(t: Test): void {
  const newest = Math.max(...fs.readdirSync(path.join(REPO, 'lib')).filter((f) => f.endsWith('.ts')).map((f) => fs.statSync(path.join(REPO, 'lib', f)).mtimeMs));
  const built = fs.existsSync(MAIN) ? fs.statSync(MAIN).mtimeMs : 0;
  const driver = fs.existsSync(DIST_DRIVER) ? fs.statSync(DIST_DRIVER).mtimeMs : 0;
  if (Math.min(built, driver) < newest) t.fail('dist/ is older than lib/: run `npx tsc -p .` first');
}

/**
 * Argv prefix that runs node without tap's coverage hook: tap re-adds it to
 * NODE_OPTIONS of every child it sees, so `env -u` drops it just before node
 * starts (see test/main.test.ts). The pid is node's: env execs it.
 */
export const UNTRACKED = ['-u', 'NODE_OPTIONS', process.execPath];

export interface Spawned {
  proc: ChildProcess;
  /** stderr (JSON log lines) so far. */
  logs(): string;
  /** Resolves once the daemon logs "listening"; rejects if it exits first. */
  ready: Promise<void>;
  exited: Promise<number | string>;
  running(): boolean;
}

/** Starts `node dist/main.js --root root --socket socket ...args`; killed at teardown. */
export function spawnDaemon(t: Test, root: string, socket: string, args: string[] = [], env: NodeJS.ProcessEnv = {}): Spawned {
  const proc = spawn('env', [...UNTRACKED, MAIN, '--root', root, '--socket', socket, '--log-level', 'debug', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...env },
  });
  let alive = true;
  let err = '';
  const exited = new Promise<number | string>((r) =>
    proc.on('exit', (code, signal) => {
      alive = false;
      r(code ?? signal!);
    }),
  );
  const ready = new Promise<void>((resolve, reject) => {
    let listening = false;
    proc.stderr!.on('data', (c: Buffer) => {
      const from = Math.max(0, err.length - 20);
      err += c.toString();
      // Only the new text is searched: a long-running daemon's log grows to megabytes.
      if (!listening && err.includes('"msg":"listening"', from)) {
        listening = true;
        resolve();
      }
    });
    void exited.then((how) => reject(new Error(`daemon exited (${how}) before listening: ${err.slice(-2000)}`)));
  });
  ready.catch(() => {}); // a daemon killed while starting is expected in the kill storm
  t.teardown(async () => {
    if (alive) {
      proc.kill('SIGKILL');
      await exited;
    }
  });
  return { proc, logs: () => err, ready, exited, running: () => alive };
}

export interface RetryResult {
  reply: Reply;
  /** How many attempts failed in transport (refused, reset, no socket). */
  transportFailures: number;
  /** True when an attempt failed after its request may have reached the daemon (its reply was lost). */
  maybeDelivered: boolean;
}

const NOT_SENT = new Set(['ECONNREFUSED', 'ENOENT', 'EAGAIN']);

/**
 * One call, retried on transport failures the way dockerd's plugin client
 * does (its backoff is 1, 2, 4, 8 s for about 15 s; shorter steps here).
 * Throws when the deadline passes without an answer.
 */
export async function retrying(socket: string, route: string, body: unknown, deadlineMs = 15_000): Promise<RetryResult> {
  const started = Date.now();
  let failures = 0;
  let maybeDelivered = false;
  for (let backoff = 50; ; backoff = Math.min(backoff * 2, 1000)) {
    try {
      return { reply: await call(socket, route, body), transportFailures: failures, maybeDelivered };
    } catch (err) {
      failures++;
      if (!NOT_SENT.has((err as NodeJS.ErrnoException).code ?? '')) maybeDelivered = true;
      if (Date.now() - started + backoff > deadlineMs) throw new Error(`${route} got no answer within ${deadlineMs} ms: ${(err as Error).message}`);
      await sleep(backoff);
    }
  }
}

/** The real protocol server on an in-process driver, closed at teardown. */
export async function serve(t: Test, driver: Driver, socketPath: string, logger: Logger): Promise<RunningServer> {
  const server = await startServer({ socketPath, driver, logger });
  t.teardown(() => server.close(0));
  return server;
}

export function mountTable(): ReturnType<typeof parseMountinfo> {
  return parseMountinfo(fs.readFileSync('/proc/self/mountinfo', 'utf8'));
}

/** Mount points at or below `dir`. */
export function mountsUnder(dir: string): string[] {
  return mountTable()
    .filter((e) => e.mountPoint === dir || e.mountPoint.startsWith(dir + '/'))
    .map((e) => e.mountPoint);
}

/**
 * Invariant 1 of the design, checked from the outside: a volume with a mount
 * record in users/ has its overlay mounted on merged/. Returns the volumes
 * that break it (empty when all is well).
 */
export function usersWithoutMount(root: string): string[] {
  const mounted = new Set(mountTable().map((e) => e.mountPoint));
  const volumes = path.join(root, 'volumes');
  const bad: string[] = [];
  for (const name of fs.existsSync(volumes) ? fs.readdirSync(volumes) : []) {
    const users = path.join(volumes, name, 'users');
    // Regular files only: a directory there is damage (reported by Get, refused by Mount), not a record.
    const entries = fs.statSync(users, { throwIfNoEntry: false })?.isDirectory() ? fs.readdirSync(users, { withFileTypes: true }) : [];
    const records = entries.filter((d) => d.isFile() && !d.name.startsWith('.tmp.')).map((d) => d.name);
    if (records.length > 0 && !mounted.has(path.join(volumes, name, 'merged'))) bad.push(`${name}: records ${records.join(',')} but no mount`);
  }
  return bad;
}

/** Every path below `dir` (relative), sorted, not following symlinks or crossing into mounts' contents. */
export function snapshot(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const r = path.join(rel, e.name);
      out.push(r);
      if (e.isDirectory()) walk(r);
    }
  };
  walk('');
  return out.sort();
}

/**
 * Shows what lies under the mounts below `dir`: a non-recursive bind mount of
 * `dir` carries none of its submounts. Calls fn with the bound path.
 */
export async function underMounts<T>(dir: string, scratch: string, fn: (view: string) => Promise<T> | T): Promise<T> {
  await fsp.mkdir(scratch, { recursive: true });
  await mount(dir, scratch, 'none', constants.MS_BIND, '');
  try {
    return await fn(scratch);
  } finally {
    await umount2(scratch, constants.MNT_DETACH);
  }
}

/** Sets an attribute with chattr (e2fsprogs); undone at teardown even on failure. */
export function chattr(t: Test, flag: '+i' | '-i', target: string): void {
  execFileSync('chattr', [flag, target]);
  if (flag === '+i') t.teardown(() => void spawnSync('chattr', ['-i', target], { stdio: 'ignore' })); // it may be gone by now
}

/**
 * Whether `chattr +i` works on the filesystem of `dir` (default: the one
 * env() puts state roots on): false when it does, else the reason to skip.
 * tmpfs before Linux 6.0, overlayfs and many network filesystems refuse the
 * flag, and a container may lack CAP_LINUX_IMMUTABLE: probed once on a
 * scratch file, confirmed with lsattr, and undone.
 */
export function chattrUnsupported(dir = os.tmpdir()): false | string {
  let probe: string | undefined;
  try {
    probe = fs.mkdtempSync(path.join(dir, 'ontop-chattr-'));
    const file = path.join(probe, 'f');
    fs.writeFileSync(file, '');
    const fail = (what: string, r: ReturnType<typeof spawnSync>) =>
      r.error ? `${what} cannot run (${r.error.message})` : `${what} failed on ${dir}: ${String(r.stderr).trim() || `exit ${r.status}`}`;
    const set = spawnSync('chattr', ['+i', file], { encoding: 'utf8' });
    if (set.error || set.status !== 0) return fail('chattr +i', set);
    const attrs = spawnSync('lsattr', [file], { encoding: 'utf8' });
    spawnSync('chattr', ['-i', file]);
    if (attrs.error || attrs.status !== 0) return fail('lsattr', attrs);
    if (!/^\S*i\S*\s/.test(attrs.stdout)) return `chattr +i did not set the flag on ${dir} (lsattr: ${attrs.stdout.trim()})`;
    return false;
  } catch (err) {
    return `cannot probe chattr on ${dir}: ${(err as Error).message}`;
  } finally {
    if (probe !== undefined) fs.rmSync(probe, { recursive: true, force: true });
  }
}

/** Detaches every mount at or below `dir`, deepest first. */
export async function detachAll(dir: string): Promise<void> {
  for (let round = 0; round < 10; round++) {
    const mounts = mountsUnder(dir).reverse();
    if (mounts.length === 0) return;
    for (const m of mounts) await umount2(m, constants.MNT_DETACH).catch(() => {});
  }
}

/** Waits (bounded) until `check` holds. */
export async function eventually(check: () => boolean | Promise<boolean>, ms = 10_000, what = 'condition'): Promise<void> {
  const until = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`${what} did not hold within ${ms} ms`);
    await sleep(25);
  }
}

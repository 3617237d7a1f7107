// Runs the real daemon (node dist/main.js) for end-to-end tests: a unique
// driver name, a private state root, its socket where dockerd discovers
// unmanaged plugins, and a cleanup that leaves nothing behind.
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import { constants, umount2 } from '../../lib/native.js';
import { call } from './client.js';
import { mountsUnder, REPO, requireEngine, RUN_ID, sleep } from './docker.js';

export const PLUGIN_DIR = '/run/docker/plugins';
/** The daemon's entry point; ONTOP_E2E_MAIN points the tests at another build. */
export const MAIN = process.env.ONTOP_E2E_MAIN || path.join(REPO, 'dist', 'main.js');

export interface DaemonOptions {
  /** Driver name; default ontop-e2e-<run>-<random>. */
  name?: string;
  /** State root; default a fresh temp dir, removed by cleanup(). */
  root?: string;
  /** Passed as --socket when set; otherwise the daemon's default /run/docker/plugins/<name>.sock is expected. */
  socket?: string;
  extraArgs?: string[];
  env?: NodeJS.ProcessEnv;
  /** How long to wait for the socket to answer Plugin.Activate. */
  startTimeoutMs?: number;
  /** When given: cleanup() at its teardown, and the daemon's log on stderr if it failed. */
  t?: Test;
}

export interface Daemon {
  name: string;
  socket: string;
  root: string;
  /** The current process (a new one after restart()). */
  proc: ChildProcess;
  /** Everything the daemon wrote to stdout/stderr so far, across restarts. */
  logs(): string;
  /** JSON log records so far (non-JSON lines skipped). */
  records(): Array<Record<string, any>>;
  /** Sends the signal and waits for the process to exit; resolves with its exit code or signal. */
  kill(signal?: NodeJS.Signals): Promise<number | string | null>;
  /** Starts a new process with the same name, root and socket (after the old one exited) and waits until it answers. */
  restart(): Promise<void>;
  /** SIGTERM, wait for exit (SIGKILL after 15 s); resolves with the exit code or signal. */
  stop(): Promise<number | string | null>;
  /** stop(), then detach anything still mounted under the root, remove the root (if ours) and the socket. */
  cleanup(): Promise<void>;
  running(): boolean;
}

export function randomName(): string {
  return `ontop-e2e-${RUN_ID}-${crypto.randomBytes(3).toString('hex')}`;
}

export async function startDaemon(opts: DaemonOptions = {}): Promise<Daemon> {
  const name = opts.name ?? randomName();
  const ownRoot = opts.root === undefined;
  const root = opts.root ?? (await fsp.mkdtemp(path.join(os.tmpdir(), `ontop-e2e-${RUN_ID}-root-`)));
  const socket = opts.socket ?? path.join(PLUGIN_DIR, `${name}.sock`);
  const args = [MAIN, '--name', name, '--root', root, '--log-level', 'debug'];
  if (opts.socket) args.push('--socket', opts.socket);
  args.push(...(opts.extraArgs ?? []));
  let log = '';
  let proc!: ChildProcess;
  let exited: Promise<number | string | null> = Promise.resolve(null);
  let alive = false;

  const spawnOne = async () => {
    proc = spawn(process.execPath, args, {
      cwd: REPO,
      env: { ...process.env, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    alive = true;
    const p = proc;
    p.stdout!.setEncoding('utf8').on('data', (s: string) => (log += s));
    p.stderr!.setEncoding('utf8').on('data', (s: string) => (log += s));
    exited = new Promise((resolve) =>
      p.once('exit', (code, signal) => {
        if (p === proc) alive = false;
        log += `[daemon pid ${p.pid} exited: ${signal ?? code}]\n`;
        resolve(signal ?? code);
      }),
    );
    await waitActive();
  };

  const waitActive = async () => {
    const end = Date.now() + (opts.startTimeoutMs ?? 20_000);
    let last = '';
    while (Date.now() < end) {
      if (!alive) throw new Error(`daemon ${name} exited before answering Plugin.Activate:\n${log}`);
      try {
        const r = await call(socket, '/Plugin.Activate');
        if (r.status === 200 && Array.isArray(r.json?.Implements) && r.json.Implements.includes('VolumeDriver')) return;
        last = `status ${r.status}: ${r.text}`;
      } catch (err) {
        last = (err as Error).message;
      }
      await sleep(50);
    }
    proc.kill('SIGKILL');
    throw new Error(`daemon ${name} did not answer Plugin.Activate on ${socket} (${last}):\n${log}`);
  };

  const kill = async (signal: NodeJS.Signals = 'SIGTERM') => {
    if (!alive) return exited;
    proc.kill(signal);
    return exited;
  };

  const stop = async () => {
    if (!alive) return exited;
    proc.kill('SIGTERM');
    const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
    try {
      return await exited;
    } finally {
      clearTimeout(timer);
    }
  };

  let cleaned = false;
  const d: Daemon = {
    name,
    socket,
    root,
    get proc() {
      return proc;
    },
    logs: () => log,
    records: () =>
      log
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .flatMap((l) => {
          try {
            return [JSON.parse(l)];
          } catch {
            return [];
          }
        }),
    kill,
    restart: async () => {
      if (alive) throw new Error('restart() while the daemon still runs: kill() or stop() it first');
      log += `[restarting daemon ${name}]\n`;
      await spawnOne();
    },
    stop,
    running: () => alive,
    cleanup: async () => {
      if (cleaned) return;
      cleaned = true;
      await stop();
      await detachUnder(root);
      if (ownRoot) {
        if (mountsUnder(root).length === 0) await fsp.rm(root, { recursive: true, force: true });
        else process.stderr.write(`# not removing ${root}: still mounted: ${mountsUnder(root).join(', ')}\n`);
      }
      await fsp.rm(socket, { force: true });
    },
  };

  try {
    await spawnOne();
  } catch (err) {
    await d.cleanup();
    throw err;
  }
  if (opts.t) {
    const t = opts.t;
    t.teardown(async () => {
      await d.cleanup();
      if (!t.passing()) process.stderr.write(`# ---- daemon ${name} log ----\n${log}# ---- end of daemon log ----\n`);
    });
  }
  return d;
}

/** Last resort, in tests only: lazily detaches every mount at or under dir, deepest first. */
export async function detachUnder(dir: string): Promise<string[]> {
  const targets = mountsUnder(dir).sort((a, b) => b.length - a.length);
  for (const target of targets) {
    try {
      await umount2(target, constants.MNT_DETACH);
    } catch {
      // already gone, or a parent's detach took it with it
    }
  }
  return targets;
}

/** True if something listens on the socket file (a stale file refuses). */
export async function socketAnswers(socket: string): Promise<boolean> {
  if (!fs.existsSync(socket)) return false;
  try {
    await call(socket, '/Plugin.Activate');
    return true;
  } catch {
    return false;
  }
}

/**
 * The start of every e2e file: undefined (the file is skipped, or failed when
 * ONTOP_E2E_REQUIRED=1) without a usable engine; otherwise a daemon of its
 * own, cleaned up at the end of the file.
 */
export async function setupE2E(t: Test, opts: Omit<DaemonOptions, 't'> = {}): Promise<Daemon | undefined> {
  if (!(await requireEngine(t))) return undefined;
  return startDaemon({ ...opts, t });
}

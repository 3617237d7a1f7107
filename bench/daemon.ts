// The daemon under test as a child process: started straight from node (so
// its pid is the daemon's, for /proc/<pid>/status), timed from spawn to a
// connectable socket and to its first reply, stopped with SIGTERM (so
// --cpu-prof can write its profile) and SIGKILL only as a last resort.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import { PluginClient } from './client.js';
import { msSince } from './stats.js';

export interface DaemonOptions {
  /** The daemon's entry point (dist/main.js). */
  script: string;
  name: string;
  root: string;
  socket: string;
  logLevel: string;
  /** Flags for node itself, before the script (--cpu-prof, --max-old-space-size=...). */
  nodeArgs: string[];
  /** Flags for the daemon, after its own. */
  daemonArgs: string[];
  cwd?: string;
}

export interface StartTiming {
  /** Spawn to the first successful connect(2) on the socket. */
  connectMs: number;
  /** Spawn to the first 200 reply (Plugin.Activate). */
  readyMs: number;
}

export interface Memory {
  rssKiB: number;
  hwmKiB: number;
  /** Private memory (RssAnon) and mapped files (RssFile: node's binary and libraries) within rssKiB. */
  anonKiB: number;
  fileKiB: number;
}

const TAIL_BYTES = 16 * 1024;

export class Daemon {
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private tail = '';
  exitInfo: string | undefined;
  /** Lines the daemon logged at warn or error (its log level is warn by default). */
  warnings = 0;

  constructor(readonly opts: DaemonOptions) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  alive(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** The last lines the daemon wrote (stdout and stderr), for error reports. */
  output(): string {
    return this.tail;
  }

  async start(timeoutMs = 30_000): Promise<StartTiming> {
    if (this.alive()) throw new Error('daemon already running');
    const { opts } = this;
    const args = [
      ...opts.nodeArgs,
      opts.script,
      '--name', opts.name,
      '--root', opts.root,
      '--socket', opts.socket,
      '--log-level', opts.logLevel,
      ...opts.daemonArgs,
    ];
    this.exitInfo = undefined;
    const start = process.hrtime.bigint();
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: opts.cwd });
    this.child = child;
    const keep = (chunk: Buffer): void => {
      const text = chunk.toString('utf8');
      this.warnings += (text.match(/"level":"(warn|error)"/g) ?? []).length;
      this.tail = (this.tail + text).slice(-TAIL_BYTES);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitInfo = signal ? `killed by ${signal}` : `exited with status ${code}`;
        resolve();
      });
      child.once('error', (err) => {
        this.exitInfo = `could not start: ${err.message}`;
        resolve();
      });
    });

    const connectMs = await this.waitConnectable(start, timeoutMs);
    const client = new PluginClient(opts.socket);
    try {
      await client.ok('Plugin.Activate');
    } finally {
      client.close();
    }
    return { connectMs, readyMs: msSince(start) };
  }

  private async waitConnectable(start: bigint, timeoutMs: number): Promise<number> {
    for (;;) {
      if (!this.alive()) {
        await this.exited;
        throw new Error(`daemon ${this.exitInfo ?? 'died'} before its socket was ready:\n${this.tail}`);
      }
      if (await tryConnect(this.opts.socket)) return msSince(start);
      if (msSince(start) > timeoutMs) throw new Error(`daemon socket not ready after ${timeoutMs} ms:\n${this.tail}`);
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** VmRSS and VmHWM from /proc/<pid>/status. */
  memory(): Memory {
    return readMemory(this.pid!);
  }

  /** utime + stime of the daemon, in clock ticks. */
  cpuTicks(): number {
    const { user, sys } = this.cpuSplit();
    return user + sys;
  }

  /** utime and stime of the daemon (all its threads), in clock ticks. */
  cpuSplit(): { user: number; sys: number } {
    const stat = fs.readFileSync(`/proc/${this.pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { user: Number(fields[11]), sys: Number(fields[12]) }; // fields 14 and 15 of stat(5)
  }

  /** Waits until the daemon used at most one clock tick in 500 ms (background work done); returns how long it was busy, in ms. */
  async waitIdle(maxMs: number): Promise<number> {
    const start = process.hrtime.bigint();
    let last = this.cpuTicks();
    while (msSince(start) < maxMs) {
      await new Promise((r) => setTimeout(r, 500));
      if (!this.alive()) break;
      const now = this.cpuTicks();
      if (now - last <= 1) return Math.max(0, msSince(start) - 500);
      last = now;
    }
    return msSince(start);
  }

  /** SIGTERM, then SIGKILL after `graceMs`. Resolves once the process is gone. */
  async stop(graceMs = 15_000): Promise<void> {
    const child = this.child;
    if (!child) return;
    if (this.alive()) {
      child.kill('SIGTERM');
      let timer: NodeJS.Timeout | undefined;
      const killed = new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          if (this.alive()) child.kill('SIGKILL');
          resolve();
        }, graceMs);
      });
      await Promise.race([this.exited, killed]);
      clearTimeout(timer);
      await this.exited;
    }
    this.child = undefined;
  }

  /** For process 'exit': no waiting possible, so SIGKILL at once. */
  killNow(): void {
    if (this.alive()) this.child!.kill('SIGKILL');
  }
}

export function readMemory(pid: number): Memory {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rssKiB: kib('VmRSS'), hwmKiB: kib('VmHWM'), anonKiB: kib('RssAnon'), fileKiB: kib('RssFile') };
}

/**
 * The memory of a bare `node -e` process that only waits, read after
 * `settleMs`: what any Node daemon pays before its first line of code, the
 * reference of the memory goals.
 */
export async function bareNodeMemory(settleMs = 1000): Promise<Memory> {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1 << 30)'], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  try {
    await new Promise((r) => setTimeout(r, settleMs));
    if (child.pid === undefined || child.exitCode !== null) throw new Error('the bare node process did not start');
    return readMemory(child.pid);
  } finally {
    child.kill('SIGKILL');
    await exited;
  }
}

export function tryConnect(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => {
      s.destroy();
      resolve(false);
    });
  });
}

// An in-memory VolumeDriver for testing the protocol layer without the
// kernel, and the harness around it: a server on the fake with a captured
// log, scratch dirs, and a raw socket client for what a well-behaved HTTP
// client cannot send. Names steer the fake: "refuse-*" throws a DriverError,
// "boom-*" an unexpected Error, "slow-<ms>" waits that long before answering.
import type { Test } from 'tap';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { DriverError } from '../../lib/errors.js';
import { createLogger, type Level, type Logger } from '../../lib/log.js';
import type { CreateRequest, Empty, MountRequest, NameRequest, VolumeDriver, VolumeInfo } from '../../lib/protocol.js';
import { startServer, type RunningServer, type ServerOptions } from '../../lib/server.js';

export interface FakeDriver extends VolumeDriver {
  /** Every call the driver received, as [verb, request]. */
  calls: [string, unknown][];
  volumes: Map<string, VolumeInfo & { opts: Record<string, string> | null }>;
  closed: boolean;
  close(): Promise<void>;
}

async function steer(name: string): Promise<void> {
  if (name.startsWith('refuse-')) throw new DriverError(`volume ${name} refused: fix it and retry`);
  if (name.startsWith('boom-')) throw new Error(`unexpected failure for ${name}`);
  const slow = /^slow-(\d+)$/.exec(name);
  if (slow) await new Promise((r) => setTimeout(r, Number(slow[1])));
}

export function fakeDriver(): FakeDriver {
  const volumes: FakeDriver['volumes'] = new Map();
  const calls: FakeDriver['calls'] = [];
  const empty = (): Empty => ({});
  const existing = (name: string) => {
    const v = volumes.get(name);
    if (!v) throw new DriverError(`no such volume: ${name}`);
    return v;
  };
  const driver: FakeDriver = {
    calls,
    volumes,
    closed: false,
    async create(req: CreateRequest) {
      calls.push(['create', req]);
      await steer(req.Name);
      volumes.set(req.Name, { Name: req.Name, CreatedAt: new Date(0).toISOString(), Status: {}, opts: req.Opts });
      return empty();
    },
    async remove(req: NameRequest) {
      calls.push(['remove', req]);
      await steer(req.Name);
      existing(req.Name);
      volumes.delete(req.Name);
      return empty();
    },
    async mount(req: MountRequest) {
      calls.push(['mount', req]);
      await steer(req.Name);
      existing(req.Name);
      return { Mountpoint: `/fake/${req.Name}` };
    },
    async unmount(req: MountRequest) {
      calls.push(['unmount', req]);
      await steer(req.Name);
      existing(req.Name);
      return empty();
    },
    async path(req: NameRequest) {
      calls.push(['path', req]);
      await steer(req.Name);
      return { Mountpoint: `/fake/${existing(req.Name).Name}` };
    },
    async get(req: NameRequest) {
      calls.push(['get', req]);
      await steer(req.Name);
      const { opts: _opts, ...info } = existing(req.Name);
      return { Volume: info };
    },
    async list() {
      calls.push(['list', undefined]);
      return { Volumes: [...volumes.values()].map((v) => ({ Name: v.Name })) };
    },
    async capabilities() {
      calls.push(['capabilities', undefined]);
      return { Capabilities: { Scope: 'local' as const } };
    },
    async close() {
      driver.closed = true;
    },
  };
  return driver;
}

/** A temp dir removed at teardown. Kept short: a socket path has at most 107 bytes. */
export async function scratch(t: Test, prefix = 'ontop-'): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), prefix));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

export interface LogLine {
  level: Level;
  msg: string;
  [k: string]: unknown;
}

export function captureLogger(level: Level = 'debug'): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  return { logger: createLogger(level, (l) => lines.push(JSON.parse(l) as LogLine)), lines };
}

export interface Started extends RunningServer {
  driver: FakeDriver;
  lines: LogLine[];
  dir: string;
}

/** A server on a fresh socket and a fake driver, closed at teardown. */
export async function start(t: Test, opts: Partial<ServerOptions> & { driver?: VolumeDriver } = {}): Promise<Started> {
  const dir = await scratch(t);
  const driver = fakeDriver();
  const { logger, lines } = captureLogger();
  const running = await startServer({ socketPath: path.join(dir, 'ontop.sock'), driver, logger, ...opts });
  t.teardown(() => running.close(0));
  return { ...running, driver: opts.driver ? (opts.driver as FakeDriver) : driver, lines, dir };
}

export interface RawReply {
  text: string;
  /** The server closed (or reset) the connection before `waitMs` passed. */
  closed: boolean;
  status: number;
  json: any;
}

/**
 * Writes `chunks` as they are on a fresh connection (a function is called
 * with the socket instead, to write at its own pace) and collects what comes
 * back until the server closes the connection or `waitMs` passes.
 */
export function raw(socketPath: string, chunks: string | Buffer | ((s: net.Socket) => void), waitMs = 2000): Promise<RawReply> {
  return new Promise((resolve) => {
    const sock = net.connect(socketPath);
    const got: Buffer[] = [];
    let done = false;
    const finish = (closed: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      const text = Buffer.concat(got).toString('utf8');
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
      const bodyStart = text.indexOf('\r\n\r\n');
      let json: unknown;
      try {
        json = JSON.parse(text.slice(bodyStart + 4));
      } catch {
        json = undefined;
      }
      resolve({ text, closed, status, json });
    };
    const timer = setTimeout(() => finish(false), waitMs);
    sock.on('data', (c: Buffer) => got.push(c));
    sock.on('close', () => finish(true));
    sock.on('error', () => finish(true));
    sock.on('connect', () => {
      if (typeof chunks === 'function') chunks(sock);
      else sock.write(chunks, () => {});
    });
  });
}

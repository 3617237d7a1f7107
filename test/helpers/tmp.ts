// Scratch directories for tests that mount: everything mounted below one is
// detached and the tree deleted at teardown, even when the test failed.
import type { Test } from 'tap';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { openDriver } from '../../lib/driver.js';
import type { Driver, DriverOptions } from '../../lib/driver.js';
import type { Logger } from '../../lib/log.js';
import { createLogger } from '../../lib/log.js';
import { constants, umount2 } from '../../lib/native.js';
import { parseMountinfo } from '../../lib/mountinfo.js';
import { TMP_RECORD } from '../../lib/records.js';

export interface Captured {
  logger: Logger;
  lines: Array<{ level: string; msg: string; [k: string]: unknown }>;
  has(level: string, msg: RegExp): boolean;
  /** Resolves as soon as `check(lines)` holds: at once, or on the line that makes it hold. Never polls. */
  until(check: (lines: Captured['lines']) => boolean): Promise<void>;
}

export function captureLogger(level: 'debug' | 'info' = 'debug'): Captured {
  const lines: Captured['lines'] = [];
  const waiters = new Set<{ check: (l: Captured['lines']) => boolean; done: () => void }>();
  return {
    logger: createLogger(level, (l) => {
      lines.push(JSON.parse(l));
      for (const w of waiters) {
        if (w.check(lines)) {
          waiters.delete(w);
          w.done();
        }
      }
    }),
    lines,
    has: (lvl, msg) => lines.some((l) => l.level === lvl && msg.test(l.msg)),
    until: (check) =>
      check(lines) ? Promise.resolve() : new Promise<void>((done) => waiters.add({ check, done })),
  };
}

/** Mount points below `dir`, deepest (latest) first. */
export function mountsBelow(dir: string): string[] {
  const table = parseMountinfo(fs.readFileSync('/proc/self/mountinfo', 'utf8'));
  return table.filter((e) => e.mountPoint.startsWith(dir + '/')).map((e) => e.mountPoint).reverse();
}

/** How many mounts are stacked on `p`. */
/** The mount records among the entries of a users/ directory: the file first uses link to and half-written files are none. */
export function records(entries: string[]): string[] {
  return entries.filter((n) => !n.startsWith(TMP_RECORD));
}

/** Bytes of regular files below `dir` on the filesystem of `dir` itself (mounts below are not crossed). */
export function bytesOnDisk(dir: string): number {
  const dev = fs.statSync(dir).dev;
  let sum = 0;
  for (const name of fs.readdirSync(dir)) {
    const p = path.join(dir, name);
    const st = fs.lstatSync(p);
    if (st.dev !== dev) continue;
    if (st.isDirectory()) sum += bytesOnDisk(p);
    else if (st.isFile()) sum += st.size;
  }
  return sum;
}

export function mountCount(p: string): number {
  return parseMountinfo(fs.readFileSync('/proc/self/mountinfo', 'utf8')).filter((e) => e.mountPoint === p).length;
}

export interface Env {
  dir: string;
  root: string;
  log: Captured;
  /** A fresh base directory below dir with optional files. */
  base(name?: string, files?: Record<string, string>): Promise<string>;
  open(opts?: Partial<DriverOptions>): Promise<Driver>;
  /** Child processes killed at teardown. */
  children: ChildProcess[];
}

/** A scratch tree with a state root at dir/root; drivers opened through it are closed at teardown. */
export async function env(t: Test): Promise<Env> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ontop-test-'));
  const drivers: Driver[] = [];
  const children: ChildProcess[] = [];
  const log = captureLogger();
  t.teardown(async () => {
    for (const c of children) c.kill('SIGKILL');
    for (const d of drivers) await d.close().catch(() => {});
    for (let round = 0; round < 10; round++) {
      const mounts = mountsBelow(dir);
      if (mounts.length === 0) break;
      for (const m of mounts) await umount2(m, constants.MNT_DETACH).catch(() => {});
    }
    await fsp.rm(dir, { recursive: true, force: true });
  });
  let n = 0;
  const e: Env = {
    dir,
    root: path.join(dir, 'root'),
    log,
    children,
    async base(name = `base${n++}`, files = {}) {
      const b = path.join(dir, name);
      await fsp.mkdir(b, { recursive: true });
      for (const [f, content] of Object.entries(files)) await fsp.writeFile(path.join(b, f), content);
      return b;
    },
    async open(opts = {}) {
      const d = await openDriver({ root: e.root, logger: log.logger, ...opts });
      drivers.push(d);
      return d;
    },
  };
  return e;
}

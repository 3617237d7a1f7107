#!/usr/bin/env node
// The ontop daemon: flags, start-up checks, logging, wiring of driver and
// server, and its exits. SIGTERM/SIGINT stop it within one bound (stop
// accepting, let in-flight calls finish, remove the socket, close the
// driver); a second signal, or any exception nothing caught, exits at once
// after removing the socket: the state on disk is crash-safe, and a restart
// (systemd, dockerd) beats serving on in a state nobody planned for.
// Everything it touches in the process comes through MainDeps, so tests can
// run it in-process.
import fs from 'node:fs';
import os from 'node:os';
import { pathToFileURL } from 'node:url';
import v8 from 'node:v8';
import { parseConfig, version, type Config } from './config.js';
import { isDriverError } from './errors.js';
import { watchHeap } from './heap.js';
import { createLogger, errorFields, type Logger } from './log.js';
import type { Driver, DriverOptions } from './driver.js';
import { startServer, type RunningServer } from './server.js';

export type OpenDriver = (opts: DriverOptions) => Promise<Driver>;

export interface MainDeps {
  stdout(text: string): void;
  /** Human messages and the JSON log lines. */
  stderr(text: string): void;
  getuid(): number;
  readFile(file: string): string;
  openDriver: OpenDriver;
  /** Where signals and uncaught errors are heard. */
  proc: { on(event: string, listener: (...args: any[]) => void): unknown };
  exit(code: number): void;
  /**
   * Bounds V8's young generation (limitYoungGeneration), before the daemon allocates anything much, and
   * frees dead Buffers that this bound sends to the old generation, and gives memory back to the kernel when
   * the daemon goes idle after a burst (watchHeap).
   */
  tuneHeap(): void;
  /** The bound on a whole stop; STOP_BOUND_MS unless a test needs a shorter one. */
  stopBoundMs?: number;
  /** Runs an `ontop COMMAND` (cli.ts) and resolves with its exit code; the real one unless a test gives another. */
  runCommand?: (argv: string[], env: NodeJS.ProcessEnv) => Promise<number>;
}

/** `ontop ls`, `ontop diff web`, ...: a first argument that is no flag is a command, not the daemon. */
export function isCommand(argv: string[]): boolean {
  return argv.length > 0 && !argv[0]!.startsWith('-');
}

/**
 * A stop (answering calls in flight, then closing the driver) ends within
 * this, finished or not: a managed plugin gets SIGKILL 10 s after SIGTERM.
 */
export const STOP_BOUND_MS = 9_000;
/** The part of the bound in which calls in flight may still be answered; the rest is the driver's to close. */
export const DRAIN_SHARE = 2 / 3;

const EXIT_SIGNAL: Record<'SIGTERM' | 'SIGINT', number> = { SIGINT: 130, SIGTERM: 143 };

export interface Daemon {
  config: Config;
  logger: Logger;
  server: RunningServer;
  driver: Driver;
  /** Stops serving and closes the driver within the stop bound; resolves with the exit code, never rejects. */
  stop(): Promise<number>;
}

/** Starts the daemon, or returns the exit code to leave with (help, version, bad flags, failed checks). */
export async function start(argv: string[], env: NodeJS.ProcessEnv, deps: MainDeps): Promise<Daemon | number> {
  const fail = (code: number, message: string): number => {
    deps.stderr(`ontop: ${message}\n`);
    return code;
  };

  let parsed: ReturnType<typeof parseConfig>;
  try {
    parsed = parseConfig(argv, env, deps);
  } catch (err) {
    // A ConfigError, whose message says what to fix.
    return fail(2, (err as Error).message);
  }
  if ('help' in parsed) {
    deps.stdout(parsed.help);
    return 0;
  }
  if ('version' in parsed) {
    deps.stdout(`${parsed.version}\n`);
    return 0;
  }
  const config = parsed;

  const uid = deps.getuid();
  if (uid !== 0) return fail(1, `must run as root (uid 0), not uid ${uid}: it mounts overlay filesystems`);
  const overlay = overlayProblem(deps.readFile);
  if (overlay) return fail(1, overlay);

  const logger = createLogger(config.logLevel, deps.stderr);
  // Read before anything needs cleaning up, so that a failure here leaves no socket behind.
  const ontopVersion = version();
  let driver: Driver;
  try {
    driver = await deps.openDriver({
      root: config.root,
      name: config.name,
      logger,
      allowBases: config.allowBases,
      hostRoot: config.hostRoot,
      lock: { holder: { command: ['ontop', ...argv].join(' '), role: 'daemon' } },
    });
  } catch (err) {
    const message = (err as Error).message;
    return fail(1, isDriverError(err) ? message : `cannot open the state root ${config.root}: ${message}`);
  }

  let server: RunningServer;
  try {
    server = await startServer({ socketPath: config.socket, socketGroup: config.socketGroup, driver, logger });
  } catch (err) {
    await driver.close().catch(() => {});
    return fail(1, `cannot serve on ${config.socket}: ${(err as Error).message}`);
  }
  logger.info('listening', { socket: config.socket, name: config.name, root: config.root, pid: process.pid, version: ontopVersion });

  const boundMs = deps.stopBoundMs ?? STOP_BOUND_MS;
  const stop = async (): Promise<number> => {
    let pending = 'answering the calls in flight';
    let failed = false;
    const work = (async () => {
      try {
        await server.close(Math.floor(boundMs * DRAIN_SHARE));
      } catch (err) {
        failed = true;
        logger.error('closing the server failed', errorFields(err, true));
        removeSocket(server, logger);
      }
      // Still closed after a server failure: it lets the driver finish what it started and release daemon.lock.
      pending = 'closing the driver (its background work, queued calls, daemon.lock)';
      try {
        await driver.close();
      } catch (err) {
        failed = true;
        logger.error('closing the driver failed', errorFields(err, true));
      }
    })();
    let timer: NodeJS.Timeout | undefined;
    // A referenced timer: with the server closed, it may be all that keeps the process alive to exit with 1.
    const late = new Promise<true>((resolve) => (timer = setTimeout(() => resolve(true), boundMs)));
    const timedOut = await Promise.race([work.then(() => false), late]);
    clearTimeout(timer);
    if (timedOut) {
      logger.error('stop did not finish in time; exiting anyway', { boundMs, pending });
      removeSocket(server, logger);
      return 1;
    }
    if (failed) return 1;
    logger.info('stopped');
    return 0;
  };
  return { config, logger, server, driver, stop };
}

/** Removes the socket now, for an exit that cannot wait; a failure is logged, never thrown. */
function removeSocket(server: RunningServer, logger: Logger): void {
  try {
    server.removeSocketSync();
  } catch (err) {
    logger.error('cannot remove the socket', { socket: server.socketPath, ...errorFields(err) });
  }
}

/** Undefined when the kernel can mount overlayfs, else why not. */
function overlayProblem(readFile: MainDeps['readFile']): string | undefined {
  const tryRead = (file: string): string => {
    try {
      return readFile(file);
    } catch {
      return '';
    }
  };
  if (/\toverlay$/m.test(tryRead('/proc/filesystems'))) return undefined;
  // Not loaded yet, but a module the kernel loads on the first overlay mount.
  const modules = `/lib/modules/${os.release()}`;
  if (/\/overlay\.ko/.test(tryRead(`${modules}/modules.dep`) + tryRead(`${modules}/modules.builtin`))) return undefined;
  return 'this kernel does not support overlayfs (no "overlay" in /proc/filesystems, no overlay module); try `modprobe overlay`';
}

/**
 * Runs the daemon until a signal: the first stops it within the stop bound,
 * a second exits at once. An exception or rejection nothing caught exits 1.
 */
export async function run(argv: string[], env: NodeJS.ProcessEnv, deps: MainDeps = defaultDeps()): Promise<Daemon | undefined> {
  if (isCommand(argv)) {
    const runCommand = deps.runCommand ?? (async (a: string[], e: NodeJS.ProcessEnv) => {
      const cli = await import('./cli.js');
      return cli.runCommand(a, e, cli.defaultCliDeps());
    });
    deps.exit(await runCommand(argv, env));
    return undefined;
  }
  deps.tuneHeap();
  let daemon: Daemon | undefined;
  let exited = false;
  const exit = (code: number): void => {
    if (exited) return;
    exited = true;
    deps.exit(code);
  };
  // Before start() has made the configured logger, errors still go out as JSON lines.
  const log = (): Logger => daemon?.logger ?? createLogger('error', deps.stderr);
  const fatal = (msg: string, err: unknown): void => {
    log().error(msg, errorFields(err, true));
    if (daemon) removeSocket(daemon.server, daemon.logger);
    exit(1);
  };
  // All heard from the very start. Without a signal listener the kernel would kill the process outright,
  // and a stop sent as soon as the socket answers would leave the socket behind: a first signal during
  // start-up waits for it to finish, then stops cleanly; a second one exits at once.
  const early: Array<'SIGTERM' | 'SIGINT'> = [];
  let onSignal = (signal: 'SIGTERM' | 'SIGINT'): void => {
    if (early.length > 0) exit(EXIT_SIGNAL[signal]);
    else early.push(signal);
  };
  deps.proc.on('SIGTERM', () => onSignal('SIGTERM'));
  deps.proc.on('SIGINT', () => onSignal('SIGINT'));
  // The server answers every request itself: anything reaching here is a bug, and the state on disk is
  // crash-safe, so exit and be restarted rather than serve on in a state nobody planned for.
  deps.proc.on('uncaughtException', (err: unknown) => fatal('uncaught exception', err));
  deps.proc.on('unhandledRejection', (err: unknown) => fatal('unhandled rejection', err));

  let started: Daemon | number;
  try {
    started = await start(argv, env, deps);
  } catch (err) {
    fatal('start-up failed', err);
    return undefined;
  }
  if (typeof started === 'number') {
    exit(started);
    return undefined;
  }
  const d = (daemon = started);

  let stopping = false;
  onSignal = (signal: 'SIGTERM' | 'SIGINT') => {
    if (stopping) {
      d.logger.warn('second signal: exiting now', { signal });
      removeSocket(d.server, d.logger);
      exit(EXIT_SIGNAL[signal]);
      return;
    }
    stopping = true;
    d.logger.info('stopping', { signal, boundMs: deps.stopBoundMs ?? STOP_BOUND_MS });
    void d.stop().then(exit);
  };
  for (const signal of early) onSignal(signal);
  return d;
}

export function defaultDeps(): MainDeps {
  return {
    stdout: (text) => process.stdout.write(text),
    stderr: (text) => process.stderr.write(text),
    getuid: () => process.getuid!(),
    readFile: (file) => fs.readFileSync(file, 'utf8'),
    // Loaded lazily, so that tests of this wiring run without the kernel-facing driver.
    openDriver: async (opts) => (await import('./driver.js')).openDriver(opts),
    proc: process,
    exit: (code) => process.exit(code),
    tuneHeap: () => {
      limitYoungGeneration(process.execArgv, process.env.NODE_OPTIONS);
      watchHeap();
    },
  };
}

const SEMI_SPACE_FLAG = /--(max-semi-space-size|min-semi-space-size|semi-space-growth-factor|max-heap-size)\b/;

/**
 * Keeps V8's young generation at its starting size (a 1 MiB semi-space)
 * instead of letting it grow to 16 MiB under a burst of requests and stay
 * there: a daemon's requests leave little garbage each, and the grown space
 * cost 24 MiB of resident memory after 10,000 Creates (94 MiB without it,
 * 70 MiB with it). Unlike --max-semi-space-size, which V8 reads only at
 * start-up, the growth factor is read at every resize, so it works when set
 * from here. A flag the operator gave node (on its command line or in
 * NODE_OPTIONS) wins. Returns whether the flag was set.
 */
export function limitYoungGeneration(execArgv: readonly string[], nodeOptions: string | undefined, setFlags: (flags: string) => void = v8.setFlagsFromString): boolean {
  if (execArgv.some((a) => SEMI_SPACE_FLAG.test(a)) || SEMI_SPACE_FLAG.test(nodeOptions ?? '')) return false;
  setFlags('--semi-space-growth-factor=1');
  return true;
}

/** True when this file is the program node was asked to run (also through the npm bin symlink). */
export function isEntryPoint(moduleUrl: string, scriptPath: string | undefined): boolean {
  if (!scriptPath) return false;
  try {
    return moduleUrl === pathToFileURL(fs.realpathSync(scriptPath)).href;
  } catch {
    return false;
  }
}

if (isEntryPoint(import.meta.url, process.argv[1])) await run(process.argv.slice(2), process.env);

// The `ontop` commands (ls, diff, reset, commit, clone): arguments, output,
// progress and exit codes. A command is a client: it asks the daemon on its
// socket (client.ts), so that it waits in the same per-volume queue as
// dockerd's calls. With no daemon answering it takes daemon.lock itself and
// works on the state root through the same driver code (recovery included),
// and a daemon started meanwhile waits for it (holder.ts). Exit codes, as
// git and docker: 0 done, 1 refused or failed, 2 bad usage.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { formatPath } from './changes.js';
import { NoDaemonError, RemoteOperator } from './client.js';
import { DEFAULT_NAME, DEFAULT_ROOT, PLUGIN_DIR } from './config.js';
import type { Driver, DriverOptions } from './driver.js';
import { describeHolder, RootBusyError } from './holder.js';
import { createLogger } from './log.js';
import { NAME_PATTERN } from './names.js';
import type { ChangeJson, InfoResult, LsRow, Operator, Progress } from './operator.js';

export function defaultCliDeps(): CliDeps {
  return {
    stdout: (text) => process.stdout.write(text),
    stderr: (text) => process.stderr.write(text),
    stdoutIsTTY: process.stdout.isTTY === true,
    stderrIsTTY: process.stderr.isTTY === true,
    getuid: () => process.getuid!(),
    connect: (socket) => new RemoteOperator(socket),
    openOffline: async (opts) => (await import('./driver.js')).openDriver(opts),
    now: () => performance.now(),
  };
}

export const COMMANDS = ['ls', 'diff', 'reset', 'commit', 'clone'] as const;
type Command = (typeof COMMANDS)[number];

export interface CliDeps {
  stdout(text: string): void;
  stderr(text: string): void;
  /** Tables and progress only on a terminal. */
  stdoutIsTTY: boolean;
  stderrIsTTY: boolean;
  getuid(): number;
  /** An Operator that talks to the daemon on `socket`. */
  connect(socket: string): Operator;
  /** Opens the state root without serving (openDriver). */
  openOffline(opts: DriverOptions): Promise<Driver>;
  now(): number;
}

const COMMON = `
Options:
  --name NAME      the daemon's driver name; default ${DEFAULT_NAME}                [ONTOP_NAME]
  --socket PATH    its socket; default ${PLUGIN_DIR}/<name>.sock       [ONTOP_SOCKET]
  --root DIR       its state root; default ${DEFAULT_ROOT}              [ONTOP_ROOT]
                   (checked against the daemon's when given; used directly
                   when no daemon answers on the socket)
  --allow-base DIR, --host-root DIR
                   as the daemon's (repeatable; [ONTOP_ALLOW_BASE],
                   [ONTOP_HOST_ROOT]): used when no daemon answers, so that a
                   command confines bases as the daemon does
  --json           print the result as JSON
  -h, --help       show this help

Exit status: 0 done, 1 refused or failed (the reason on stderr), 2 bad usage.
`;

const HELP: Record<Command, string> = {
  ls: `Usage: ontop ls [options]

Lists the volumes: name, base (every layer of a stack), volatile, the
upper's kind and size limit, users (mounts), mounted, the size of their
changes, created. A table on a terminal, tab-separated otherwise.
`,
  diff: `Usage: ontop diff [options] VOLUME

Prints the volume's changes against its base, one line per path, sorted:
A (added), C (changed: content or metadata), D (deleted). Paths are relative
to the volume's root; unusual bytes are escaped (exact in --json).
`,
  reset: `Usage: ontop reset [options] VOLUME

Drops the volume's changes: the next container sees the base. Refused while
a container uses the volume.
`,
  commit: `Usage: ontop commit [options] [--dry-run] VOLUME

Writes the volume's changes into its base (one file at a time, atomically)
and empties the volume's changes: its view stays the same. Refused while a
container uses the volume. A commit that was stopped completes when run
again.
  --dry-run        print what would be written (as diff), write nothing
`,
  clone: `Usage: ontop clone [options] [--volatile BOOL] SOURCE NAME

Makes volume NAME over SOURCE's base with a copy of SOURCE's changes (as
docker volume create -d ontop -o from=SOURCE NAME). Refused while a
container uses SOURCE.
  --volatile BOOL  true or false; default SOURCE's
`,
};

const POSITIONALS: Record<Command, string[]> = { ls: [], diff: ['VOLUME'], reset: ['VOLUME'], commit: ['VOLUME'], clone: ['SOURCE', 'NAME'] };

class UsageError extends Error {}

/** Runs one command; resolves with the exit code. */
export async function runCommand(argv: string[], env: NodeJS.ProcessEnv, deps: CliDeps): Promise<number> {
  const [word, ...rest] = argv;
  const command = COMMANDS.find((c) => c === word);
  try {
    if (command === undefined) throw new UsageError(`unknown command ${JSON.stringify(word)}: the commands are ${COMMANDS.join(', ')}; run ontop --help`);
    return await execute(command, rest, argv, env, deps);
  } catch (err) {
    if (err instanceof UsageError) {
      deps.stderr(`ontop: ${err.message}\n`);
      return 2;
    }
    deps.stderr(`ontop: ${(err as Error).message.replace(/\n/g, ' ')}\n`);
    return 1;
  }
}

function parse(command: Command, args: string[]) {
  try {
    return parseArgs({
      args,
      strict: true,
      allowPositionals: true,
      options: {
        name: { type: 'string' },
        socket: { type: 'string' },
        root: { type: 'string' },
        'allow-base': { type: 'string', multiple: true },
        'host-root': { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        ...(command === 'commit' ? { 'dry-run': { type: 'boolean' as const } } : {}),
        ...(command === 'clone' ? { volatile: { type: 'string' as const } } : {}),
      },
    });
  } catch (err) {
    throw new UsageError(`${(err as Error).message}; run ontop ${command} --help`);
  }
}

interface Target {
  name: string;
  socket: string;
  root: string;
  /** What the user gave explicitly: only those are checked against the daemon. */
  given: { name: boolean; root: boolean };
  /** The daemon's --allow-base and --host-root, for working without it: its bases stay as confined. */
  allowBases: string[];
  hostRoot: string;
}

function target(values: { name?: string; socket?: string; root?: string; 'allow-base'?: string[]; 'host-root'?: string }, env: NodeJS.ProcessEnv): Target {
  const pick = (flag: string | undefined, envName: string): { value: string; from: string } | undefined =>
    flag !== undefined ? { value: flag, from: `--${envName.slice(6).toLowerCase()}` } : env[envName] ? { value: env[envName]!, from: envName } : undefined;
  const name = pick(values.name, 'ONTOP_NAME');
  if (name !== undefined && !NAME_PATTERN.test(name.value)) throw new UsageError(`${name.from}: invalid driver name ${JSON.stringify(name.value)}`);
  const absolute = (v: { value: string; from: string } | undefined, fallback: string): string => {
    if (v === undefined) return fallback;
    if (!path.isAbsolute(v.value)) throw new UsageError(`${v.from}: ${JSON.stringify(v.value)} is not an absolute path`);
    return path.resolve(v.value);
  };
  const driverName = name?.value ?? DEFAULT_NAME;
  const root = pick(values.root, 'ONTOP_ROOT');
  return {
    name: driverName,
    socket: absolute(pick(values.socket, 'ONTOP_SOCKET'), `${PLUGIN_DIR}/${driverName}.sock`),
    root: absolute(root, DEFAULT_ROOT),
    given: { name: name !== undefined, root: root !== undefined },
    allowBases: (values['allow-base'] ?? (env.ONTOP_ALLOW_BASE ?? '').split(':').filter((v) => v !== '')).map((value) =>
      absolute({ value, from: values['allow-base'] ? '--allow-base' : 'ONTOP_ALLOW_BASE' }, value),
    ),
    hostRoot: absolute(
      values['host-root'] !== undefined ? { value: values['host-root'], from: '--host-root' } : env.ONTOP_HOST_ROOT ? { value: env.ONTOP_HOST_ROOT, from: 'ONTOP_HOST_ROOT' } : undefined,
      '/',
    ),
  };
}

async function execute(command: Command, args: string[], argv: string[], env: NodeJS.ProcessEnv, deps: CliDeps): Promise<number> {
  const { values, positionals } = parse(command, args);
  if (values.help) {
    deps.stdout(HELP[command] + COMMON);
    return 0;
  }
  const wanted = POSITIONALS[command];
  if (positionals.length !== wanted.length) {
    const what = wanted.length === 0 ? 'no arguments' : wanted.join(' ');
    throw new UsageError(`${command} takes ${what}, got ${positionals.length === 0 ? 'none' : positionals.map((p) => JSON.stringify(p)).join(' ')}; run ontop ${command} --help`);
  }
  const where = target(values, env);
  const json = values.json === true;
  const meter = deps.stderrIsTTY ? new ProgressMeter(deps) : undefined;
  const onProgress = meter === undefined ? undefined : (p: Progress) => meter.update(p);
  const work = async (op: Operator): Promise<void> => {
    const [a, b] = positionals as [string, string];
    switch (command) {
      case 'ls': {
        const { volumes } = await op.ls();
        if (json) deps.stdout(JSON.stringify({ volumes }, null, 2) + '\n');
        else deps.stdout(deps.stdoutIsTTY ? table(volumes) : volumes.map(tsvRow).join(''));
        return;
      }
      case 'diff': {
        const result = await op.diff({ name: a });
        deps.stdout(json ? JSON.stringify(result, null, 2) + '\n' : changeLines(result.changes));
        return;
      }
      case 'reset': {
        const result = await op.reset({ name: a });
        if (json) deps.stdout(JSON.stringify(result, null, 2) + '\n');
        return;
      }
      case 'commit': {
        const result = await op.commit({ name: a, dryRun: values['dry-run'] === true }, onProgress);
        meter?.done();
        deps.stdout(json ? JSON.stringify(result, null, 2) + '\n' : changeLines(result.changes));
        return;
      }
      case 'clone': {
        const volatile = values.volatile === undefined ? {} : { volatile: values.volatile as string };
        const result = await op.clone({ source: a, name: b, ...volatile }, onProgress);
        meter?.done();
        deps.stdout(json ? JSON.stringify(result, null, 2) + '\n' : `${result.name}\n`);
        return;
      }
    }
  };

  const remote = deps.connect(where.socket);
  let info: InfoResult;
  try {
    info = await remote.info();
  } catch (err) {
    if (!(err instanceof NoDaemonError)) throw err;
    return offline(where, ['ontop', ...argv].join(' '), deps, work).finally(() => meter?.done());
  }
  checkDaemon(where, info);
  try {
    await work(remote);
  } finally {
    meter?.done();
  }
  return 0;
}

/** The daemon that answered serves the state root and name the user asked for, when the user said which. */
function checkDaemon(where: Target, info: InfoResult): void {
  let root = where.root;
  try {
    root = fs.realpathSync(root);
  } catch {
    // A root that does not exist here cannot be the daemon's: the comparison below says so.
  }
  if (where.given.root && root !== info.root) {
    throw new Error(`the daemon on ${where.socket} (${info.name}, pid ${info.pid}) serves the state root ${info.root}, not ${where.root}: give the --socket of the daemon serving ${where.root}`);
  }
  if (where.given.name && where.name !== info.name) {
    throw new Error(`the daemon on ${where.socket} is ${info.name}, not ${where.name}: give its --socket or --name`);
  }
}

/** No daemon answers: hold daemon.lock and work on the state root directly, with the daemon's own code. */
async function offline(where: Target, command: string, deps: CliDeps, work: (op: Operator) => Promise<void>): Promise<number> {
  if (!fs.existsSync(where.root)) {
    throw new Error(`no daemon answers on ${where.socket}, and there is no state root at ${where.root}: start ontop, or give its --socket or --root`);
  }
  const uid = deps.getuid();
  if (uid !== 0) throw new Error(`no daemon answers on ${where.socket}; working on the state root ${where.root} without it needs root (uid 0), not uid ${uid}`);
  let driver: Driver;
  try {
    driver = await deps.openOffline({
      root: where.root,
      name: where.name,
      allowBases: where.allowBases,
      hostRoot: where.hostRoot,
      logger: createLogger('warn', deps.stderr),
      lock: { holder: { command, role: 'command' } },
    });
  } catch (err) {
    if (err instanceof RootBusyError && err.holder !== undefined) {
      if (err.holder.role === 'daemon') {
        throw new Error(
          `the ontop daemon ${describeHolder(err.holder)} holds the state root ${where.root} but does not answer on ${where.socket}: it may be starting (try again in a moment), or serve another --socket`,
        );
      }
      throw new Error(`${describeHolder(err.holder)} is working on the state root ${where.root}: try again once it is done`);
    }
    throw err;
  }
  try {
    await work(driver);
  } finally {
    await driver.close();
  }
  return 0;
}

function changeLines(changes: ChangeJson[]): string {
  return changes.map((c) => `${c.kind} ${formatPath(c.pathBase64 === undefined ? Buffer.from(c.path) : Buffer.from(c.pathBase64, 'base64'))}\n`).join('');
}

/** A cell of a tab-separated line: tabs, newlines, backslashes and control bytes escaped. */
function cell(s: string): string {
  return s.replace(/[\\\t\n\r\x00-\x1f\x7f]/g, (c) => ({ '\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r' })[c] ?? `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function tsvRow(r: LsRow): string {
  const fields = [
    r.name,
    r.base ?? '',
    String(r.volatile ?? ''),
    String(r.users),
    String(r.mounted),
    String(r.size?.files ?? ''),
    String(r.size?.bytes ?? ''),
    r.created ?? '',
    (r.problems ?? []).join('; '),
    r.upper ?? '',
    String(r.limit ?? ''),
    (r.layers ?? []).map(escapeLayer).join(':'),
  ];
  return fields.map(cell).join('\t') + '\n';
}

export function humanBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

/** A layer as base= takes it: a colon or backslash inside a path escaped. */
function escapeLayer(p: string): string {
  return p.replace(/[\\:]/g, (c) => '\\' + c);
}

function table(rows: LsRow[]): string {
  const head = ['NAME', 'BASE', 'VOLATILE', 'UPPER', 'LIMIT', 'USERS', 'MOUNTED', 'CHANGES', 'CREATED', ''];
  const body = rows.map((r) => [
    r.name,
    cell(r.layers === undefined ? (r.base ?? '-') : r.layers.map(escapeLayer).join(':')),
    r.volatile === undefined ? '-' : String(r.volatile),
    r.upper ?? '-',
    r.limit === undefined ? '-' : humanBytes(r.limit),
    String(r.users),
    String(r.mounted),
    r.size === undefined ? '-' : `${r.size.files} files, ${humanBytes(r.size.bytes)}`,
    r.created === undefined ? '-' : r.created.replace('T', ' ').replace(/\.\d+Z$/, 'Z'),
    r.problems === undefined ? '' : `damaged: ${cell(r.problems.join('; '))}`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)));
  return [head, ...body].map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd() + '\n').join('');
}

/** Files, bytes and rate on one line of a terminal, redrawn in place. */
class ProgressMeter {
  private readonly started: number;
  private last = -Infinity;
  private shown = false;

  constructor(private readonly deps: CliDeps) {
    this.started = deps.now();
  }

  update(p: Progress): void {
    const now = this.deps.now();
    if (now - this.last < 100) return;
    this.last = now;
    const secs = Math.max((now - this.started) / 1000, 0.001);
    this.deps.stderr(`\r\x1b[K${p.files} files, ${humanBytes(p.bytes)}, ${humanBytes(Math.round(p.bytes / secs))}/s`);
    this.shown = true;
  }

  done(): void {
    if (this.shown) this.deps.stderr('\r\x1b[K');
    this.shown = false;
  }
}

// Command-line flags and their ONTOP_* environment twins (a managed plugin is
// configured through env), parsed and validated into one Config. A flag wins
// over its env twin; an empty env var counts as unset, since a managed
// plugin's settable env entries default to "".
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { isLevel, LEVELS, type Level } from './log.js';
import { NAME_PATTERN } from './names.js';

export interface Config {
  /** The driver name users pass to `docker volume create -d`. */
  name: string;
  /** State directory. */
  root: string;
  socket: string;
  logLevel: Level;
  /** Group owning the socket; absent leaves root's. */
  socketGroup?: number;
  /** Directories under which bases may lie; empty means no restriction is configured (the driver decides). */
  allowBases: string[];
  /** Where the host's filesystem is visible (a managed plugin sees it under a bind mount). */
  hostRoot: string;
}

/** A bad flag or value; its message says what is wrong. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

export interface ConfigIO {
  /** Reads a text file (here /etc/group); injectable for tests. */
  readFile(file: string): string;
}

const defaultIO: ConfigIO = { readFile: (file) => fs.readFileSync(file, 'utf8') };

export const DEFAULT_NAME = 'ontop';
export const DEFAULT_ROOT = '/var/lib/ontop';
export const PLUGIN_DIR = '/run/docker/plugins';

export const USAGE = `Usage: ontop [options]
       ontop COMMAND [options] [ARGS]

Serves Docker's volume plugin protocol on a Unix socket. A volume is a
copy-on-write view of a host directory (its base):
  docker volume create -d ontop -o base=/srv/site web

Commands (ontop COMMAND --help for each; they ask the running daemon, or
work on the state root when none answers):
  ls                   the volumes, their users and the size of their changes
  diff VOLUME          the changes, as A/C/D /path lines
  reset VOLUME         drop the changes
  commit VOLUME        write the changes into the base (--dry-run: only show)
  clone SOURCE NAME    a new volume holding a copy of SOURCE's changes

Options (each has an environment twin; the flag wins):
  --name NAME          driver name for -d / --volume-driver             [ONTOP_NAME]
                       letters, digits, _ . - (not "local"); default ${DEFAULT_NAME}
  --root DIR           state directory, absolute; default ${DEFAULT_ROOT}     [ONTOP_ROOT]
  --socket PATH        plugin socket, absolute                          [ONTOP_SOCKET]
                       default ${PLUGIN_DIR}/<name>.sock
  --socket-group GROUP group name (from /etc/group) or numeric gid that  [ONTOP_SOCKET_GROUP]
                       owns the socket (mode 0660); default root's
  --allow-base DIR     allow bases only under DIR, absolute; repeatable  [ONTOP_ALLOW_BASE]
                       (env: colon-separated list)
  --host-root DIR      where the host filesystem is visible, absolute;   [ONTOP_HOST_ROOT]
                       default / (a managed plugin binds it elsewhere)
  --log-level LEVEL    ${LEVELS.join(' | ')}; default info                [ONTOP_LOG_LEVEL]
  -h, --help           show this help and exit
  -V, --version        show the version and exit

An empty environment variable counts as unset. Logs are JSON lines on stderr.
It stays in the foreground; SIGTERM or SIGINT (Ctrl-C) stops it.

Volume options (docker volume create -o KEY=VALUE):
  base=DIR[:DIR...]    the host directory the volume's containers see; its
                       absolute path must exist (required). Several, colon-
                       separated, stack: the first on top (\\: is a colon and
                       \\\\ a backslash inside a path)
  volatile=BOOL        true/false (yes/no, 1/0): forget the changes once the
                       last container using the volume is gone; default false
  upper=disk|tmpfs     where the changes live: on the state root (default) or
                       on a tmpfs of the volume's own (in memory, volatile)
  size=SIZE            the most the changes may hold: 512k, 64m, 10g or bytes.
                       tmpfs: its size (default a tenth of memory); disk: needs
                       a state root on btrfs with quotas on
  from=VOLUME          start with a copy of VOLUME's changes, over its base
                       (then base may be left out); VOLUME's volatile unless given
`;

const OPTIONS = {
  name: { type: 'string' },
  root: { type: 'string' },
  socket: { type: 'string' },
  'socket-group': { type: 'string' },
  'allow-base': { type: 'string', multiple: true },
  'host-root': { type: 'string' },
  'log-level': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'V' },
} as const;


function parseFlags(argv: string[]) {
  try {
    return parseArgs({ args: argv, options: OPTIONS, strict: true, allowPositionals: false }).values;
  } catch (err) {
    throw new ConfigError(`${(err as Error).message}\nRun ontop --help for the options.`);
  }
}

export function version(): string {
  const pkg = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

/** Parses argv (without node and the script) and env into a Config, or a request for help or the version. */
export function parseConfig(argv: string[], env: NodeJS.ProcessEnv, io: ConfigIO = defaultIO): Config | { help: string } | { version: string } {
  const values = parseFlags(argv);
  if (values.help) return { help: USAGE };
  if (values.version) return { version: version() };

  const pick = (flag: keyof typeof OPTIONS, envName: string): { value: string; from: string } | undefined => {
    const v = values[flag];
    if (typeof v === 'string') return { value: v, from: `--${flag}` };
    const e = env[envName];
    return e ? { value: e, from: envName } : undefined;
  };

  const name = pick('name', 'ONTOP_NAME') ?? { value: DEFAULT_NAME, from: 'default' };
  if (!NAME_PATTERN.test(name.value)) {
    throw new ConfigError(`${name.from}: invalid driver name ${JSON.stringify(name.value)}: use letters, digits, _ . - and start with a letter or digit`);
  }
  if (name.value.toLowerCase() === 'local') {
    throw new ConfigError(`${name.from}: the driver name "local" is Docker's built-in driver; choose another`);
  }

  const root = absolute(pick('root', 'ONTOP_ROOT') ?? { value: DEFAULT_ROOT, from: 'default' });
  const socket = absolute(pick('socket', 'ONTOP_SOCKET') ?? { value: `${PLUGIN_DIR}/${name.value}.sock`, from: 'default' });
  const hostRoot = absolute(pick('host-root', 'ONTOP_HOST_ROOT') ?? { value: '/', from: 'default' });

  const level = pick('log-level', 'ONTOP_LOG_LEVEL') ?? { value: 'info', from: 'default' };
  if (!isLevel(level.value)) throw new ConfigError(`${level.from}: unknown log level ${JSON.stringify(level.value)}: use one of ${LEVELS.join(', ')}`);

  const group = pick('socket-group', 'ONTOP_SOCKET_GROUP');
  const socketGroup = group && resolveGroup(group, io);

  const allowBases = values['allow-base']
    ? values['allow-base'].map((value) => absolute({ value, from: '--allow-base' }))
    : (env.ONTOP_ALLOW_BASE ?? '')
        .split(':')
        .filter((value) => value !== '')
        .map((value) => absolute({ value, from: 'ONTOP_ALLOW_BASE' }));

  return {
    name: name.value,
    root,
    socket,
    logLevel: level.value,
    ...(socketGroup === undefined ? {} : { socketGroup }),
    allowBases: [...new Set(allowBases)],
    hostRoot,
  };
}

function absolute({ value, from }: { value: string; from: string }): string {
  if (!path.isAbsolute(value)) throw new ConfigError(`${from}: ${JSON.stringify(value)} is not an absolute path`);
  // Drops a trailing slash and "." / ".." segments, so prefixes compare reliably.
  return path.resolve(value);
}

const MAX_GID = 0xfffffffe; // (gid_t)-1 means "no change" to chown

function resolveGroup({ value, from }: { value: string; from: string }, io: ConfigIO): number {
  if (/^\d+$/.test(value)) {
    const gid = Number(value);
    if (gid > MAX_GID) throw new ConfigError(`${from}: gid ${value} is out of range`);
    return gid;
  }
  let groups: string;
  try {
    groups = io.readFile('/etc/group');
  } catch (err) {
    throw new ConfigError(`${from}: cannot read /etc/group to resolve ${JSON.stringify(value)} (${(err as Error).message}); give a numeric gid`);
  }
  for (const line of groups.split('\n')) {
    const [groupName, , gid] = line.split(':');
    if (groupName === value && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  throw new ConfigError(`${from}: no group named ${JSON.stringify(value)} in /etc/group; give a numeric gid`);
}

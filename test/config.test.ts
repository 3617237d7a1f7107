// Flags, their ONTOP_* env twins, defaults and validation.
import t from 'tap';
import type { Test } from 'tap';
import fs from 'node:fs';
import { ConfigError, parseConfig, USAGE, version, type Config } from '../lib/config.js';
import { KNOWN_OPTIONS } from '../lib/options.js';

const GROUPS = 'root:x:0:\ndocker:x:999:alice,bob\nbroken:x\nodd:x:notanumber:\n';
const io = { readFile: (f: string) => (f === '/etc/group' ? GROUPS : fs.readFileSync(f, 'utf8')) };

function cfg(argv: string[], env: NodeJS.ProcessEnv = {}): Config {
  const c = parseConfig(argv, env, io);
  if ('help' in c || 'version' in c) throw new Error('expected a config');
  return c;
}

function fails(t: Test, argv: string[], env: NodeJS.ProcessEnv, message: RegExp): void {
  const what = `${argv.join(' ')} ${JSON.stringify(env)}`;
  let err: unknown;
  try {
    parseConfig(argv, env, io);
  } catch (e) {
    err = e;
  }
  // A ConfigError, not any Error with that name: main.ts tells usage errors (exit 2) from the rest by class.
  t.ok(err instanceof ConfigError, `${what}: a ConfigError`);
  t.match(err, { name: 'ConfigError', message }, what);
}

t.test('with nothing given, every setting has its documented default', async (t) => {
  t.same(cfg([]), {
    name: 'ontop',
    root: '/var/lib/ontop',
    socket: '/run/docker/plugins/ontop.sock',
    logLevel: 'info',
    allowBases: [],
    hostRoot: '/',
  });
});

t.test('every flag is parsed, and the default socket follows the name', async (t) => {
  t.same(
    cfg([
      '--name', 'cow.v2', '--root', '/srv/state/', '--socket', '/run/x/y.sock', '--log-level', 'debug',
      '--socket-group', 'docker', '--allow-base', '/srv/a', '--allow-base', '/srv/b/../c', '--host-root', '/host',
    ]),
    {
      name: 'cow.v2',
      root: '/srv/state',
      socket: '/run/x/y.sock',
      logLevel: 'debug',
      socketGroup: 999,
      allowBases: ['/srv/a', '/srv/c'],
      hostRoot: '/host',
    },
  );
  t.equal(cfg(['--name=other']).socket, '/run/docker/plugins/other.sock');
});

t.test('every env twin is read, an empty one counts as unset, and ONTOP_ALLOW_BASE is colon-separated', async (t) => {
  const env = {
    ONTOP_NAME: 'envname',
    ONTOP_ROOT: '/e/root',
    ONTOP_LOG_LEVEL: 'warn',
    ONTOP_SOCKET_GROUP: '123',
    ONTOP_ALLOW_BASE: '/a::/b:/a',
    ONTOP_HOST_ROOT: '/hostfs',
  };
  t.same(cfg([], env), {
    name: 'envname',
    root: '/e/root',
    socket: '/run/docker/plugins/envname.sock',
    logLevel: 'warn',
    socketGroup: 123,
    allowBases: ['/a', '/b'],
    hostRoot: '/hostfs',
  });
  t.equal(cfg([], { ONTOP_SOCKET: '/s.sock' }).socket, '/s.sock');
  t.same(cfg([], { ONTOP_NAME: '', ONTOP_ROOT: '', ONTOP_ALLOW_BASE: '', ONTOP_SOCKET_GROUP: '' }), cfg([]));
});

t.test('a flag wins over its env twin, and --allow-base flags replace ONTOP_ALLOW_BASE entirely', async (t) => {
  const c = cfg(['--name', 'flag', '--log-level', 'error', '--allow-base', '/f'], {
    ONTOP_NAME: 'env',
    ONTOP_LOG_LEVEL: 'debug',
    ONTOP_ALLOW_BASE: '/e1:/e2',
  });
  t.match(c, { name: 'flag', logLevel: 'error', allowBases: ['/f'] });
});

t.test('--socket-group takes a numeric gid or a name from /etc/group', async (t) => {
  t.equal(cfg(['--socket-group', '0']).socketGroup, 0);
  t.equal(cfg(['--socket-group', 'root']).socketGroup, 0);
  t.equal(cfg(['--socket-group', '4294967294']).socketGroup, 4294967294);
  fails(t, ['--socket-group', '4294967295'], {}, /--socket-group: gid 4294967295 is out of range/);
  fails(t, ['--socket-group', 'nobody-here'], {}, /no group named "nobody-here" in \/etc\/group; give a numeric gid/);
  fails(t, ['--socket-group', 'broken'], {}, /no group named "broken"/);
  fails(t, ['--socket-group', 'odd'], {}, /no group named "odd"/);
  fails(t, [], { ONTOP_SOCKET_GROUP: 'nope' }, /^ONTOP_SOCKET_GROUP: no group named/);
  const unreadable = { readFile: () => { throw new Error('EACCES: permission denied'); } };
  t.throws(() => parseConfig(['--socket-group', 'docker'], {}, unreadable), {
    message: /cannot read \/etc\/group to resolve "docker" \(EACCES: permission denied\); give a numeric gid/,
  });
});

// A group of this machine other than root (gid 0 is also what a broken lookup might default to), not in GROUPS.
const realGroup = fs
  .readFileSync('/etc/group', 'utf8')
  .split('\n')
  .map((l) => l.split(':'))
  .find(([name, , gid]) => name && !/^\d+$/.test(name) && /^[1-9]\d*$/.test(gid ?? '') && !GROUPS.includes(`${name}:`));

t.test('the real /etc/group is read by default', { skip: realGroup === undefined && 'no group with a non-zero gid in /etc/group' }, async (t) => {
  const [name, , gid] = realGroup!;
  t.match(parseConfig(['--socket-group', name!], {}), { socketGroup: Number(gid) }, `${name} is gid ${gid}`);
});

t.test('bad driver names are refused, naming the source of the value', async (t) => {
  for (const bad of ['', '.x', 'a b', 'a/b', 'ü', 'a:b']) fails(t, ['--name', bad], {}, /^--name: invalid driver name/);
  fails(t, ['--name=-x'], {}, /^--name: invalid driver name "-x"/);
  fails(t, [], { ONTOP_NAME: 'a/b' }, /^ONTOP_NAME: invalid driver name "a\/b"/);
  fails(t, ['--name', 'local'], {}, /"local" is Docker's built-in driver/);
  fails(t, ['--name', 'LOCAL'], {}, /built-in/);
  t.equal(cfg(['--name', '0_a.b-c']).name, '0_a.b-c');
});

t.test('relative paths are refused for every path setting', async (t) => {
  fails(t, ['--root', 'var/lib'], {}, /^--root: "var\/lib" is not an absolute path/);
  fails(t, ['--socket', 'x.sock'], {}, /^--socket: "x.sock" is not an absolute path/);
  fails(t, ['--host-root', '.'], {}, /^--host-root: /);
  fails(t, ['--allow-base', 'srv'], {}, /^--allow-base: "srv" is not an absolute path/);
  fails(t, [], { ONTOP_ALLOW_BASE: '/ok:rel' }, /^ONTOP_ALLOW_BASE: "rel" is not an absolute path/);
  fails(t, [], { ONTOP_ROOT: 'rel' }, /^ONTOP_ROOT: /);
});

t.test('an unknown log level is refused with the valid ones listed', async (t) => {
  fails(t, ['--log-level', 'trace'], {}, /^--log-level: unknown log level "trace": use one of debug, info, warn, error/);
  fails(t, [], { ONTOP_LOG_LEVEL: 'verbose' }, /^ONTOP_LOG_LEVEL: unknown log level/);
});

t.test('unknown flags, missing values and positional arguments are ConfigErrors pointing at --help', async (t) => {
  fails(t, ['--nope'], {}, /Unknown option '--nope'[^]*ontop --help/);
  fails(t, ['--root'], {}, /--root/);
  fails(t, ['extra'], {}, /extra/);
  fails(t, ['--help=yes'], {}, /help/);
});

t.test('--help and -h return the usage text, which documents every flag and env twin', async (t) => {
  t.same(parseConfig(['--help'], {}), { help: USAGE });
  t.same(parseConfig(['-h', '--name', 'local'], {}, io), { help: USAGE }, 'help needs no valid values');
  for (const flag of ['--name', '--root', '--socket', '--socket-group', '--allow-base', '--host-root', '--log-level', '--help', '--version']) {
    t.match(USAGE, flag);
  }
  for (const env of ['ONTOP_NAME', 'ONTOP_ROOT', 'ONTOP_SOCKET', 'ONTOP_SOCKET_GROUP', 'ONTOP_ALLOW_BASE', 'ONTOP_HOST_ROOT', 'ONTOP_LOG_LEVEL']) {
    t.match(USAGE, env);
  }
});

t.test('the usage text documents every volume option', async (t) => {
  for (const option of KNOWN_OPTIONS) t.match(USAGE, `  ${option}=`);
});

t.test('--version and -V return the version from package.json, even with bad values around', async (t) => {
  const pkg = JSON.parse(fs.readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
  t.same(parseConfig(['--version'], {}), { version: pkg.version });
  t.same(parseConfig(['-V'], { ONTOP_NAME: 'local' }), { version: pkg.version });
  t.equal(version(), pkg.version);
});

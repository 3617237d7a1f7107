// Volume options (`docker volume create -o key=value`): parse them and turn
// the user's base into a real directory on the host, refusing anything that
// could not become a safe overlay lower layer.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { DriverError } from './errors.js';
import { quote } from './names.js';

export const KNOWN_OPTIONS = ['base', 'volatile'] as const;

/** One page: no option value has a reason to be longer, and the mount data string must fit in 4095 bytes anyway. */
export const MAX_OPTION_LENGTH = 4096;

export interface VolumeOptions {
  /** As the user gave it; resolveBase turns it into a real path. */
  base: string;
  volatile: boolean;
}

const TRUE = new Set(['true', 'yes', '1']);
const FALSE = new Set(['false', 'no', '0']);

/** Checks the option names and values; touches no file. */
export function parseOptions(opts: unknown): VolumeOptions {
  if (opts !== null && opts !== undefined && (typeof opts !== 'object' || Array.isArray(opts))) {
    throw new DriverError('volume options must be key=value pairs');
  }
  const given = (opts ?? {}) as Record<string, unknown>;
  for (const [key, value] of Object.entries(given)) {
    if (!(KNOWN_OPTIONS as readonly string[]).includes(key)) {
      throw new DriverError(`unknown option ${quote(key)}: the known options are ${KNOWN_OPTIONS.join(', ')}`);
    }
    if (typeof value !== 'string') throw new DriverError(`option ${key} must be a string`);
    if (Buffer.byteLength(value) > MAX_OPTION_LENGTH) {
      throw new DriverError(`option ${key} is longer than ${MAX_OPTION_LENGTH} bytes: give a shorter value`);
    }
  }
  const base = given.base as string | undefined;
  if (base === undefined || base === '') {
    throw new DriverError('option "base" is required: docker volume create -d ontop -o base=/path/to/dir NAME');
  }
  let volatile = false;
  if (given.volatile !== undefined) {
    const v = (given.volatile as string).toLowerCase();
    if (TRUE.has(v)) volatile = true;
    else if (!FALSE.has(v)) {
      throw new DriverError(`option volatile=${quote(given.volatile as string)} is not understood: use true or false (also yes/no, 1/0)`);
    }
  }
  return { base, volatile };
}

export interface BaseContext {
  /** The host's filesystem as this process sees it; '/' unless a managed plugin. Must be a real path. */
  hostRoot: string;
  /** The state root, a real path in this process's view. */
  stateRoot: string;
  /** device and inode of the state root: finds it even through a bind mount or another view of the host. */
  stateRootId: { dev: number; ino: number };
  /** Host paths; when non-empty the base must lie inside one of them. */
  allowBases: readonly string[];
}

export interface ResolvedBase {
  /** Real path on the host: what Status shows and volume.json keeps. */
  host: string;
  /** The same directory in this process's view: what the kernel gets as lowerdir. */
  local: string;
  /** Owner and mode of the base's root, for the volume's root to match. */
  owner: { uid: number; gid: number; mode: number };
}

/** True when `p` is `dir` or inside it (both normalized absolute paths). */
export function isInside(p: string, dir: string): boolean {
  return p === dir || p.startsWith(dir === '/' ? '/' : dir + '/');
}

/**
 * statfs(2) f_type of kernel pseudo-filesystems: overlayfs refuses them as a
 * lower layer (checked here: lowerdir=/proc fails with EINVAL), and a volume
 * over one would only fail at its first Mount. Refused at Create instead.
 */
const PSEUDO_FILESYSTEMS = new Map<number, string>([
  [0x9fa0, 'proc'],
  [0x62656572, 'sysfs'],
  [0x27e0eb, 'cgroup'],
  [0x63677270, 'cgroup2'],
  [0x64626720, 'debugfs'],
  [0x74726163, 'tracefs'],
  [0x73636673, 'securityfs'],
  [0xcafe4a11, 'bpf'],
  [0x1cd1, 'devpts'],
  [0x6165676c, 'pstore'],
  [0x62656570, 'configfs'],
  [0xde5e81e4, 'efivarfs'],
  [0x65735543, 'fusectl'],
  [0x42494e4d, 'binfmt_misc'],
  [0x6e736673, 'nsfs'],
  [0xf97cff8c, 'selinuxfs'],
]);

const MAX_SYMLINKS = 40; // the kernel's own limit (MAXSYMLINKS)

/**
 * Resolves symlinks of a host path inside `hostRoot`, returning the real host
 * path. With hostRoot '/' this is realpath(3). Otherwise each component is
 * resolved by hand so that an absolute link (`/srv/link -> /etc`) means
 * hostRoot/etc and `..` stops at hostRoot: nothing resolves outside the host.
 */
export async function resolveOnHost(hostRoot: string, hostPath: string): Promise<string> {
  if (hostRoot === '/') return fsp.realpath(hostPath);
  let done: string[] = [];
  let todo = hostPath.split('/');
  let links = 0;
  while (todo.length > 0) {
    const part = todo.shift() as string;
    if (part === '' || part === '.') continue;
    if (part === '..') {
      done.pop();
      continue;
    }
    const local = path.join(hostRoot, ...done, part);
    const st = await fsp.lstat(local);
    if (!st.isSymbolicLink()) {
      done.push(part);
      continue;
    }
    if (++links > MAX_SYMLINKS) {
      throw Object.assign(new Error(`ELOOP: too many symbolic links encountered, resolving '${hostPath}'`), { code: 'ELOOP' });
    }
    const target = await fsp.readlink(local);
    if (target.startsWith('/')) done = [];
    todo = [...target.split('/'), ...todo];
  }
  return '/' + done.join('/');
}

/** True when `dir` or one of its parents is the directory with this device and inode. */
async function hasAncestor(dir: string, id: { dev: number; ino: number }): Promise<boolean> {
  const chain = [dir];
  for (let p = dir; p !== '/'; ) chain.push((p = path.dirname(p)));
  // Each stat is a thread-pool round trip: all at once, not one after another.
  const stats = await Promise.all(chain.map((p) => fsp.stat(p)));
  return stats.some((st) => st.dev === id.dev && st.ino === id.ino);
}

/**
 * True when no allowed trees are configured, or the real host path `host`
 * lies inside one of them (each resolved too, so that neither side's
 * symlinks can make a path look inside).
 */
export async function isAllowed(host: string, ctx: BaseContext): Promise<boolean> {
  if (ctx.allowBases.length === 0) return true;
  const allowed = await Promise.all(ctx.allowBases.map((a) => resolveOnHost(ctx.hostRoot, a).catch(() => undefined)));
  return allowed.some((a) => a !== undefined && isInside(host, a));
}

/** Turns the user's base into a real directory, or refuses with a DriverError that says what to do. */
export async function resolveBase(base: string, ctx: BaseContext): Promise<ResolvedBase> {
  const q = quote(base);
  if (base.includes('\0')) throw new DriverError(`base ${q} contains a NUL byte`);
  if (!base.startsWith('/')) throw new DriverError(`base ${q} must be an absolute path such as /srv/data`);
  let host: string;
  try {
    host = await resolveOnHost(ctx.hostRoot, base);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new DriverError(`base ${q} does not exist on the host: create the directory first or fix the path`);
    }
    throw new DriverError(`base ${q} cannot be used: ${(err as Error).message}`);
  }
  const local = ctx.hostRoot === '/' ? host : path.join(ctx.hostRoot, host);
  // The checks below are independent reads of the resolved base: they run together (one round trip of the
  // thread pool instead of one each) and are judged in this order, so the first problem is the one reported.
  const [stat, fsType, nested, allowed] = [fsp.stat(local), fsp.statfs(local), hasAncestor(local, ctx.stateRootId), isAllowed(host, ctx)];
  for (const p of [stat, fsType, nested, allowed]) p.catch(() => undefined); // each is awaited below unless an earlier one refused
  const st = await stat;
  if (!st.isDirectory()) throw new DriverError(`base ${q} is not a directory: give a directory`);
  const pseudo = PSEUDO_FILESYSTEMS.get((await fsType).type);
  if (pseudo !== undefined) {
    throw new DriverError(`base ${q} is on ${pseudo}, a kernel pseudo-filesystem that cannot be an overlay's lower layer: give a directory on a regular filesystem`);
  }
  if (isInside(local, ctx.stateRoot) || (await nested)) {
    throw new DriverError(`base ${q} is inside ontop's state directory ${ctx.stateRoot}: choose a directory outside it`);
  }
  if (!(await allowed)) {
    throw new DriverError(
      `base ${q} is outside the allowed base directories (${ctx.allowBases.join(', ')}): choose a directory inside one of them, or ask the administrator to allow it`,
    );
  }
  return { host, local, owner: { uid: st.uid, gid: st.gid, mode: st.mode } };
}

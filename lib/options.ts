// Volume options (`docker volume create -o key=value`): parse them and turn
// the user's base into a real directory on the host, refusing anything that
// could not become a safe overlay lower layer.
import fs from 'node:fs';
import path from 'node:path';
import { DriverError } from './errors.js';
import type { Owner } from './files.js';
import { quote } from './names.js';
import type { DirInfo } from './native.js';
import { openDir } from './native.js';

export const KNOWN_OPTIONS = ['base', 'volatile', 'from'] as const;

/** One page: no option value has a reason to be longer, and the mount data string must fit in 4095 bytes anyway. */
export const MAX_OPTION_LENGTH = 4096;

export interface VolumeOptions {
  /** As the user gave it; resolveBase turns it into a real path. */
  base: string;
  volatile: boolean;
  /** from=SOURCE: a copy of that volume's changes, over its base (base may then be left out). */
  from?: string;
}

const TRUE = new Set(['true', 'yes', '1']);
const FALSE = new Set(['false', 'no', '0']);

/** Checks the option names and values; touches no file. */
export function parseOptions(opts: unknown, driverName = 'ontop'): VolumeOptions {
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
  const from = given.from as string | undefined;
  if ((base === undefined || base === '') && from === undefined) {
    throw new DriverError(`option "base" is required: docker volume create -d ${driverName} -o base=/path/to/dir NAME`);
  }
  let volatile = false;
  if (given.volatile !== undefined) {
    const v = (given.volatile as string).toLowerCase();
    if (TRUE.has(v)) volatile = true;
    else if (!FALSE.has(v)) {
      throw new DriverError(`option volatile=${quote(given.volatile as string)} is not understood: use true or false (also yes/no, 1/0)`);
    }
  }
  return { base: base ?? '', volatile, ...(from === undefined ? {} : { from }) };
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
  owner: Owner;
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

/**
 * A base resolved once to a descriptor: what was checked is what the kernel
 * mounts (as /proc/self/fd/N), whatever a concurrent process renames or
 * swaps for a symlink meanwhile. The caller closes `fd`.
 */
export interface OpenedBase {
  fd: number;
  /** Real path on the host, as the descriptor names it now. */
  host: string;
  /** The same directory in this process's view. */
  local: string;
  owner: Owner;
  /** Why it must not be a base (state root, pseudo-filesystem, outside the host root); undefined when fine. */
  unfit?: string;
}

/** How the kernel is handed an opened base: the directory open on that descriptor, not a path to resolve again. */
export function descriptorPath(fd: number): string {
  return `/proc/self/fd/${fd}`;
}

/** Renames seen under RESOLVE_IN_ROOT make openat2 fail with EAGAIN, asking to be tried again. */
const OPEN_TRIES = 20;

async function openInRoot(root: string, p: string, tries = OPEN_TRIES): Promise<DirInfo> {
  try {
    return await openDir(root, p);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code !== 'EAGAIN' || e.syscall !== 'openat2' || tries <= 1) throw err;
    return openInRoot(root, p, tries - 1);
  }
}

/**
 * Opens a host path (symlinks resolved inside hostRoot, on a thread of its
 * own: a base may be on a hung network filesystem) and describes the
 * directory through the descriptor. Throws the system error when it cannot
 * be opened as a directory.
 */
export async function openBase(host: string, ctx: BaseContext): Promise<OpenedBase> {
  const dir = await openInRoot(ctx.hostRoot, host);
  const local = dir.path;
  const owner = { uid: dir.uid, gid: dir.gid, mode: dir.mode };
  const opened = (realHost: string, unfit?: string): OpenedBase => ({ fd: dir.fd, host: realHost, local, owner, ...(unfit === undefined ? {} : { unfit }) });
  // Neither can be made to happen on purpose: the first needs the base deleted between openat2 and readlink
  // in the addon, the second a resolution outside the root that RESOLVE_IN_ROOT forbids. Kept as checks.
  /* c8 ignore next */
  if (local.endsWith(' (deleted)')) return opened(local, 'was deleted while it was being opened');
  let realHost = local;
  if (ctx.hostRoot !== '/') {
    /* c8 ignore next */
    if (!isInside(local, ctx.hostRoot)) return opened(local, `resolves outside the host's filesystem (${ctx.hostRoot})`);
    realHost = '/' + path.relative(ctx.hostRoot, local);
  }
  const pseudo = PSEUDO_FILESYSTEMS.get(dir.fsType);
  if (pseudo !== undefined) return opened(realHost, `is on ${pseudo}, a kernel pseudo-filesystem that cannot be an overlay's lower layer: give a directory on a regular filesystem`);
  const root = ctx.stateRootId;
  if ([{ dev: dir.dev, ino: dir.ino }, ...dir.ancestors].some((a) => a.dev === root.dev && a.ino === root.ino)) {
    return opened(realHost, `is inside ontop's state directory ${ctx.stateRoot}: choose a directory outside it`);
  }
  return opened(realHost);
}

/**
 * True when no allowed trees are configured, or the real host path `host`
 * lies inside one of them (each resolved too, so that neither side's
 * symlinks can make a path look inside).
 */
export async function isAllowed(host: string, ctx: BaseContext): Promise<boolean> {
  if (ctx.allowBases.length === 0) return true;
  const allowed = await Promise.all(
    ctx.allowBases.map(async (a) => {
      try {
        const opened = await openBase(a, ctx);
        fs.closeSync(opened.fd);
        return opened.host;
      } catch {
        return undefined; // an allowed tree that does not exist admits nothing
      }
    }),
  );
  return allowed.some((a) => a !== undefined && isInside(host, a));
}

/** Turns the user's base into a real directory, or refuses with a DriverError that says what to do. */
export async function resolveBase(base: string, ctx: BaseContext): Promise<ResolvedBase> {
  const q = quote(base);
  if (base.includes('\0')) throw new DriverError(`base ${q} contains a NUL byte`);
  if (!base.startsWith('/')) throw new DriverError(`base ${q} must be an absolute path such as /srv/data`);
  let opened: OpenedBase;
  try {
    opened = await openBase(base, ctx);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new DriverError(`base ${q} does not exist on the host: create the directory first or fix the path`);
    if (code === 'ENOTDIR') throw new DriverError(`base ${q} is not a directory: give a directory`);
    throw new DriverError(`base ${q} cannot be used: ${(err as Error).message}`);
  }
  try {
    if (opened.unfit !== undefined) throw new DriverError(`base ${q} ${opened.unfit}`);
    if (!(await isAllowed(opened.host, ctx))) {
      throw new DriverError(
        `base ${q} is outside the allowed base directories (${ctx.allowBases.join(', ')}): choose a directory inside one of them, or ask the administrator to allow it`,
      );
    }
    return { host: opened.host, local: opened.local, owner: opened.owner };
  } finally {
    fs.closeSync(opened.fd);
  }
}

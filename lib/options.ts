// Volume options (`docker volume create -o key=value`): parse them and turn
// the user's base into a real directory on the host, refusing anything that
// could not become a safe overlay lower layer.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DriverError, errnoCode } from './errors.js';
import type { Owner } from './files.js';
import { quote } from './names.js';
import type { DirInfo } from './native.js';
import { openDir } from './native.js';

export const KNOWN_OPTIONS = ['base', 'volatile', 'upper', 'size', 'from'] as const;

/** One page: no option value has a reason to be longer, and the mount data string must fit in 4095 bytes anyway. */
export const MAX_OPTION_LENGTH = 4096;

/** A stack of layers reaches the kernel one path per call (lowerdir+), so `base` may be longer: one page per layer up to 64. */
export const MAX_BASE_LENGTH = 64 * 4096;

/** overlayfs's OVL_MAX_STACK: the most lower layers one overlay takes. */
export const MAX_LAYERS = 500;

/** 1 PiB: a size above it is a typo, not a limit (and stays exact as a double). */
export const MAX_SIZE = 2 ** 50;

/** One page: the least a tmpfs can be, and less could not hold a directory on btrfs either. */
export const MIN_SIZE = 4096;

/** The default size of a tmpfs upper: a tenth of the machine's memory, so that a forgotten scratch volume cannot take it all. */
export const TMPFS_DEFAULT_FRACTION = 0.1;

/** Where a volume's changes live: on the state root's filesystem, or in memory. */
export type UpperOption = 'disk' | 'tmpfs';

export interface VolumeOptions {
  /** As the user gave it; resolveBase turns it into a real path. */
  base: string;
  /** `base` split into layers, top first, escapes undone. */
  layers: string[];
  volatile: boolean;
  upper: UpperOption;
  /** Bytes, when given. */
  size?: number;
  /** from=SOURCE: a copy of that volume's changes, over its layers, with its upper and size (base may then be left out). */
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
    const limit = key === 'base' ? MAX_BASE_LENGTH : MAX_OPTION_LENGTH;
    if (Buffer.byteLength(value) > limit) {
      throw new DriverError(`option ${key} is longer than ${limit} bytes: give a shorter value`);
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
  const upper = (given.upper as string | undefined) ?? 'disk';
  if (upper !== 'disk' && upper !== 'tmpfs') {
    throw new DriverError(`option upper=${quote(upper)} is not understood: use disk (the default: changes on the state root) or tmpfs (changes in memory)`);
  }
  if (upper === 'tmpfs') {
    // The changes go with the tmpfs when the last user does: a tmpfs volume is volatile whatever it says.
    if (given.volatile !== undefined && !volatile) {
      throw new DriverError('option upper=tmpfs keeps changes only while the volume is in use, so it cannot be volatile=false: drop volatile, or use upper=disk');
    }
    volatile = true;
  }
  if (from !== undefined) {
    for (const key of ['upper', 'size']) {
      if (given[key] !== undefined) throw new DriverError(`option ${key} cannot be given with from=: a clone has its source's ${key}`);
    }
  }
  // With from= and no base, the layers are the source's, known only when the source is read.
  const layers = base === undefined || base === '' ? [] : splitLayers(base);
  const size = given.size === undefined ? undefined : parseSize(given.size as string);
  return { base: base ?? '', layers, volatile, upper, ...(size === undefined ? {} : { size }), ...(from === undefined ? {} : { from }) };
}

/**
 * Splits `base` into layers, top first, as overlayfs's lowerdir and the
 * `local` driver write it: `:` separates, `\:` is a colon and `\\` a
 * backslash inside a path; a backslash before anything else stays as it is.
 * An empty layer (`/a::/b`, a leading or trailing colon) is refused.
 */
export function splitLayers(base: string): string[] {
  const layers: string[] = [];
  let cur = '';
  for (let i = 0; i < base.length; i++) {
    const c = base[i] as string;
    const next = base[i + 1];
    if (c === '\\' && (next === ':' || next === '\\')) {
      cur += next;
      i++;
    } else if (c === ':') {
      layers.push(cur);
      cur = '';
    } else cur += c;
  }
  layers.push(cur);
  const empty = layers.indexOf('');
  if (empty !== -1) {
    throw new DriverError(
      `base ${quote(base)} has an empty layer (layer ${empty + 1} of ${layers.length}): separate layers with one colon, top first, and write a colon inside a path as \\:`,
    );
  }
  if (layers.length > MAX_LAYERS) {
    throw new DriverError(`base has ${layers.length} layers, more than the ${MAX_LAYERS} an overlay can stack: merge some of them`);
  }
  return layers;
}

const UNITS: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

/** `512k`, `64m`, `10g`, `1t` (powers of 1024, any case) or bytes; refuses zero, negatives, fractions and absurd sizes. */
export function parseSize(text: string): number {
  const m = /^([0-9]{1,16})([kmgt]?)$/i.exec(text);
  const hint = 'give a whole number of bytes, or one with a suffix k, m, g or t (powers of 1024), such as 512k, 64m or 10g';
  if (m === null) throw new DriverError(`option size=${quote(text)} is not understood: ${hint}`);
  const bytes = Number(m[1]) * (UNITS[(m[2] as string).toLowerCase()] as number);
  if (bytes < MIN_SIZE) throw new DriverError(`option size=${quote(text)} is less than ${MIN_SIZE} bytes, too small to hold anything: ${hint}`);
  if (bytes > MAX_SIZE) throw new DriverError(`option size=${quote(text)} is more than 1t * 1024 (1 PiB): give a size this machine can have`);
  return bytes;
}

/** The size of a tmpfs upper: the one given, checked against memory, or TMPFS_DEFAULT_FRACTION of it, whole pages. */
export function tmpfsSize(given: number | undefined, memory = os.totalmem()): number {
  if (given === undefined) return Math.max(MIN_SIZE, Math.floor((memory * TMPFS_DEFAULT_FRACTION) / 4096) * 4096);
  if (given > memory) {
    throw new DriverError(`option size=${given} (bytes) is more than this machine's memory (${memory} bytes): a tmpfs that large would push everything else into swap; give a smaller size`);
  }
  return given;
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

/**
 * Resolves every layer as a single base is (resolveBase), top first; refuses
 * the same directory twice (overlayfs would mount it, but the lower copy could
 * never show).
 */
export async function resolveLayers(layers: readonly string[], ctx: BaseContext): Promise<ResolvedBase[]> {
  const resolved: ResolvedBase[] = [];
  for (const layer of layers) {
    const r = await resolveBase(layer, ctx);
    const twin = resolved.findIndex((o) => o.host === r.host);
    if (twin !== -1) throw new DriverError(`base layers ${twin + 1} and ${resolved.length + 1} are the same directory ${r.host}: give each layer once`);
    resolved.push(r);
  }
  return resolved;
}

/**
 * A layer recorded at Create, opened to a descriptor and checked through it:
 * still what Create resolved, still fit and allowed as a base. Whoever uses
 * it goes through the descriptor, so a path swapped for a symlink after the
 * check changes nothing. `problem` begins each refusal ("volume web cannot be
 * mounted: its base /srv/data"). The caller closes `fd`.
 */
export async function openRecordedLayer(layer: string, ctx: BaseContext, problem: string): Promise<OpenedBase> {
  let base: OpenedBase;
  try {
    base = await openBase(layer, ctx);
  } catch (err) {
    if (errnoCode(err) === 'ENOTDIR') throw new DriverError(`${problem} is no longer a directory: restore it, or remove the volume`);
    throw new DriverError(`${problem} is gone (${(err as Error).message}): restore it, or remove the volume`);
  }
  try {
    if (base.host !== layer) {
      throw new DriverError(`${problem} now resolves to ${base.host} (a symlink changed): restore it, or remove the volume and create it again`);
    }
    if (base.unfit !== undefined) throw new DriverError(`${problem} ${base.unfit}`);
    if (!(await isAllowed(base.host, ctx))) {
      // Created under another --allow-base: the administrator's current choice wins.
      throw new DriverError(`${problem} is outside the allowed base directories (${ctx.allowBases.join(', ')}): remove the volume, or ask the administrator to allow it`);
    }
    return base;
  } catch (err) {
    fs.closeSync(base.fd);
    throw err;
  }
}

/** Every recorded layer, top first, opened and checked as openRecordedLayer does; on a refusal none stays open. */
export async function openRecordedLayers(layers: readonly string[], ctx: BaseContext, problem: (layer: string) => string): Promise<OpenedBase[]> {
  const opened: OpenedBase[] = [];
  try {
    for (const layer of layers) opened.push(await openRecordedLayer(layer, ctx, problem(layer)));
    return opened;
  } catch (err) {
    closeLayers(opened);
    throw err;
  }
}

/** Closes the descriptors of opened layers. */
export function closeLayers(layers: readonly OpenedBase[]): void {
  for (const l of layers) fs.closeSync(l.fd);
}

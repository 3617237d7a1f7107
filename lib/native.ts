// The typed, Promise-returning facade over the native addon; the only module
// that loads it. Checks argument types before any native call and turns the
// addon's {errno, syscall} into errors shaped like Node's own fs errors.
import { createRequire } from 'node:module';
import { getSystemErrorMap } from 'node:util';

export interface NativeConstants {
  readonly MS_RDONLY: number;
  readonly MS_NOSUID: number;
  readonly MS_NODEV: number;
  readonly MS_NOEXEC: number;
  readonly MS_BIND: number;
  readonly MS_REC: number;
  readonly MS_PRIVATE: number;
  readonly MNT_FORCE: number;
  readonly MNT_DETACH: number;
  readonly MNT_EXPIRE: number;
  readonly UMOUNT_NOFOLLOW: number;
  readonly LOCK_SH: number;
  readonly LOCK_EX: number;
  readonly LOCK_NB: number;
  readonly LOCK_UN: number;
}

/** A directory resolved to a descriptor by openDir, described through that descriptor. */
export interface DirInfo {
  /** An O_PATH|O_DIRECTORY|O_CLOEXEC descriptor; the caller closes it with fs.closeSync. */
  fd: number;
  /** st_dev and st_ino, as fs.statSync gives them. */
  dev: number;
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  /** f_type of fstatfs(2), as fs.statfsSync(...).type gives it. */
  fsType: number;
  /** The directory's path in this process's view (readlink of /proc/self/fd/N), " (deleted)" suffix and all. */
  path: string;
  /** {dev, ino} of each ancestor, the parent first, the process root last; empty for the root itself. */
  ancestors: { dev: number; ino: number }[];
}

interface Binding {
  mount(source: string, target: string, fstype: string, flags: number, data: string): Promise<void>;
  umount2(target: string, flags: number): Promise<void>;
  flock(fd: number, operation: number): Promise<void>;
  openDir(root: string, path: string): Promise<DirInfo>;
  fsMount(fstype: string, target: string, params: string[]): Promise<void>;
  subvolCreate(parent: string, name: string, source: string): Promise<void>;
  subvolDestroy(parent: string, name: string): Promise<void>;
  qgroupLimit(path: string, bytes: number): Promise<void>;
  btrfsId(path: string): Promise<{ fsid: string; subvolume: number }>;
  mallocTrim(): boolean;
  threadLimit: number;
  constants: NativeConstants;
}

interface NativeFailure {
  errno: number;
  syscall: string;
  /** fsMount: the parameter whose fsconfig failed. */
  key?: string;
  /** fsMount: what the filesystem wrote to the mount context's log. */
  log?: string;
}

/** A failed syscall, in the shape Node's fs module uses. */
export interface SystemError extends Error {
  code: string;
  errno: number;
  syscall: string;
  path?: string;
  /** fsMount: the parameter whose fsconfig failed. */
  key?: string;
}

const binding = createRequire(import.meta.url)('../build/Release/ontop_native.node') as Binding;

export const constants: NativeConstants = Object.freeze({ ...binding.constants });

/**
 * How many mount, umount2, openDir and waiting flock calls may be in flight
 * at once; each runs on a thread of its own, off libuv's pool. One more
 * rejects at once with EAGAIN.
 */
export const threadLimit: number = binding.threadLimit;

/**
 * glibc's malloc_trim(0): gives the free memory of every malloc arena back to
 * the kernel. Synchronous: it waits on no device. Returns whether any was
 * released (always false where the C library has no malloc_trim).
 */
export function mallocTrim(): boolean {
  return binding.mallocTrim();
}

const systemErrors = getSystemErrorMap();

/** Builds `EBUSY: resource busy or locked, umount2 '/x'` with code, errno, syscall, path. */
export function systemError(errnoPositive: number, syscall: string, path?: string): SystemError {
  const errno = -Math.abs(errnoPositive);
  const [code, description] = systemErrors.get(errno) ?? [`E${Math.abs(errno)}`, 'unknown error'];
  const where = path === undefined ? '' : ` '${path}'`;
  const err = new Error(`${code}: ${description}, ${syscall}${where}`) as SystemError;
  err.code = code;
  err.errno = errno;
  err.syscall = syscall;
  if (path !== undefined) err.path = path;
  return err;
}

function isFailure(value: unknown): value is NativeFailure {
  return typeof value === 'object' && value !== null && typeof (value as NativeFailure).errno === 'number';
}

async function settle<T>(call: Promise<T>, path?: string | ((syscall: string) => string)): Promise<T> {
  try {
    return await call;
  } catch (failure) {
    if (isFailure(failure)) {
      const err = systemError(failure.errno, failure.syscall, typeof path === 'function' ? path(failure.syscall) : path);
      if (failure.key !== undefined) err.key = failure.key;
      // The filesystem's own words ("overlayfs: maximum fs stacking depth exceeded") say more than the errno.
      if (failure.log !== undefined) err.message += ` (${failure.log.trim()})`;
      throw err;
    }
    /* c8 ignore start */
    // The addon rejects only with {errno, syscall}; this keeps an unforeseen
    // rejection (an addon bug) from being swallowed.
    throw failure;
  }
}
/* c8 ignore stop */

function requireString(name: string, value: unknown): asserts value is string {
  if (typeof value !== 'string') {
    throw new TypeError(`The "${name}" argument must be of type string. Received ${describeArgument(value)}`);
  }
  if (value.includes('\0')) {
    throw new TypeError(`The "${name}" argument must not contain null bytes`);
  }
}

function requireInteger(name: string, value: unknown): asserts value is number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new TypeError(`The "${name}" argument must be a non-negative integer. Received ${describeArgument(value)}`);
  }
}

/** A wrong argument as Node's own ERR_INVALID_ARG_TYPE messages show it. */
function describeArgument(value: unknown): string {
  if (value === null) return 'null';
  if (typeof value === 'string') return `type string ('${value.slice(0, 20)}')`;
  if (typeof value === 'object' || typeof value === 'function') return `an instance of ${value.constructor?.name ?? 'Object'}`;
  return `type ${typeof value} (${String(value)})`;
}

/**
 * mount(2) on a thread of its own (a hung filesystem holds only that thread).
 * Errors carry the target as `path`; EAGAIN (syscall `mount`) when
 * `threadLimit` calls are already in flight.
 */
export function mount(source: string, target: string, fstype: string, flags: number, data: string): Promise<void> {
  requireString('source', source);
  requireString('target', target);
  requireString('fstype', fstype);
  requireInteger('flags', flags);
  requireString('data', data);
  return settle(binding.mount(source, target, fstype, flags, data), target);
}

/** umount2(2) on a thread of its own, like mount. */
export function umount2(target: string, flags: number): Promise<void> {
  requireString('target', target);
  requireInteger('flags', flags);
  return settle(binding.umount2(target, flags), target);
}

/**
 * flock(2) on a descriptor the caller opened and will close. Without LOCK_NB
 * a contended lock waits on a thread of its own, never on the event loop or
 * the libuv pool (and counts toward `threadLimit`: EAGAIN beyond it); with
 * LOCK_NB a held lock rejects with EWOULDBLOCK at once.
 */
export function flock(fd: number, operation: number): Promise<void> {
  requireInteger('fd', fd);
  requireInteger('operation', operation);
  return settle(binding.flock(fd, operation));
}

/**
 * Resolves `path` as if `root` were `/` (openat2 with RESOLVE_IN_ROOT: an
 * absolute path, `..` and symlinks all stay inside `root`; magic links such as
 * /proc/self/root are refused) to an O_PATH descriptor, on a thread of its
 * own, and describes the directory through that descriptor. The caller owns
 * `fd`. On failure nothing stays open and the error names the failing step
 * (`open` of root, then `openat2`, `fstat`, `fstatfs`, `readlink`, `openat`
 * of an ancestor); its `path` is `root` for `open`, else `path`.
 */
export function openDir(root: string, path: string): Promise<DirInfo> {
  requireString('root', root);
  requireString('path', path);
  return settle(binding.openDir(root, path), (syscall) => (syscall === 'open' ? root : path));
}

// Calls on files for reading and writing layers (diff, commit, clone): the
// xattr calls, mknod, utimensat with exact nanoseconds, syncfs. Each runs on
// the addon's threads like mount. Paths and xattr names are strings (UTF-8)
// or Buffers (raw bytes, for names that are not UTF-8).

export interface NativeConstants {
  readonly AT_SYMLINK_NOFOLLOW: number;
  readonly XATTR_CREATE: number;
  readonly XATTR_REPLACE: number;
}

interface Binding {
  lgetxattr(path: string | Buffer, name: string | Buffer): Promise<Buffer>;
  llistxattr(path: string | Buffer): Promise<Buffer>;
  lsetxattr(path: string | Buffer, name: string | Buffer, value: Buffer, flags: number): Promise<void>;
  lremovexattr(path: string | Buffer, name: string | Buffer): Promise<void>;
  mknod(path: string | Buffer, mode: number, major: number, minor: number): Promise<void>;
  utimensat(path: string | Buffer, atimeSec: number, atimeNsec: number, mtimeSec: number, mtimeNsec: number, flags: number): Promise<void>;
  syncfs(path: string | Buffer): Promise<void>;
}

/** A path or name: a string (UTF-8) or a Buffer (raw bytes), without NUL. */
function requireBytes(name: string, value: unknown): asserts value is string | Buffer {
  if (typeof value !== 'string' && !Buffer.isBuffer(value)) {
    throw new TypeError(`The "${name}" argument must be of type string or an instance of Buffer. Received ${describeArgument(value)}`);
  }
  if (typeof value === 'string' ? value.includes('\0') : value.includes(0)) {
    throw new TypeError(`The "${name}" argument must not contain null bytes`);
  }
}

function requireBuffer(name: string, value: unknown): asserts value is Buffer {
  if (!Buffer.isBuffer(value)) {
    throw new TypeError(`The "${name}" argument must be an instance of Buffer. Received ${describeArgument(value)}`);
  }
}

function requireBigInt(name: string, value: unknown): asserts value is bigint {
  if (typeof value !== 'bigint') {
    throw new TypeError(`The "${name}" argument must be of type bigint. Received ${describeArgument(value)}`);
  }
}

/** For error messages: a Buffer path shown as Node shows one (its bytes read as UTF-8). */
function shown(p: string | Buffer): string {
  return typeof p === 'string' ? p : p.toString();
}

/** lgetxattr(2): the value of one extended attribute, not following a symlink. ENODATA when it is not set. */
export function lgetxattr(path: string | Buffer, name: string | Buffer): Promise<Buffer> {
  requireBytes('path', path);
  requireBytes('name', name);
  return settle(binding.lgetxattr(path, name), shown(path));
}

/** llistxattr(2): the names of a file's extended attributes (as raw bytes), not following a symlink. */
export function llistxattr(path: string | Buffer): Promise<Buffer[]> {
  requireBytes('path', path);
  return settle(binding.llistxattr(path), shown(path)).then(splitNames);
}

/** The kernel's list of names, each ended by a NUL. */
function splitNames(list: Buffer): Buffer[] {
  const names: Buffer[] = [];
  for (let start = 0; start < list.length; ) {
    const end = list.indexOf(0, start);
    names.push(list.subarray(start, end));
    start = end + 1;
  }
  return names;
}

/** lsetxattr(2), not following a symlink; `flags` is 0, XATTR_CREATE or XATTR_REPLACE. */
export function lsetxattr(path: string | Buffer, name: string | Buffer, value: Buffer, flags = 0): Promise<void> {
  requireBytes('path', path);
  requireBytes('name', name);
  requireBuffer('value', value);
  requireInteger('flags', flags);
  return settle(binding.lsetxattr(path, name, value, flags), shown(path));
}

/** lremovexattr(2), not following a symlink. ENODATA when it is not set. */
export function lremovexattr(path: string | Buffer, name: string | Buffer): Promise<void> {
  requireBytes('path', path);
  requireBytes('name', name);
  return settle(binding.lremovexattr(path, name), shown(path));
}

/**
 * mknod(2): `mode` holds the type (fs.constants.S_IFCHR, S_IFIFO, ...) and
 * the permission bits; an overlay whiteout is S_IFCHR with device 0:0.
 */
export function mknod(path: string | Buffer, mode: number, major = 0, minor = 0): Promise<void> {
  requireBytes('path', path);
  requireInteger('mode', mode);
  requireInteger('major', major);
  requireInteger('minor', minor);
  return settle(binding.mknod(path, mode, major, minor), shown(path));
}

const NS = 1_000_000_000n;

/**
 * utimensat(2) with times in nanoseconds since the epoch (as fs.Stats with
 * `bigint: true` gives them in atimeNs and mtimeNs); `flags` is 0 or
 * AT_SYMLINK_NOFOLLOW, which sets a symlink's own times.
 */
export function utimensat(path: string | Buffer, atimeNs: bigint, mtimeNs: bigint, flags = 0): Promise<void> {
  requireBytes('path', path);
  requireBigInt('atimeNs', atimeNs);
  requireBigInt('mtimeNs', mtimeNs);
  requireInteger('flags', flags);
  const split = (ns: bigint): [number, number] => {
    const nsec = ((ns % NS) + NS) % NS;
    return [Number((ns - nsec) / NS), Number(nsec)];
  };
  const [as, an] = split(atimeNs);
  const [ms, mn] = split(mtimeNs);
  return settle(binding.utimensat(path, as, an, ms, mn, flags), shown(path));
}

/** syncfs(2) of the filesystem holding `path`: everything written to it is on disk when this resolves. */
export function syncfs(path: string | Buffer): Promise<void> {
  requireBytes('path', path);
  return settle(binding.syncfs(path), shown(path));
}

/**
 * Mounts a new `fstype` filesystem on `target` through the new mount API
 * (fsopen, one fsconfig per parameter, fsmount, move_mount), on a thread of
 * its own. `params` are [key, value] pairs; an empty value sets a flag. No
 * value is parsed out of a string, so a path may hold any byte but NUL.
 * Errors carry the target as `path`, the failing step as `syscall`, and for
 * fsconfig the parameter as `key`, with the filesystem's log in the message.
 */
export function fsMount(fstype: string, target: string, params: ReadonlyArray<readonly [string, string]>): Promise<void> {
  requireString('fstype', fstype);
  requireString('target', target);
  const flat: string[] = [];
  for (const [key, value] of params) {
    requireString('key', key);
    requireString('value', value);
    flat.push(key, value);
  }
  return settle(binding.fsMount(fstype, target, flat), target);
}

/** btrfs: makes the subvolume `parent/name` (BTRFS_IOC_SUBVOL_CREATE). Errors carry `parent/name` as `path`. */
export function subvolCreate(parent: string, name: string): Promise<void> {
  requireString('parent', parent);
  requireString('name', name);
  return settle(binding.subvolCreate(parent, name, ''), `${parent}/${name}`);
}

/** btrfs: makes `parent/name` a snapshot of the subvolume `source` (BTRFS_IOC_SNAP_CREATE_V2). */
export function snapshot(source: string, parent: string, name: string): Promise<void> {
  requireString('source', source);
  requireString('parent', parent);
  requireString('name', name);
  if (source === '') throw new TypeError('The "source" argument must not be empty');
  return settle(binding.subvolCreate(parent, name, source), `${parent}/${name}`);
}

/** btrfs: deletes the subvolume `parent/name` whole, however full (BTRFS_IOC_SNAP_DESTROY). */
export function subvolDestroy(parent: string, name: string): Promise<void> {
  requireString('parent', parent);
  requireString('name', name);
  return settle(binding.subvolDestroy(parent, name), `${parent}/${name}`);
}

/**
 * btrfs: limits what the subvolume `path` may hold, referenced and exclusive
 * (BTRFS_IOC_QGROUP_LIMIT on its own quota group). ENOTCONN when the
 * filesystem's quotas are off.
 */
export function qgroupLimit(path: string, bytes: number): Promise<void> {
  requireString('path', path);
  requireInteger('bytes', bytes);
  return settle(binding.qgroupLimit(path, bytes), path);
}

/** btrfs: the filesystem's fsid (as /sys/fs/btrfs/ names it) and the id of the subvolume holding `path`. */
export function btrfsId(path: string): Promise<{ fsid: string; subvolume: number }> {
  requireString('path', path);
  return settle(binding.btrfsId(path), path);
}

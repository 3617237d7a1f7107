// Small helpers for files of the state root: reading one safely, stamping
// what was read, naming temporary files, and giving a directory an owner.
import fs from 'node:fs';

/** Owner and mode of a directory. */
export interface Owner {
  uid: number;
  gid: number;
  mode: number;
}

/**
 * Gives `dir` this owner and mode. Used on an upper layer: the overlay's root
 * directory takes its attributes from the upper's, so a volume's root looks
 * like its base's root only if the upper is made to match.
 */
export function copyOwnerAndMode(dir: string, o: Owner): void {
  // mkdir made it ours: the chown is skipped when that is already right (a root-owned base).
  if (o.uid !== process.geteuid!() || o.gid !== process.getegid!()) fs.chownSync(dir, o.uid, o.gid);
  fs.chmodSync(dir, o.mode & 0o7777);
}

/** Identity and version of a file as stat'ed: it changes whenever the file is replaced or written. */
export function stampOf(st: fs.BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/**
 * 16 hex digits, unique enough for a temporary name in a directory only this daemon writes (names left by an
 * earlier run included: V8 seeds Math.random from the OS at start). Not node:crypto: loading it costs the
 * idle daemon about 1 MiB, and randomBytes a getpid per call; nothing here needs unpredictable names.
 */
export function randomSuffix(): string {
  const half = (): string => Math.floor(Math.random() * 2 ** 32).toString(16).padStart(8, '0');
  return half() + half();
}

/**
 * The text of an open regular file whose size fstat gave: one read when it is that size still (asking one byte
 * more sees the end), where readFileSync(fd) would fstat it again and read once more to find the end.
 */
export function readOpen(fd: number, size: number): string {
  const buf = Buffer.allocUnsafe(size + 1);
  const n = fs.readSync(fd, buf, 0, size + 1, 0);
  // Grown since: read it whole (the read above was positioned, so the descriptor is still at 0).
  return n <= size ? buf.toString('utf8', 0, n) : fs.readFileSync(fd, 'utf8');
}

/**
 * Reads a small file of the state root, sync: opened non-blocking and without following a symlink, and read
 * only once fstat says it is a regular file, so that nothing put in its place (a FIFO, a device, a link) can
 * block or mislead the daemon. `problem` says in words what is wrong; `missing` when it does not exist.
 */
export function readSmallFile(file: string): { text?: string; problem?: string; missing?: true; stamp?: string } {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOFOLLOW);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { missing: true, problem: 'does not exist' };
    if (code === 'ELOOP') return { problem: 'is a symbolic link, not a regular file' };
    return { problem: `cannot be read (${(err as Error).message})` };
  }
  let read: { text?: string; problem?: string; stamp?: string };
  try {
    const st = fs.fstatSync(fd, { bigint: true });
    // A socket is never opened (ENXIO): what is left is a directory, a FIFO or a device.
    const kind = st.isFile() ? undefined : st.isDirectory() ? 'a directory' : st.isFIFO() ? 'a FIFO' : 'a special file';
    read = kind === undefined ? { text: readOpen(fd, Number(st.size)), stamp: stampOf(st) } : { problem: `is ${kind}, not a regular file` };
  } catch (err) {
    read = { problem: `cannot be read (${(err as Error).message})` };
  }
  fs.closeSync(fd);
  return read;
}

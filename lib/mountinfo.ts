// The kernel's mount tables (/proc/<pid>/mountinfo): parse them, find what is
// mounted on a path, and find other mount namespaces that still hold a
// filesystem. See proc(5) for the format.
import fsp from 'node:fs/promises';
import path from 'node:path';

export interface MountEntry {
  id: number;
  parentId: number;
  /** "major:minor" of the filesystem (field 3): the same in every namespace. */
  device: string;
  root: string;
  /** Unescaped. */
  mountPoint: string;
  /** Optional fields such as `shared:12` or `master:3`. */
  optional: string[];
  fstype: string;
  source: string;
  /** Unescaped per-superblock options, e.g. overlay's lowerdir/upperdir. */
  superOptions: string;
}

/** The kernel writes space, tab, newline and backslash in paths as \ooo (octal). */
export function unescapeOctal(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** The inverse of unescapeOctal for the characters the kernel escapes. */
export function escapeOctal(s: string): string {
  return s.replace(/[\\ \t\n]/g, (c) => '\\' + c.charCodeAt(0).toString(8).padStart(3, '0'));
}

/** Parses one line; undefined for a blank or malformed one. */
export function parseLine(line: string): MountEntry | undefined {
  const f = line.split(' ');
  const dash = f.indexOf('-', 6);
  if (dash < 0 || dash + 3 >= f.length) return undefined;
  return {
    id: Number(f[0]),
    parentId: Number(f[1]),
    device: f[2] as string,
    root: unescapeOctal(f[3] as string),
    mountPoint: unescapeOctal(f[4] as string),
    optional: f.slice(6, dash),
    fstype: f[dash + 1] as string,
    source: unescapeOctal(f[dash + 2] as string),
    superOptions: unescapeOctal(f[dash + 3] as string),
  };
}

export function parseMountinfo(text: string): MountEntry[] {
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const e = parseLine(line);
    if (e) out.push(e);
  }
  return out;
}

/** Entries mounted exactly on `mountPoint`, bottom first (the table lists mounts in the order they stack). */
export function mountsAt(text: string, mountPoint: string): MountEntry[] {
  // Only lines that contain the escaped path are parsed: the table can hold thousands of lines.
  const needle = ` ${escapeOctal(mountPoint)} `;
  const out: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line.includes(needle)) continue;
    const e = parseLine(line);
    if (e && e.mountPoint === mountPoint) out.push(e);
  }
  return out;
}

export function readMountinfo(proc = '/proc', pid: number | 'self' = 'self'): Promise<string> {
  return fsp.readFile(path.join(proc, String(pid), 'mountinfo'), 'utf8');
}

/**
 * Splits overlay-style options on unescaped commas and removes the backslash
 * escapes, giving e.g. {upperdir: '/x,y'} for `upperdir=/x\,y`.
 */
export function splitOptions(options: string): Map<string, string> {
  const out = new Map<string, string>();
  let cur = '';
  const flush = (): void => {
    const eq = cur.indexOf('=');
    if (eq < 0) out.set(cur, '');
    else out.set(cur.slice(0, eq), cur.slice(eq + 1));
    cur = '';
  };
  for (let i = 0; i < options.length; i++) {
    const c = options[i] as string;
    if (c === '\\' && i + 1 < options.length) cur += options[++i];
    else if (c === ',') flush();
    else cur += c;
  }
  flush();
  return out;
}

/** A mount of `device` seen in a mount namespace other than ours. */
export interface Holder {
  pid: number;
  /** The process's command name (/proc/<pid>/comm), when it could be read. */
  command?: string;
  namespace: string;
  mountPoint: string;
}

/** /proc/<pid>/comm, or undefined once the process is gone. */
async function commandOf(proc: string, pid: string): Promise<string | undefined> {
  return (await fsp.readFile(path.join(proc, pid, 'comm'), 'utf8').catch(() => undefined))?.trim();
}

/** A process of this mount namespace that holds a file, directory, cwd or root at or below some path. */
export interface User {
  pid: number;
  command?: string;
}

/**
 * Processes (of this process's view of /proc) whose open files, working
 * directory or root lie at or below `dir`: what makes an unmount of `dir`
 * fail with EBUSY. Read only on that path, to name them in the refusal.
 * Processes that vanish or cannot be read while scanning are skipped.
 */
export async function processesUsing(dir: string, proc = '/proc'): Promise<User[]> {
  const inside = (target: string): boolean => target === dir || target.startsWith(dir + '/');
  const users: User[] = [];
  const pids = (await fsp.readdir(proc)).filter((n) => /^[0-9]+$/.test(n));
  await Promise.all(
    pids.map(async (name) => {
      const links = ['cwd', 'root'].map((l) => path.join(proc, name, l));
      const fds = await fsp.readdir(path.join(proc, name, 'fd')).catch(() => [] as string[]);
      links.push(...fds.map((fd) => path.join(proc, name, 'fd', fd)));
      const targets = await Promise.all(links.map((l) => fsp.readlink(l).catch(() => '')));
      if (targets.some(inside)) users.push({ pid: Number(name), command: await commandOf(proc, name) });
    }),
  );
  return users.sort((a, b) => a.pid - b.pid);
}

/**
 * Mount namespaces other than ours that hold `device`. A copy in our peer
 * group `group` (`shared:N`) or a slave of it (`master:N`) does not count,
 * wherever it is mounted: it exists by propagation, our unmount removes it
 * the same way, and a file held open in it makes that unmount fail with EBUSY
 * instead. (dockerd's copy of a managed plugin's propagated mount is such a
 * peer, at another path.) Processes that vanish or cannot be read while
 * scanning are skipped.
 */
export async function otherHolders(device: string, group: string | undefined, proc = '/proc'): Promise<Holder[]> {
  const ours = await fsp.readlink(path.join(proc, 'self/ns/mnt'));
  const seen = new Set<string>([ours]);
  const holders: Holder[] = [];
  const pids = (await fsp.readdir(proc)).filter((n) => /^[0-9]+$/.test(n));
  for (const name of pids) {
    const pid = Number(name);
    let ns: string;
    let text: string;
    try {
      ns = await fsp.readlink(path.join(proc, name, 'ns/mnt'));
      if (seen.has(ns)) continue;
      seen.add(ns);
      text = await readMountinfo(proc, pid);
    } catch {
      continue; // the process exited (ENOENT/ESRCH) or is a kernel thread without a namespace link
    }
    for (const e of parseMountinfo(text)) {
      if (e.device !== device) continue;
      const propagated = group !== undefined && (e.optional.includes(`shared:${group}`) || e.optional.includes(`master:${group}`));
      if (!propagated) holders.push({ pid, command: await commandOf(proc, name), namespace: ns, mountPoint: e.mountPoint });
    }
  }
  return holders;
}

/** The peer group of a shared mount (`shared:N`), if it is one. */
export function peerGroup(e: MountEntry): string | undefined {
  const tag = e.optional.find((o) => o.startsWith('shared:'));
  return tag === undefined ? undefined : tag.slice('shared:'.length);
}

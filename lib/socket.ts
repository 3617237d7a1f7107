// The plugin socket file: making way for it (a stale socket of a dead daemon
// is replaced, a live one or anything that is not a socket refused), and
// binding it atomically (a temporary path, then a rename) with its mode and
// group set before anyone can connect. server.ts serves on it.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';

/** The server could not start: the message says why and what to do. */
export class ServerStartError extends Error {
  override name = 'ServerStartError';
}

/**
 * Makes way for our socket. A live socket means another plugin serves this
 * name: refuse. A stale one (nobody listening) is replaced. Anything that is
 * not a socket is refused, never deleted: the path comes from a flag, and a
 * typo must not destroy a user's file or directory. Returns the temporary
 * sockets of killed ontop processes it removed (see removeDeadTemporaries).
 */
export async function prepareSocketPath(socketPath: string): Promise<string[]> {
  // libuv silently truncates a longer path and would bind somewhere else.
  for (const p of [socketPath, tempPath(socketPath)]) {
    if (Buffer.byteLength(p) > MAX_SOCKET_PATH) {
      throw new ServerStartError(`socket path ${socketPath} is too long: a Unix socket path (and ${p}, bound first) must fit in ${MAX_SOCKET_PATH} bytes`);
    }
  }
  await fsp.mkdir(path.dirname(socketPath), { recursive: true, mode: 0o755 });
  const removed = await removeDeadTemporaries(path.dirname(socketPath));
  // Absent (or unreadable, in which case binding will say why): nothing to make way for.
  const st = await fsp.lstat(socketPath).catch(() => undefined);
  if (!st) return removed;
  if (!st.isSocket()) {
    throw new ServerStartError(`${socketPath} exists and is not a socket; refusing to replace it. Remove it yourself or choose another --socket`);
  }
  const code = await probe(socketPath);
  if (code === undefined) {
    throw new ServerStartError(`another process is listening on ${socketPath}; is ontop already running? Stop it first or choose another --name or --socket`);
  }
  if (code !== 'ECONNREFUSED') {
    throw new ServerStartError(`cannot tell whether ${socketPath} is in use (connect failed with ${code}); remove it if no plugin serves it`);
  }
  // Stale: it is replaced atomically by the rename in listenAtomically.
  return removed;
}

/**
 * Deletes the temporary sockets (tempPath) that ontop processes killed
 * between bind and rename left in `dir`: those whose process is gone and on
 * which nobody listens. One whose process lives is another ontop starting
 * right now, and is left alone.
 */
async function removeDeadTemporaries(dir: string): Promise<string[]> {
  const removed: string[] = [];
  for (const entry of await fsp.readdir(dir, { withFileTypes: true })) {
    const pid = /^\.ontop-([1-9][0-9]*)$/.exec(entry.name)?.[1];
    if (pid === undefined || !entry.isSocket() || isAlive(Number(pid))) continue;
    const p = path.join(dir, entry.name);
    if ((await probe(p)) === 'ECONNREFUSED') {
      await fsp.rm(p, { force: true });
      removed.push(p);
    }
  }
  return removed;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'; // alive, someone else's; ESRCH: gone
  }
}

/** sun_path holds 108 bytes with the terminating NUL. */
const MAX_SOCKET_PATH = 107;

function tempPath(socketPath: string): string {
  return path.join(path.dirname(socketPath), `.ontop-${process.pid}`);
}

/** Connects to a socket: undefined when something accepts, else the error code. */
function probe(socketPath: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    // A Unix connect never blocks: it succeeds, is refused, or fails at once (EAGAIN when the backlog is full).
    const sock = net.connect(socketPath);
    sock.on('connect', () => {
      sock.destroy();
      resolve(undefined);
    });
    sock.on('error', (err: NodeJS.ErrnoException) => resolve(err.code));
  });
}

/**
 * Binds under a temporary name, sets mode and group, then renames into place:
 * the socket never appears with the wrong permissions, a stale one is
 * replaced in one step, and libuv, which unlinks the path it bound when the
 * server closes, only ever unlinks the temporary name (it would otherwise
 * delete whatever is at the real path by then, even a successor's socket).
 */
export async function listenAtomically(server: http.Server, socketPath: string, gid: number | undefined, backlog: number): Promise<fs.Stats> {
  const tmp = tempPath(socketPath);
  await fsp.rm(tmp, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // The default backlog (511) refuses (EAGAIN) a burst of more connections at once: a Unix socket does not queue beyond it.
    server.listen({ path: tmp, backlog }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  try {
    await fsp.chmod(tmp, 0o660);
    if (gid !== undefined) await fsp.chown(tmp, 0, gid);
    await fsp.rename(tmp, socketPath);
    return await fsp.lstat(socketPath);
  } catch (err) {
    await new Promise((resolve) => server.close(resolve));
    throw err;
  }
}

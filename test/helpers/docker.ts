// The Docker engine for end-to-end tests: the docker CLI against DOCKER_HOST
// (or the CLI's default), a per-test scope that removes the containers and
// volumes it made, and small polling helpers.
//
// Without a usable engine an e2e file skips with the reason, unless
// ONTOP_E2E_REQUIRED=1 (set by .ci/run), when it fails instead.
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';

export interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

export const IMAGE = process.env.ONTOP_TEST_IMAGE || 'ontop-test:busybox';
export const REQUIRED = process.env.ONTOP_E2E_REQUIRED === '1';
/** Shared by every daemon and scratch dir of one CI run, so .ci/run can clean up after a crash. */
export const RUN_ID = process.env.ONTOP_E2E_RUN || crypto.randomBytes(3).toString('hex');
export const REPO = fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, '');

/** Runs the docker CLI; never rejects on a non-zero exit (the code is in the result). */
export function docker(args: string[], opts: { timeout?: number } = {}): Promise<Result> {
  const started = Date.now();
  return new Promise<Result>((resolve) => {
    execFile(
      'docker',
      args,
      { timeout: opts.timeout ?? 180_000, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        let code = 0;
        if (err) {
          const e = err as NodeJS.ErrnoException & { code?: unknown; killed?: boolean };
          code = typeof e.code === 'number' ? e.code : 127;
          if (e.killed) stderr += `\n[killed after ${opts.timeout ?? 180_000} ms]`;
          if (typeof e.code === 'string') stderr += `\n[${e.code}: ${e.message}]`;
        }
        resolve({ code, stdout, stderr });
      },
    );
  }).then((r) => {
    // ONTOP_E2E_TRACE=1: every docker command with its duration and exit code, on stderr.
    if (process.env.ONTOP_E2E_TRACE) process.stderr.write(`# docker ${args.join(' ').slice(0, 160)} -> ${r.code} in ${Date.now() - started} ms\n`);
    return r;
  });
}

/** Like docker() but throws with the command and its stderr unless it exits 0; returns trimmed stdout. */
export async function dockerOk(args: string[], opts: { timeout?: number } = {}): Promise<string> {
  const r = await docker(args, opts);
  if (r.code !== 0) throw new Error(`docker ${args.join(' ')} exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
  return r.stdout.trim();
}

export type Engine = { ok: true; version: string } | { ok: false; reason: string };

let probed: Promise<Engine> | undefined;

/** Finds out once per process whether e2e tests can run here. */
export function engine(): Promise<Engine> {
  return (probed ??= probe());
}

async function probe(): Promise<Engine> {
  if (process.platform !== 'linux') return { ok: false, reason: 'not Linux' };
  if (process.getuid?.() !== 0) return { ok: false, reason: 'not root (the driver mounts overlays and binds /run/docker/plugins)' };
  const host = process.env.DOCKER_HOST;
  if (host && !host.startsWith('unix://')) {
    return { ok: false, reason: `DOCKER_HOST=${host} is not a local unix socket; dockerd must see this host's /run/docker/plugins` };
  }
  const info = await docker(['info', '--format', '{{.ServerVersion}}'], { timeout: 30_000 });
  if (info.code !== 0) return { ok: false, reason: `no Docker engine (docker info: ${info.stderr.trim().split('\n').pop() || info.code})` };
  const main = process.env.ONTOP_E2E_MAIN || path.join(REPO, 'dist', 'main.js');
  if (!fs.existsSync(main)) {
    return { ok: false, reason: `${main} is missing: run \`npm ci\` (or \`npx tsc -p .\`) first` };
  }
  const img = await docker(['image', 'inspect', '--format', '{{.Id}}', IMAGE]);
  if (img.code !== 0) {
    const built = await buildImage();
    if (built) return { ok: false, reason: `test image ${IMAGE} is missing and could not be built: ${built}` };
  }
  return { ok: true, version: info.stdout.trim() };
}

/** Builds IMAGE from a static /bin/busybox the way .ci/run does; returns an error text or undefined. */
async function buildImage(): Promise<string | undefined> {
  const busybox = '/bin/busybox';
  if (!fs.existsSync(busybox)) return 'no /bin/busybox (apt-get install busybox-static)';
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), `ontop-e2e-${RUN_ID}-image-`));
  try {
    for (const d of ['bin', 'etc', 'tmp', 'proc', 'sys', 'dev']) await fsp.mkdir(path.join(dir, d));
    await fsp.chmod(path.join(dir, 'tmp'), 0o1777);
    await fsp.copyFile(busybox, path.join(dir, 'bin', 'busybox'));
    await fsp.chmod(path.join(dir, 'bin', 'busybox'), 0o755);
    const list = await new Promise<string>((resolve, reject) =>
      execFile(busybox, ['--list'], (err, out) => (err ? reject(err) : resolve(out))),
    );
    for (const applet of list.split('\n').filter((a) => a && a !== 'busybox')) {
      await fsp.symlink('busybox', path.join(dir, 'bin', applet));
    }
    await fsp.writeFile(path.join(dir, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n');
    await fsp.writeFile(path.join(dir, 'etc', 'group'), 'root:x:0:\nnogroup:x:65534:\n');
    // docker import reads a tarball; a directory is not accepted, so tar it (busybox has tar).
    const tarball = path.join(os.tmpdir(), `ontop-e2e-${RUN_ID}-image.tar`);
    await new Promise<void>((resolve, reject) =>
      execFile(busybox, ['tar', '-C', dir, '-cf', tarball, '.'], (err) => (err ? reject(err) : resolve())),
    );
    const r = await docker(['import', '-c', 'ENV PATH=/bin', '-c', 'CMD ["/bin/sh"]', tarball, IMAGE]);
    await fsp.rm(tarball, { force: true });
    if (r.code !== 0) return r.stderr.trim();
    const run = await docker(['run', '--rm', IMAGE, 'true']);
    return run.code === 0 ? undefined : `it does not run: ${run.stderr.trim()}`;
  } catch (err) {
    return (err as Error).message;
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

/**
 * Gate for an e2e file or subtest. Resolves true when the engine is usable.
 * Otherwise skips `t` with the reason, or fails it when ONTOP_E2E_REQUIRED=1.
 */
export async function requireEngine(t: Test): Promise<boolean> {
  const e = await engine();
  if (e.ok) return true;
  if (REQUIRED) {
    t.fail(`ONTOP_E2E_REQUIRED=1 but e2e tests cannot run: ${e.reason}`);
  } else {
    t.plan(0, `skipped: ${e.reason}`);
  }
  return false;
}

export function uniq(prefix: string): string {
  return `${prefix}-${crypto.randomBytes(4).toString('hex')}`;
}

/** A scratch directory named after the run, removed at teardown. */
export async function scratchDir(t: Test, label = 'tmp'): Promise<string> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), `ontop-e2e-${RUN_ID}-${label}-`));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Writes a tree of files: { 'a.txt': 'x', 'sub/b.txt': 'y' }. */
export async function writeTree(dir: string, files: Record<string, string | Buffer>): Promise<void> {
  for (const [rel, content] of Object.entries(files)) {
    const p = path.join(dir, rel);
    await fsp.mkdir(path.dirname(p), { recursive: true });
    await fsp.writeFile(p, content);
  }
}

/** Every file, directory and symlink under dir with its content, mode and mtime: compares bases before and after. */
export async function snapshot(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  async function walk(rel: string): Promise<void> {
    const abs = path.join(dir, rel);
    const st = await fsp.lstat(abs);
    const meta = `${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid} ${st.mtimeMs}`;
    if (st.isDirectory()) {
      out[rel + '/'] = `dir ${meta}`;
      for (const e of (await fsp.readdir(abs)).sort()) await walk(path.join(rel, e));
    } else if (st.isSymbolicLink()) {
      out[rel] = `link ${await fsp.readlink(abs)}`;
    } else {
      const data = await fsp.readFile(abs);
      out[rel] = `file ${meta} ${crypto.createHash('sha256').update(data).digest('hex')}`;
    }
  }
  await walk('.');
  return out;
}

/** Mount points (decoded) from /proc/self/mountinfo that are dir or below it. */
export function mountsUnder(dir: string): string[] {
  const decode = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => decode(l.split(' ')[4]!))
    .filter((p) => p === dir || p.startsWith(dir.endsWith('/') ? dir : dir + '/'));
}

export function isMounted(target: string): boolean {
  return mountsUnder(target).includes(target);
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls fn until it returns a truthy value or ms pass; returns the last value. */
export async function waitFor<T>(fn: () => T | Promise<T>, ms = 30_000, every = 100): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v || Date.now() >= end) return v;
    await sleep(every);
  }
}

/**
 * Containers and volumes made by one test, removed at its teardown (containers
 * first, so the volumes are no longer in use). Call before the daemon stops.
 */
export class Scope {
  readonly containers = new Set<string>();
  readonly volumes = new Set<string>();

  constructor(t: Test) {
    t.teardown(() => this.cleanup());
  }

  /** A fresh container name, removed at teardown. */
  container(prefix = 'c'): string {
    const name = uniq(`ontop-e2e-${RUN_ID}-${prefix}`);
    this.containers.add(name);
    return name;
  }

  /** A fresh volume name, removed at teardown. */
  volume(prefix = 'v'): string {
    const name = uniq(`oe${RUN_ID}-${prefix}`);
    this.volumes.add(name);
    return name;
  }

  /** `docker volume create -d driver -o k=v ... name`. */
  async createVolume(driver: string, opts: Record<string, string>, name = this.volume()): Promise<string> {
    this.volumes.add(name);
    const args = ['volume', 'create', '-d', driver];
    for (const [k, v] of Object.entries(opts)) args.push('-o', `${k}=${v}`);
    await dockerOk([...args, name]);
    return name;
  }

  /** `docker run --rm` in the foreground with the given volume specs; resolves with the result. */
  run(mounts: string[], script: string, extra: string[] = []): Promise<Result> {
    const name = this.container('run');
    return docker(['run', '--rm', '--name', name, ...mounts.flatMap((m) => ['-v', m]), ...extra, IMAGE, 'sh', '-c', script]);
  }

  /** `docker run -d`; resolves with the container name once it is running. */
  async start(mounts: string[], script: string, extra: string[] = []): Promise<string> {
    const name = this.container('bg');
    await dockerOk(['run', '-d', '--name', name, ...mounts.flatMap((m) => ['-v', m]), ...extra, IMAGE, 'sh', '-c', script]);
    return name;
  }

  /** Waits for a detached container to exit; returns its exit code and logs. */
  async wait(name: string, ms = 120_000): Promise<{ code: number; logs: string }> {
    const r = await docker(['wait', name], { timeout: ms });
    const logs = await docker(['logs', name]);
    const code = r.code === 0 ? Number(r.stdout.trim()) : -1;
    return { code, logs: logs.stdout + logs.stderr + (r.code === 0 ? '' : `\n[docker wait: ${r.stderr.trim()}]`) };
  }

  async cleanup(): Promise<void> {
    if (this.containers.size) {
      await docker(['rm', '-f', '-v', ...this.containers]);
      this.containers.clear();
    }
    for (const v of this.volumes) {
      // A swarm task or a container being removed may hold the volume a little
      // longer: retry only while it is in use. (A name dockerd does not know
      // is slow to refuse: dockerd asks every plugin it ever used.)
      let r = await docker(['volume', 'rm', v]);
      for (let i = 0; i < 40 && r.code !== 0 && /in use/i.test(r.stderr); i++) {
        await sleep(500);
        r = await docker(['volume', 'rm', v]);
      }
      // Still there (say the driver is gone): drop dockerd's record anyway.
      if (r.code !== 0 && !/no such volume/i.test(r.stderr)) await docker(['volume', 'rm', '-f', v]);
    }
    this.volumes.clear();
  }
}

/** `docker volume inspect` of one volume, parsed. */
export async function inspectVolume(name: string): Promise<any> {
  return JSON.parse(await dockerOk(['volume', 'inspect', name]))[0];
}

/**
 * Shell prelude for container scripts: `await_file PATH` waits (60 s at most,
 * then exit 3) until PATH exists.
 */
export const SH =
  'await_file() { i=0; while [ ! -e "$1" ]; do sleep 0.1; i=$((i+1)); ' +
  'if [ $i -ge 600 ]; then echo "timed out waiting for $1" >&2; exit 3; fi; done; }; ';

/**
 * The volume's Mountpoint as `docker volume inspect` shows it while a
 * container uses it (a driver may show "" while nobody does): polls until it
 * is set, and throws after ms.
 */
export async function liveMountpoint(name: string, ms = 15_000): Promise<string> {
  const mp = await waitFor(async () => (await inspectVolume(name)).Mountpoint as string, ms, 100);
  if (!mp) throw new Error(`docker volume inspect ${name} shows no Mountpoint while a container uses it`);
  return mp;
}

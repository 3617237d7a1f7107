// `docker run --rm -v VOL:/x IMAGE true` with an ontop volume against the same
// with a `local` volume, in alternating pairs. Runs only where an engine
// answers and ONTOP_TEST_IMAGE names an image; the daemon for it listens
// under /run/docker/plugins/ (the only place dockerd discovers it) with a
// name of its own, and everything it made is removed afterwards.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import type { Cleanup } from './cleanup.js';
import { Daemon, type DaemonOptions } from './daemon.js';
import type { Report } from './report.js';
import { median, msSince, Samples } from './stats.js';

const PLUGIN_DIR = '/run/docker/plugins';

function docker(args: string[], timeoutMs = 120_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('docker', args, { timeout: timeoutMs, maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`docker ${args.join(' ')}: ${stderr.trim() || err.message}`));
      else resolve(stdout.trim());
    });
  });
}

/** Why the phase cannot run here, or undefined when it can. */
export async function dockerUnavailable(): Promise<string | undefined> {
  const image = process.env.ONTOP_TEST_IMAGE;
  let version: string;
  try {
    version = await docker(['info', '--format', '{{.ServerVersion}}'], 20_000);
  } catch (err) {
    return `no Docker engine (${process.env.DOCKER_HOST ? `DOCKER_HOST=${process.env.DOCKER_HOST}` : 'DOCKER_HOST unset'}; docker info failed: ${(err as Error).message.split('\n').pop()})`;
  }
  if (!version) return 'docker info reported no server';
  if (!image) return 'ONTOP_TEST_IMAGE is not set (the CI script builds ontop-test:busybox)';
  try {
    await docker(['image', 'inspect', '--format', '{{.Id}}', image], 20_000);
  } catch {
    return `image ${image} (ONTOP_TEST_IMAGE) is not present on the engine`;
  }
  return undefined;
}

export async function dockerRun(
  report: Report,
  cleanup: Cleanup,
  daemonOpts: (name: string, root: string, socket: string) => DaemonOptions,
  scratch: string,
  base: string,
  pairs: number,
): Promise<void> {
  const image = process.env.ONTOP_TEST_IMAGE!;
  // Inside CI, the run's own prefix, so its cleanup would catch anything left behind.
  const prefix = process.env.ONTOP_E2E_RUN ? `ontop-e2e-${process.env.ONTOP_E2E_RUN}-bench` : 'ontop-bench';
  const name = `${prefix}-${process.pid}-${randomBytes(3).toString('hex')}`;
  const socket = path.join(PLUGIN_DIR, `${name}.sock`);

  if (!fs.existsSync(PLUGIN_DIR)) {
    await fsp.mkdir(PLUGIN_DIR, { recursive: true, mode: 0o755 });
    cleanup.add(`rmdir ${PLUGIN_DIR}`, async () => {
      await fsp.rmdir(PLUGIN_DIR).catch(() => undefined); // only if nothing else is there
    });
  }
  const root = path.join(scratch, 'docker-root');
  const daemon = new Daemon(daemonOpts(name, root, socket));
  const stopDaemon = cleanup.add(`stop the docker-phase daemon ${name}`, async () => {
    await daemon.stop();
    await fsp.rm(socket, { force: true });
  });
  try {
    await daemon.start();
    await measure(report, cleanup, name, base, image, pairs, daemon);
  } finally {
    await stopDaemon();
  }
}

async function measure(report: Report, cleanup: Cleanup, name: string, base: string, image: string, pairs: number, daemon: Daemon): Promise<void> {
  const ontopVol = `${name}-v`;
  const localVol = `${name}-local`;
  const removeVolumes = cleanup.add(`docker volume rm ${ontopVol} ${localVol}`, async () => {
    await docker(['volume', 'rm', '-f', ontopVol, localVol], 60_000).catch(() => undefined);
  });
  try {
    await pairsOf(report, name, base, image, pairs, daemon, ontopVol, localVol);
  } finally {
    await removeVolumes();
  }
}

async function pairsOf(report: Report, name: string, base: string, image: string, pairs: number, daemon: Daemon, ontopVol: string, localVol: string): Promise<void> {
  await docker(['volume', 'create', '-d', name, '-o', `base=${base}`, ontopVol]);
  await docker(['volume', 'create', localVol]);

  const run = async (vol: string): Promise<number> => {
    const start = process.hrtime.bigint();
    await docker(['run', '--rm', '-v', `${vol}:/x`, image, 'true']);
    return msSince(start);
  };
  await run(ontopVol); // warm-up: image layers, the plugin's first use
  await run(localVol);

  const ontop = new Samples(pairs);
  const local = new Samples(pairs);
  const ratios: number[] = [];
  for (let i = 0; i < pairs; i++) {
    let o: number;
    let l: number;
    if (i % 2 === 0) {
      o = await run(ontopVol);
      l = await run(localVol);
    } else {
      l = await run(localVol);
      o = await run(ontopVol);
    }
    ontop.add(o);
    local.add(l);
    ratios.push(o / l);
  }
  const row = (id: string, label: string, s: Samples) => {
    const sum = s.summary();
    return { id, name: label, n: sum.n, p50Ms: sum.p50Ms, p99Ms: sum.p99Ms, meanMs: sum.meanMs, maxMs: sum.maxMs };
  };
  report.add(row('docker-ontop', 'docker run --rm -v (ontop volume)', ontop));
  report.add(row('docker-local', 'docker run --rm -v (local volume)', local));
  report.add({
    id: 'docker-ratio',
    name: 'docker run: ontop / local (median of pairs)',
    n: pairs,
    value: median(ratios),
    unit: '×',
    target: { text: '≤ 1.05×', metric: 'value', cmp: '<=', threshold: 1.05 },
    note: `pair ratios ${ratios.map((r) => r.toFixed(3)).join(', ')}; daemon warnings logged: ${daemon.warnings}`,
  });
}

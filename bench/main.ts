// `npm run bench`: starts the built daemon on a scratch socket and state
// root, drives it as dockerd would, prints a table of ops/s, p50 and p99 per
// phase against the targets, and writes the same figures as JSON. Whatever
// happens (error, SIGINT), it unmounts what it mounted, stops the daemons
// and removes its scratch directory.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { assertScratch, Cleanup, removeTree } from './cleanup.js';
import type { DaemonOptions } from './daemon.js';
import { dockerRun, dockerUnavailable } from './docker.js';
import { echoCeiling } from './echo.js';
import { cpuFields, CreateFloor, Floor } from './floor.js';
import { OntopBench, type Interleave } from './ontop.js';
import { loopRow, Report } from './report.js';
import { cpuCount, NoiseMeter } from './noise.js';
import { FULL, QUICK, type Sizes } from './sizes.js';
import { settle } from './settle.js';

const PHASES = ['echo', 'floor', 'rss', 'create', 'list', 'get', 'mount-seq', 'mount-distinct', 'mount-one', 'startup', 'remove', 'docker', 'remove-big'] as const;
type Phase = (typeof PHASES)[number];
const GROUPS: Record<string, Phase[]> = { mount: ['mount-seq', 'mount-distinct', 'mount-one'], all: [...PHASES] };

const USAGE = `Usage: npm run bench -- [options]

Starts dist/main.js on its own scratch socket and state root (never under
/run/docker/plugins, except for the docker phase), drives it the way dockerd
does, prints ops/s, p50 and p99 per phase with targets, and writes JSON to
bench-results/bench-<timestamp>.json and bench-results/latest.json.

Options:
  --quick               smaller counts: a smoke run in under 30 s
  --phases a,b          run only these phases (default all):
                        ${PHASES.join(', ')}
                        (mount = mount-seq,mount-distinct,mount-one)
  --json PATH           also write the JSON results to PATH
  --daemon PATH         the daemon's entry point (default dist/main.js)
  --daemon-arg=ARG      pass ARG to the daemon; node's own flags (--cpu-prof,
                        --heap-prof, --inspect, --max-old-space-size=...) go to
                        node. Repeatable. Profiles land in bench-results/profiles.
  --node-arg=ARG        pass ARG to node, before the daemon's script
  --log-level LEVEL     the daemon's log level (default warn)
  --dir DIR             parent of the scratch directory (default os.tmpdir())
  --strict              exit 1 when a target is missed
  -h, --help            this text

Use the --flag=value form for values that start with "-".
`;

/** Flags that belong to node, not to the daemon, when they come through --daemon-arg. */
const NODE_FLAG = /^--(cpu-prof|heap-prof|prof\b|prof-process|inspect|trace-|max-old-space-size|max-semi-space-size|expose-gc|stack-size|perf-|interpreted-frames-native-stack|jitless|diagnostic-dir|report-|enable-source-maps|no-opt|optimize-for-size|lite-mode|single-threaded)/;

function isNodeFlag(arg: string): boolean {
  return NODE_FLAG.test(arg) || process.allowedNodeEnvironmentFlags.has(arg.split('=')[0]!);
}

const here = path.dirname(fileURLToPath(import.meta.url));
const packageRoot = path.resolve(here, '..', '..');

interface Options {
  quick: boolean;
  phases: Set<Phase>;
  json: string[];
  script: string;
  nodeArgs: string[];
  daemonArgs: string[];
  logLevel: string;
  dir: string;
  strict: boolean;
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      quick: { type: 'boolean' },
      phases: { type: 'string' },
      json: { type: 'string', multiple: true },
      daemon: { type: 'string' },
      'daemon-arg': { type: 'string', multiple: true },
      'node-arg': { type: 'string', multiple: true },
      'log-level': { type: 'string' },
      dir: { type: 'string' },
      strict: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return undefined;
  }
  const phases = new Set<Phase>();
  for (const p of (values.phases ?? 'all').split(',').map((s) => s.trim()).filter(Boolean)) {
    const group = GROUPS[p];
    if (group) group.forEach((x) => phases.add(x));
    else if ((PHASES as readonly string[]).includes(p)) phases.add(p as Phase);
    else throw new Error(`unknown phase ${JSON.stringify(p)}; phases: ${PHASES.join(', ')}, mount, all`);
  }
  const nodeArgs = [...(values['node-arg'] ?? [])];
  const daemonArgs: string[] = [];
  for (const a of values['daemon-arg'] ?? []) (isNodeFlag(a) ? nodeArgs : daemonArgs).push(a);
  const profileDir = path.join(packageRoot, 'bench-results', 'profiles');
  if (nodeArgs.some((a) => a.startsWith('--cpu-prof')) && !nodeArgs.some((a) => a.startsWith('--cpu-prof-dir'))) nodeArgs.push(`--cpu-prof-dir=${profileDir}`);
  if (nodeArgs.some((a) => a.startsWith('--heap-prof')) && !nodeArgs.some((a) => a.startsWith('--heap-prof-dir'))) nodeArgs.push(`--heap-prof-dir=${profileDir}`);
  return {
    quick: values.quick ?? false,
    phases,
    json: values.json ?? [],
    script: path.resolve(values.daemon ?? path.join(packageRoot, 'dist', 'main.js')),
    nodeArgs,
    daemonArgs,
    logLevel: values['log-level'] ?? 'warn',
    dir: path.resolve(values.dir ?? os.tmpdir()),
    strict: values.strict ?? false,
  };
}

function say(line: string): void {
  process.stdout.write(line + '\n');
}

async function main(): Promise<number> {
  let opts: Options | undefined;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (!opts) return 0;
  if (process.getuid?.() !== 0) {
    process.stderr.write('bench: needs root (overlay mounts)\n');
    return 2;
  }
  const sizes: Sizes = opts.quick ? QUICK : FULL;
  const report = new Report(opts.quick);
  const cleanup = new Cleanup();
  const started = new Date();
  const timestamp = started.toISOString().replace(/[:.]/g, '-');
  report.info.startedAt = started.toISOString();
  // Other work on the machine skews every figure: keep the load beside them.
  report.info.loadAverageAtStart = os.loadavg();
  report.info.options = {
    phases: [...opts.phases],
    nodeArgs: opts.nodeArgs,
    daemonArgs: opts.daemonArgs,
    daemon: path.relative(packageRoot, opts.script),
  };
  report.info.sizes = { ...sizes, listCalls: Object.fromEntries(sizes.listAt.map((n) => [n, sizes.listCalls(n)])) };

  // Signals: clean up, then exit; a second signal exits at once.
  const daemonsToKill: (() => void)[] = [];
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) {
      daemonsToKill.forEach((k) => k());
      process.exit(signal === 'SIGINT' ? 130 : 143);
    }
    interrupted = true;
    process.stderr.write(`\nbench: ${signal}: cleaning up (again to exit at once)\n`);
    void cleanup.runAll().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', () => daemonsToKill.forEach((k) => k()));
  // A bug in the harness must not leave mounts and daemons behind either.
  const onCrash = (err: unknown): void => {
    process.stderr.write(`bench: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    if (interrupted) return;
    interrupted = true;
    void cleanup.runAll().finally(() => process.exit(1));
  };
  process.on('uncaughtException', onCrash);
  process.on('unhandledRejection', onCrash);

  // Inside CI, the run's own prefix, so its cleanup would catch anything left behind.
  const prefix = process.env.ONTOP_E2E_RUN ? `ontop-e2e-${process.env.ONTOP_E2E_RUN}-bench-` : 'ontop-bench-';
  const scratch = await fsp.mkdtemp(path.join(opts.dir, prefix));
  assertScratch(scratch);
  cleanup.add(`remove ${scratch}`, () => removeTree(scratch));
  const base = path.join(scratch, 'base');
  await fsp.mkdir(path.join(base, 'sub'), { recursive: true });
  for (let i = 0; i < 16; i++) await fsp.writeFile(path.join(base, i % 2 ? 'sub' : '', `file${i}.txt`), `base file ${i}\n`);

  const daemonOpts = (name: string, root: string, socket: string): DaemonOptions => ({
    script: opts.script,
    name,
    root,
    socket,
    logLevel: opts.logLevel,
    nodeArgs: opts.nodeArgs,
    daemonArgs: ['--allow-base', base, ...opts.daemonArgs],
    cwd: packageRoot,
  });

  const noise = new NoiseMeter();
  const settled = await settle(noise);
  report.info.settled = settled;
  say(
    `▶ settle: sync; ${settled.dirtyBeforeMiB.toFixed(1)} MiB dirty before, ${settled.dirtyAfterMiB.toFixed(1)} MiB after; ` +
      `other processes at ${settled.othersCpu.toFixed(2)} CPUs; waited ${settled.waitedS.toFixed(1)} s`,
  );
  const whole = noise.snapshot();
  const load = os.loadavg()[0]!;
  if (load > cpuCount() / 2) say(`warning: the machine is busy (load average ${load.toFixed(2)} on ${cpuCount()} CPUs): figures will be noisy; see the "others" column`);
  const want = (p: Phase): boolean => opts.phases.has(p);
  const run = async (id: string, fn: () => Promise<void>): Promise<boolean> => {
    if (interrupted) return false;
    const t0 = Date.now();
    say(`▶ ${id}`);
    const before = report.rows.length;
    const snap = noise.snapshot();
    try {
      await fn();
      const others = noise.othersSince(snap);
      for (const r of report.rows.slice(before)) {
        r.othersCpu ??= others;
        say(`  ${r.name}: ${r.opsPerSec !== undefined ? `${Math.round(r.opsPerSec)}/s, ` : ''}${r.p50Ms !== undefined ? `p50 ${r.p50Ms.toFixed(3)} ms, p99 ${r.p99Ms?.toFixed(3)} ms` : ''}${r.value !== undefined ? `${r.value.toFixed(3)} ${r.unit ?? ''}` : ''}${r.result ? ` [${r.result}]` : ''}`);
      }
      say(`  (${((Date.now() - t0) / 1000).toFixed(1)} s; other processes used ${others.toFixed(2)} of ${cpuCount()} CPUs)`);
      return true;
    } catch (err) {
      if (interrupted) return false;
      const daemon = ontop?.daemon;
      const output = daemon && !daemon.alive() ? `daemon ${daemon.exitInfo}:\n${daemon.output()}` : daemon?.output();
      report.fail(id, err, output);
      say(`  FAILED: ${(err as Error).message.split('\n')[0]}`);
      if (daemon && !daemon.alive()) say(`  the daemon ${daemon.exitInfo}; its last output:\n${indent(daemon.output())}`);
      return false;
    }
  };

  let ontop: OntopBench | undefined;
  try {
    if (want('echo')) {
      await run('echo', async () => {
        const { seq, conc } = await echoCeiling(path.join(scratch, 'echo.sock'), sizes.echoCalls, sizes.clients);
        report.add(loopRow('echo-seq', 'Harness ceiling: echo server (sequential)', seq.samples, seq.wallMs));
        report.add(loopRow('echo-conc', `Harness ceiling: echo server (${sizes.clients} clients)`, conc.samples, conc.wallMs));
      });
    }
    // The sequential floor runs interleaved with ontop's sequential cycle when both are
    // selected (see floorSeq), else on its own; the concurrent one runs here.
    const floorDir = path.join(scratch, 'floor');
    const floorSeq = {
      async: new Floor(base, floorDir, 'async', 1, sizes.floorCycles),
      sync: new Floor(base, floorDir, 'sync', 1, sizes.floorCycles),
    };
    const floorRows = (): void => {
      report.add(loopRow('floor-seq', 'Floor: overlay cycle, fs.promises (sequential)', floorSeq.async.samples, floorSeq.async.wallMs, cpuFields(floorSeq.async.cpuUs, floorSeq.async.samples.count)));
      report.add(loopRow('floor-seq-sync', 'Floor: overlay cycle, sync fs (sequential)', floorSeq.sync.samples, floorSeq.sync.wallMs, cpuFields(floorSeq.sync.cpuUs, floorSeq.sync.samples.count)));
      const cycle = report.find('cycle-seq');
      if (cycle?.opsPerSec) {
        const a = report.find('floor-seq')!.opsPerSec!;
        const b = report.find('floor-seq-sync')!.opsPerSec!;
        report.add({
          id: 'cycle-vs-floor',
          name: 'Mount+Unmount cycle (sequential) / floor',
          value: cycle.opsPerSec / a,
          unit: '×',
          target: { text: '≥ 0.75×', metric: 'value', cmp: '>=', threshold: 0.75 },
          note: `against the sync-fs floor: ${(cycle.opsPerSec / b).toFixed(3)}×`,
        });
      }
    };
    const floorWarmup = async (): Promise<void> => {
      await floorSeq.async.warmup(50);
      await floorSeq.sync.warmup(50);
    };
    const ROUNDS = 10;
    const floorInterleave: Interleave = {
      rounds: ROUNDS,
      between: async () => {
        const n = Math.ceil(sizes.floorCycles / ROUNDS);
        await floorSeq.async.block(n);
        await floorSeq.sync.block(n);
      },
    };
    // The concurrent floor runs just before the 8-client phase it is read against, not first: its 12,000
    // short-lived inodes would slow the Creates that follow (see README, Performance).
    const concFloor = async (): Promise<void> => {
      const conc = new Floor(base, floorDir, 'async', sizes.clients, sizes.clients * sizes.floorPerWorker);
      await conc.warmup(20);
      await conc.block(sizes.floorPerWorker);
      report.add(loopRow('floor-conc', `Floor: overlay cycle, fs.promises (${sizes.clients} loops)`, conc.samples, conc.wallMs, cpuFields(conc.cpuUs, conc.samples.count)));
    };

    const daemonPhases = PHASES.filter((p) => !['echo', 'floor', 'docker'].includes(p) && want(p));
    if (daemonPhases.length > 0) {
      if (!fs.existsSync(opts.script)) {
        for (const p of daemonPhases) report.skip(p, `${opts.script} does not exist (build with npx tsc -p .)`);
      } else {
        const bench = new OntopBench(report, sizes, base, daemonOpts('ontop-bench', path.join(scratch, 'root'), path.join(scratch, 'ontop.sock')));
        ontop = bench;
        daemonsToKill.push(() => bench.daemon.killNow());
        cleanup.add('stop the daemon', async () => {
          await bench.unmountHeld();
          await bench.stop();
        });
        const up = await run('start', async () => {
          const t = await bench.start();
          report.info.firstStart = t;
        });
        if (!up) {
          for (const p of daemonPhases) report.skip(p, 'the daemon did not start');
        } else {
          const seqFloor = want('floor') ? { warmup: floorWarmup, interleave: floorInterleave, rows: floorRows } : undefined;
          await runDaemonPhases(bench, sizes, want, run, report, scratch, seqFloor, want('floor') ? concFloor : undefined);
        }
      }
    }

    if (want('docker')) {
      const why = await dockerUnavailable();
      if (why) report.skip('docker', why);
      else await run('docker', () => dockerRun(report, cleanup, daemonOpts, scratch, base, sizes.dockerPairs));
    }
    if (want('remove-big') && ontop) {
      await run('remove-big', async () => {
        await ontop!.reviveIfDead();
        await ontop!.removeBig();
      });
    }
    if (want('floor') && !report.find('floor-seq')) {
      await run('floor-seq', async () => {
        await floorWarmup();
        await floorSeq.async.block(sizes.floorCycles);
        await floorSeq.sync.block(sizes.floorCycles);
        floorRows();
      });
    }
    if (want('floor') && !report.find('floor-conc')) await run('floor', concFloor);
    if (ontop) report.info.daemonWarnings = ontop.daemon.warnings;
  } finally {
    if (!interrupted) {
      say('▶ cleanup');
      await cleanup.runAll();
      if (cleanup.problems.length) report.info.cleanupProblems = cleanup.problems;
    }
  }
  if (interrupted) return 130;

  report.info.loadAverageAtEnd = os.loadavg();
  report.info.othersCpu = noise.othersSince(whole);
  report.info.durationS = (Date.now() - started.getTime()) / 1000;
  say('\n' + report.table());
  say(`Load average at start ${fmtLoad(report.info.loadAverageAtStart as number[])}, at end ${fmtLoad(os.loadavg())}; other processes used ${(report.info.othersCpu as number).toFixed(2)} of ${cpuCount()} CPUs on average; ${(report.info.durationS as number).toFixed(0)} s`);
  const written = report.write(path.join(packageRoot, 'bench-results'), opts.json, timestamp);
  say(`\nJSON: ${written.map((p) => path.relative(process.cwd(), p) || p).join(', ')}`);
  if (report.failures.length) {
    for (const f of report.failures) say(`\n${f.id} failed:\n${indent(f.error)}${f.daemonOutput ? `\n  daemon output:\n${indent(f.daemonOutput)}` : ''}`);
    return 1;
  }
  if (opts.strict && report.rows.some((r) => r.result === 'MISS')) return 1;
  return 0;
}

async function runDaemonPhases(
  bench: OntopBench,
  sizes: Sizes,
  want: (p: Phase) => boolean,
  run: (id: string, fn: () => Promise<void>) => Promise<boolean>,
  report: Report,
  scratchDir: string,
  seqFloor?: { warmup: () => Promise<void>; interleave: Interleave; rows: () => void },
  concFloor?: () => Promise<void>,
): Promise<void> {
  // Phases after a failure still run on a live daemon, with the volumes that exist.
  const phase = (id: Phase, fn: () => Promise<void>, label: string = id) =>
    run(label, async () => {
      if (await bench.reviveIfDead()) report.info[`revivedBefore_${id}`] = true;
      await bench.unmountHeld();
      await fn();
    });
  const full = ['create', 'list', 'rss', 'get', 'startup'].some((p) => want(p as Phase));
  if (want('rss')) await phase('rss', () => bench.rssIdle());

  if (full) {
    // Create is measured over every volume; List at each size on the way.
    await phase('create', async () => {
      // The durable-create floor runs in slices between ontop's creates, so both see the same machine.
      const floor = want('create') && want('floor') ? new CreateFloor(path.join(scratchDir, 'create-floor'), sizes.createFloor) : undefined;
      const slices = 10;
      const interleave = floor && { every: Math.max(1, Math.floor(sizes.volumes / slices)), between: () => floor.block(Math.ceil(sizes.createFloor / slices)) };
      for (const n of sizes.listAt) {
        await bench.createUpTo(n, interleave);
        if (want('list')) await bench.list();
      }
      await bench.createUpTo(sizes.volumes, interleave);
      if (want('create')) bench.createRow(floor);
      if (floor) await removeTree(path.join(scratchDir, 'create-floor'));
    });
    if (want('rss')) await phase('rss', () => bench.rssLoaded(), 'rss (loaded)');
  }
  if (want('get')) await phase('get', () => bench.get());
  if (want('mount-seq')) {
    await phase('mount-seq', async () => {
      await seqFloor?.warmup();
      await bench.mountShape('seq', seqFloor?.interleave);
      seqFloor?.rows();
    });
  }
  if (want('mount-distinct') && concFloor) await run('floor', concFloor);
  for (const shape of ['distinct', 'one'] as const) {
    if (want(`mount-${shape}`)) await phase(`mount-${shape}`, () => bench.mountShape(shape));
  }
  if (want('startup')) await phase('startup', () => bench.startup());
  if (want('remove')) {
    await phase('remove', async () => {
      await bench.createUpTo(Math.min(sizes.volumes, sizes.removes + 1));
      await bench.remove();
    });
  }
}

function fmtLoad(l: number[]): string {
  return l.map((x) => x.toFixed(2)).join(' ');
}

function indent(text: string): string {
  return text
    .trimEnd()
    .split('\n')
    .map((l) => '    ' + l)
    .join('\n');
}

// Exits explicitly: a keep-alive socket or timer left open must not keep the bench alive.
main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`bench: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);

// `npm run bench`: starts the built daemon on a scratch socket and state
// root, drives it as dockerd would, and prints a table of ops/s, p50 and p99
// per phase, each read as a ratio against a floor measured in the same run
// (../shared/bench/floor.c, or an echo server, or a bare node), with its goal
// met or missed; writes the same figures as JSON. Whatever happens (error,
// SIGINT), it unmounts what it mounted, stops the daemons and removes its
// scratch directory.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { assertScratch, Cleanup, removeTree } from './cleanup.js';
import type { DaemonOptions } from './daemon.js';
import { dockerRun, dockerUnavailable } from './docker.js';
import { EchoServer } from './echo.js';
import { buildFloor, CFloor, floorRow } from './cfloor.js';
import { NodeCeiling } from './ceiling.js';
import { OntopBench, type Interleave } from './ontop.js';
import { loopRow, Report } from './report.js';
import { cpuCount, NoiseMeter } from './noise.js';
import { FULL, QUICK, type Sizes } from './sizes.js';
import { settle } from './settle.js';

const PHASES = ['floor', 'echo', 'rss', 'create', 'list', 'get', 'mount-seq', 'mount-distinct', 'mount-one', 'startup', 'remove', 'remove-mounted', 'docker', 'remove-big'] as const;
type Phase = (typeof PHASES)[number];
const GROUPS: Record<string, Phase[]> = { mount: ['mount-seq', 'mount-distinct', 'mount-one'], all: [...PHASES] };

/** The C floor's blocks per phase: the floor runs between ontop's timed rounds, so both see the same machine. */
const ROUNDS = 10;

const USAGE = `Usage: npm run bench -- [options]

Starts dist/main.js on its own scratch socket and state root (never under
/run/docker/plugins, except for the docker phase), drives it the way dockerd
does, prints ops/s, p50 and p99 per phase, each as a ratio against a floor
measured in the same run (floor.c compiled with cc -O2, run on the state
root's filesystem; an echo server; a bare node) with its goal, and writes JSON
to bench-results/bench-<timestamp>.json and bench-results/latest.json.

Options:
  --quick               smaller counts: a smoke run in under 30 s
  --phases a,b          run only these phases (default all):
                        ${PHASES.join(', ')}
                        (mount = mount-seq,mount-distinct,mount-one;
                        floor = the C floors, run beside the phases)
  --floor-src PATH      the C floor (default ../shared/bench/floor.c); with
                        the floor runs the Node ceiling: a bare node:http
                        server making the floor's syscalls (bench/ceiling.ts)
  --json PATH           also write the JSON results to PATH
  --daemon PATH         the daemon's entry point (default dist/main.js)
  --daemon-arg=ARG      pass ARG to the daemon; node's own flags (--cpu-prof,
                        --heap-prof, --inspect, --max-old-space-size=...) go to
                        node. Repeatable. Profiles land in bench-results/profiles.
  --node-arg=ARG        pass ARG to node, before the daemon's script
  --log-level LEVEL     the daemon's log level (default warn)
  --dir DIR             parent of the scratch directory (default os.tmpdir())
  --strict              exit 1 when a goal is missed
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
  floorSrc: string;
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
      'floor-src': { type: 'string' },
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
    floorSrc: path.resolve(values['floor-src'] ?? path.join(packageRoot, '..', 'shared', 'bench', 'floor.c')),
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
        say(`  ${r.name}: ${r.opsPerSec !== undefined ? `${Math.round(r.opsPerSec)}/s, ` : ''}${r.p50Ms !== undefined ? `p50 ${r.p50Ms.toFixed(3)} ms, p99 ${r.p99Ms?.toFixed(3)} ms` : ''}${r.value !== undefined ? `${r.value.toFixed(3)} ${r.unit ?? ''}` : ''}${r.result && !(r.target?.metric === 'ratio' && r.ratio === undefined) ? ` [${r.result}]` : ' (judged against its floor at the end)'.slice(r.target ? 0 : 999)}`);
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
    let floors: Floors | undefined;
    if (want('floor')) {
      await run('floor (cc -O2)', async () => {
        const bin = await buildFloor(opts.floorSrc, path.join(scratch, 'floor-bin'));
        // Beside the state root (scratch/root): the same filesystem, which the floor's figures depend on.
        const state = path.join(scratch, 'floor-state');
        const f = {
          cycle: new CFloor(bin, 'cycle', base, state),
          cycle8: new CFloor(bin, 'cycle', base, state, sizes.clients),
          create: new CFloor(bin, 'create', base, state),
          remove: new CFloor(bin, 'remove', base, state),
        };
        await f.cycle.block(50, false);
        await f.create.block(50, false);
        if (fs.statSync(state).dev !== fs.statSync(scratch).dev) throw new Error(`${state} is not on the filesystem of ${scratch}`);
        report.info.floor = { source: opts.floorSrc, binary: bin, stateDir: state };
        // The Node ceiling beside the floor, on the same filesystem, with the addon the daemon uses.
        const addon = path.join(path.dirname(opts.script), '..', 'build', 'Release', 'ontop_native.node');
        const ceiling = new NodeCeiling(path.join(scratch, 'ceiling.sock'), path.join(scratch, 'ceiling-state'), base, addon);
        cleanup.add('stop the Node ceiling server', () => ceiling.stop());
        await ceiling.start();
        floors = { ...f, ceiling };
      });
    }
    let echo: EchoServer | undefined;
    if (want('echo')) {
      await run('echo (start)', async () => {
        const e = new EchoServer(path.join(scratch, 'echo.sock'));
        cleanup.add('stop the echo server', () => e.stop());
        await e.start();
        echo = e;
      });
    }

    const daemonPhases = PHASES.filter((p) => !['echo', 'floor', 'docker'].includes(p) && want(p));
    if (echo && (daemonPhases.length === 0 || !fs.existsSync(opts.script))) {
      await run('echo', async () => {
        await echo!.block(1, sizes.echoCalls);
        await echo!.block(sizes.clients, Math.ceil(sizes.echoCalls / sizes.clients));
      });
    }
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
          await runDaemonPhases(bench, sizes, want, run, report, floors, echo);
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
    if (echo) {
      // Measured in blocks beside Get and the one-volume phase: reported once, over all blocks.
      if (echo.seq.samples.count) report.addBefore('get-seq', loopRow('echo-seq', 'Echo ceiling: node:http that only answers (sequential)', echo.seq.samples, echo.seq.wallMs, { note: 'in blocks between the rounds of Get' }));
      if (echo.conc.samples.count) report.addBefore('get-seq', loopRow('echo-conc', `Echo ceiling: node:http that only answers (${sizes.clients} clients)`, echo.conc.samples, echo.conc.wallMs, { note: 'in blocks between the rounds of Get and of the one-volume cycle' }));
    }
    relateAll(report);
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
  if (opts.strict && report.rows.some((r) => r.result === 'missed')) return 1;
  return 0;
}

interface Floors {
  cycle: CFloor;
  cycle8: CFloor;
  create: CFloor;
  remove: CFloor;
  /** The same syscalls behind a bare node:http server, run right after each floor block of its mode. */
  ceiling: NodeCeiling;
}

/** The ceiling's rows: its rate and its ratio to the C floor of the same syscalls. */
function ceilingRow(report: Report, floors: Floors, mode: 'create' | 'remove' | 'cycle', name: string): void {
  const t = floors.ceiling.tally[mode];
  if (t.samples.count === 0) return;
  report.add(loopRow(`ceiling-${mode}`, name, t.samples, t.wallMs, { note: 'a bare node:http server making only the C floor\'s syscalls (bench/ceiling.ts), in blocks beside the floor\'s' }));
}

async function runDaemonPhases(
  bench: OntopBench,
  sizes: Sizes,
  want: (p: Phase) => boolean,
  run: (id: string, fn: () => Promise<void>) => Promise<boolean>,
  report: Report,
  floors: Floors | undefined,
  echo: EchoServer | undefined,
): Promise<void> {
  // Phases after a failure still run on a live daemon, with the volumes that exist.
  const phase = (id: Phase, fn: () => Promise<void>, label: string = id) =>
    run(label, async () => {
      if (await bench.reviveIfDead()) report.info[`revivedBefore_${id}`] = true;
      await bench.unmountHeld();
      await fn();
    });
  // Between rounds: a block of the C floor, then (sequential modes) one of the Node ceiling, of the same size.
  const interleave = (floor: CFloor | undefined, total: number): Interleave | undefined =>
    floor && {
      rounds: ROUNDS,
      between: async () => {
        const n = Math.ceil(total / ROUNDS / floor.procs);
        await floor.block(n);
        if (floor.procs === 1) await floors?.ceiling.block(floor.mode, n);
      },
    };
  const full = ['create', 'list', 'rss', 'get', 'startup'].some((p) => want(p as Phase));
  if (want('rss')) await phase('rss', () => bench.rssIdle());

  if (full) {
    // Create is measured over every volume; List at each size on the way.
    await phase('create', async () => {
      const f = want('create') ? floors?.create : undefined;
      const between = f && {
        every: Math.max(1, Math.floor(sizes.volumes / ROUNDS)),
        between: async () => {
          await f.block(Math.ceil(sizes.createFloor / ROUNDS));
          await floors?.ceiling.block('create', Math.ceil(sizes.createFloor / ROUNDS));
        },
      };
      for (const n of sizes.listAt) {
        await bench.createUpTo(n, between);
        if (want('list')) await bench.list();
      }
      await bench.createUpTo(sizes.volumes, between);
      if (want('create')) bench.createRow();
      if (f) report.add(floorRow('floor-create', 'C floor: create (mkdir ×2, write + fdatasync, fsync dir)', f));
      if (f && floors) ceilingRow(report, floors, 'create', 'Node ceiling: create (the same syscalls behind node:http)');
    });
    if (want('rss')) await phase('rss', () => bench.rssLoaded(), 'rss (loaded)');
  }
  if (want('get')) await phase('get', () => bench.get(echo && ((clients, calls) => echo.block(clients, Math.ceil(calls / clients)))));
  if (want('mount-seq')) {
    await phase('mount-seq', async () => {
      await bench.mountShape('seq', interleave(floors?.cycle, sizes.floorCycles));
      if (floors) report.add(floorRow('floor-cycle', 'C floor: cycle (mkdir ×2, mount, umount2, rmdir ×3)', floors.cycle));
      if (floors) ceilingRow(report, floors, 'cycle', 'Node ceiling: cycle (the same syscalls behind node:http)');
    });
  }
  if (want('mount-distinct')) {
    await phase('mount-distinct', async () => {
      await bench.mountShape('distinct', interleave(floors?.cycle8, sizes.clients * sizes.floorPerWorker));
      if (floors) report.add(floorRow('floor-cycle-8', `C floor: cycle, ${sizes.clients} processes at once`, floors.cycle8));
    });
  }
  const echoBeside = echo && { rounds: ROUNDS, between: () => echo.block(sizes.clients, Math.ceil((2 * sizes.cyclesPerClient) / ROUNDS)) };
  if (want('mount-one')) await phase('mount-one', () => bench.mountShape('one', echoBeside));
  if (want('startup')) await phase('startup', () => bench.startup());
  if (want('remove')) {
    await phase('remove', async () => {
      await bench.createUpTo(Math.min(sizes.volumes, sizes.removes + 1));
      await bench.remove('remove', 'Remove (idle volume, 0 mounted)', sizes.removes, 0, interleave(floors?.remove, sizes.removeFloor), {
        target: { text: '≥ 0.7×', metric: 'ratio', cmp: '>=', threshold: 0.7 },
      });
      if (floors) report.add(floorRow('floor-remove', 'C floor: remove (rename to trash/, fsync dir)', floors.remove));
      if (floors) ceilingRow(report, floors, 'remove', 'Node ceiling: remove (the same syscalls behind node:http)');
    });
  }
  if (want('remove-mounted')) {
    await phase('remove-mounted', async () => {
      const m = sizes.mountedForRemove;
      await bench.createUpTo(m + sizes.removesMounted + 1);
      const unmountAll = await bench.mountMany(m, sizes.clients);
      try {
        await bench.remove('remove-mounted', `Remove (idle volume, ${m.toLocaleString('en-US')} others mounted)`, sizes.removesMounted, m, undefined, {
          target: { text: '≥ 0.8×', metric: 'ratio', cmp: '>=', threshold: 0.8 },
        });
      } finally {
        await unmountAll();
      }
    });
  }
}

/** Every speed row against what it is read by: the C floor of its syscalls, or the echo ceiling for HTTP-bound verbs. */
function relateAll(report: Report): void {
  const r = (id: string, ref: string, label: string, perOp = 1): void => report.relate(report.find(id), ref, label, perOp);
  for (const verb of ['mount', 'unmount', 'cycle']) {
    r(`${verb}-seq`, 'floor-cycle', 'C cycle');
    r(`${verb}-distinct`, 'floor-cycle-8', 'C cycle ×8');
    // A cycle is two calls: read in calls per second against the echo server's.
    r(`${verb}-one`, 'echo-conc', 'echo ×8', verb === 'cycle' ? 2 : 1);
  }
  r('get-seq', 'echo-seq', 'echo');
  r('get-conc', 'echo-conc', 'echo ×8');
  for (const row of report.rows.filter((x) => x.id.startsWith('list-'))) report.relate(row, 'echo-seq', 'echo');
  r('create', 'floor-create', 'C create');
  r('remove', 'floor-remove', 'C remove');
  const loaded = report.find('remove-mounted');
  const floor = report.find('floor-remove');
  if (loaded?.opsPerSec && floor?.opsPerSec) loaded.note = `${(loaded.opsPerSec / floor.opsPerSec).toFixed(2)}× the C remove floor${loaded.note ? '; ' + loaded.note : ''}`;
  r('remove-mounted', 'remove', 'Remove, 0 mounted');
  // The Node ceiling against the C floor it repeats; each ontop row it bounds says how close it came.
  for (const [mode, floor, rows] of [
    ['create', 'floor-create', ['create']],
    ['remove', 'floor-remove', ['remove']],
    ['cycle', 'floor-cycle', ['cycle-seq']],
  ] as const) {
    r(`ceiling-${mode}`, floor, floor === 'floor-cycle' ? 'C cycle' : `C ${mode}`);
    const ceiling = report.find(`ceiling-${mode}`);
    for (const id of rows) {
      const row = report.find(id);
      if (!row?.opsPerSec || !ceiling?.opsPerSec) continue;
      row.ceilingRatio = row.opsPerSec / ceiling.opsPerSec;
      row.note = `${row.ceilingRatio.toFixed(2)}× the Node ceiling${row.note ? '; ' + row.note : ''}`;
    }
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

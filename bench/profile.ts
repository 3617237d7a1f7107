// Summarises a V8 .cpuprofile (from `npm run bench -- --daemon-arg=--cpu-prof`):
// where the daemon's time went, by self time and by inclusive time per
// function. Usage: node dist-bench/bench/profile.js FILE.cpuprofile [--top N]
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

export interface Entry {
  fn: string;
  selfMs: number;
  totalMs: number;
}

export interface Summary {
  wallMs: number;
  /** Sampled time outside (idle): the daemon was busy this long. */
  busyMs: number;
  idleMs: number;
  gcMs: number;
  entries: Entry[];
}

const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

function label(f: CallFrame): string {
  const name = f.functionName || '(anonymous)';
  if (!f.url) return name;
  let where = f.url.replace(/^file:\/\//, '');
  if (where.startsWith(packageRoot + '/')) where = where.slice(packageRoot.length + 1);
  return `${name} ${where}:${f.lineNumber + 1}`;
}

export function summarise(profile: CpuProfile): Summary {
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of profile.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  const self = new Map<string, number>();
  const total = new Map<string, number>();
  let idle = 0;
  let gc = 0;
  let all = 0;
  const { samples, timeDeltas } = profile;
  for (let i = 0; i < samples.length; i++) {
    // A sample's weight is the time until the next one.
    const us = timeDeltas[i + 1] ?? 0;
    all += us;
    const node = byId.get(samples[i]!)!;
    const key = label(node.callFrame);
    if (node.callFrame.functionName === '(idle)') {
      idle += us;
      continue;
    }
    if (node.callFrame.functionName === '(garbage collector)') gc += us;
    self.set(key, (self.get(key) ?? 0) + us);
    const seen = new Set<string>();
    for (let id: number | undefined = node.id; id !== undefined; id = parent.get(id)) {
      const k = label(byId.get(id)!.callFrame);
      if (k === '(root)' || seen.has(k)) continue;
      seen.add(k);
      total.set(k, (total.get(k) ?? 0) + us);
    }
  }
  const entries = [...total].map(([fn, t]) => ({ fn, selfMs: (self.get(fn) ?? 0) / 1000, totalMs: t / 1000 }));
  return { wallMs: (profile.endTime - profile.startTime) / 1000, busyMs: (all - idle) / 1000, idleMs: idle / 1000, gcMs: gc / 1000, entries };
}

function main(argv: string[]): number {
  const files = argv.filter((a) => !a.startsWith('--'));
  const topFlag = argv.indexOf('--top');
  const top = topFlag >= 0 ? Number(argv[topFlag + 1]) : 25;
  if (files.length === 0) {
    process.stderr.write('usage: node dist-bench/bench/profile.js FILE.cpuprofile [--top N]\n');
    return 2;
  }
  for (const file of files) {
    if (topFlag >= 0 && file === argv[topFlag + 1]) continue;
    const s = summarise(JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile);
    const pct = (ms: number): string => `${((100 * ms) / s.busyMs).toFixed(1).padStart(5)}%`;
    const out = [
      `${file}`,
      `wall ${s.wallMs.toFixed(0)} ms, busy ${s.busyMs.toFixed(0)} ms, idle ${s.idleMs.toFixed(0)} ms, GC ${s.gcMs.toFixed(0)} ms`,
      '',
      `By self time (% of busy):`,
      ...[...s.entries].sort((a, b) => b.selfMs - a.selfMs).slice(0, top).map((e) => `  ${e.selfMs.toFixed(0).padStart(7)} ms ${pct(e.selfMs)}  ${e.fn}`),
      '',
      `By inclusive time (% of busy):`,
      ...[...s.entries].sort((a, b) => b.totalMs - a.totalMs).slice(0, top).map((e) => `  ${e.totalMs.toFixed(0).padStart(7)} ms ${pct(e.totalMs)}  ${e.fn}`),
      '',
    ];
    process.stdout.write(out.join('\n') + '\n');
  }
  return 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) process.exitCode = main(process.argv.slice(2));

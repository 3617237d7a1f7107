// Results: one row per measured phase, its target and verdict, printed as a
// table and written as JSON with the same figures.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { LatencySummary, Samples } from './stats.js';

export interface Target {
  /** As printed: "≥ 0.8× echo", "≤ 20 ms p50". */
  text: string;
  metric: 'opsPerSec' | 'p50Ms' | 'value' | 'ratio' | 'overMiB';
  cmp: '>=' | '<=';
  threshold: number;
}

export type Verdict = 'met' | 'missed' | 'n/a';

export interface Row {
  id: string;
  name: string;
  n?: number;
  opsPerSec?: number;
  p50Ms?: number;
  p99Ms?: number;
  meanMs?: number;
  maxMs?: number;
  /** A figure that is not a rate or latency: a ratio, MiB, ms of one event. */
  value?: number;
  unit?: string;
  /** What the row is read against: a floor or ceiling row measured in the same run ("C cycle", "echo ×8"). */
  ref?: string;
  /** opsPerSec over the reference row's opsPerSec. */
  ratio?: number;
  /** opsPerSec over the Node ceiling's (bench/ceiling.ts) for the same syscalls, where there is one. */
  ceilingRatio?: number;
  /** For memory rows: MiB above the reference (a bare node process). */
  overMiB?: number;
  target?: Target;
  result?: Verdict;
  note?: string;
  /** The daemon's CPU time (all threads, user + system) per operation, µs; for floor rows, the bench's own. */
  daemonCpuUsPerOp?: number;
  /** The part of daemonCpuUsPerOp spent in the kernel. */
  daemonSysUsPerOp?: number;
  /** CPUs' worth of time other processes on the machine used while the phase ran. */
  othersCpu?: number;
}

export interface Skip {
  id: string;
  reason: string;
}

export interface Failure {
  id: string;
  error: string;
  daemonOutput?: string;
}

export class Report {
  readonly rows: Row[] = [];
  readonly skipped: Skip[] = [];
  readonly failures: Failure[] = [];
  readonly info: Record<string, unknown> = {};
  private readonly notApplying = new Set<Row>();

  constructor(readonly quick: boolean) {}

  /**
   * Adds a row; with a target, a verdict. `applies` false (a quick run's
   * smaller counts) keeps the target on show but gives "n/a".
   */
  add(row: Row, applies = true): Row {
    if (!applies) this.notApplying.add(row);
    if (row.target) row.result = applies ? judge(row, row.target) : 'n/a';
    this.rows.push(row);
    return row;
  }

  /** Adds a row just before the row `id` (at the end if there is none), so a reference sits beside its phase. */
  addBefore(id: string, row: Row): Row {
    const i = this.rows.findIndex((r) => r.id === id);
    this.add(row);
    if (i >= 0) this.rows.splice(i, 0, this.rows.pop()!);
    return row;
  }

  find(id: string): Row | undefined {
    return this.rows.find((r) => r.id === id);
  }

  /**
   * Sets `row`'s ratio against the row `refId` (ops/s over ops/s, scaled by
   * `perOp` when one of the row's operations is that many of the reference's)
   * and judges its target again.
   */
  relate(row: Row | undefined, refId: string, label: string, perOp = 1): void {
    const ref = this.find(refId);
    if (!row || row.opsPerSec === undefined) return;
    row.ref = label;
    if (ref?.opsPerSec) row.ratio = (row.opsPerSec * perOp) / ref.opsPerSec;
    if (row.target && !this.notApplying.has(row)) row.result = judge(row, row.target);
  }

  skip(id: string, reason: string): void {
    this.skipped.push({ id, reason });
    process.stdout.write(`  skipped ${id}: ${reason}\n`);
  }

  fail(id: string, err: unknown, daemonOutput?: string): void {
    const error = err instanceof Error ? (err.stack ?? err.message) : String(err);
    this.failures.push({ id, error, ...(daemonOutput ? { daemonOutput } : {}) });
  }

  table(): string {
    const head = ['Phase', 'N', 'ops/s', 'p50 ms', 'p99 ms', 'value', 'against', 'ratio', 'goal', 'met?', 'cpu µs/op', 'sys', 'others'];
    const body = this.rows.map((r) => [
      r.name,
      r.n === undefined ? '' : fmtInt(r.n),
      r.opsPerSec === undefined ? '' : fmtInt(r.opsPerSec),
      fmtMs(r.p50Ms),
      fmtMs(r.p99Ms),
      r.value === undefined ? '' : `${fmtNum(r.value)}${r.unit ? ' ' + r.unit : ''}`,
      r.ref ?? '',
      r.ratio !== undefined ? `${r.ratio.toFixed(2)}×` : r.overMiB !== undefined ? `${r.overMiB >= 0 ? '+' : ''}${r.overMiB.toFixed(1)} MiB` : '',
      r.target?.text ?? '',
      r.result ?? '',
      r.daemonCpuUsPerOp === undefined ? '' : fmtInt(r.daemonCpuUsPerOp),
      r.daemonSysUsPerOp === undefined || !r.daemonCpuUsPerOp ? '' : `${Math.round((100 * r.daemonSysUsPerOp) / r.daemonCpuUsPerOp)}%`,
      r.othersCpu === undefined ? '' : r.othersCpu.toFixed(2),
    ]);
    const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i]!.length)));
    const line = (cells: string[]): string =>
      cells.map((c, i) => (i === 0 || i === 6 || i === 8 || i === 9 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
    const out = [line(head), widths.map((w) => '-'.repeat(w)).join('  ')];
    for (const row of body) out.push(line(row));
    const notes = this.rows.filter((r) => r.note).map((r) => `  ${r.name}: ${r.note}`);
    if (notes.length) out.push('', 'Notes:', ...notes);
    if (this.skipped.length) out.push('', 'Skipped:', ...this.skipped.map((s) => `  ${s.id}: ${s.reason}`));
    if (this.failures.length) out.push('', 'Failed:', ...this.failures.map((f) => `  ${f.id}: ${f.error.split('\n')[0]}`));
    const verdicts = this.rows.filter((r) => r.result === 'met' || r.result === 'missed');
    const misses = verdicts.filter((r) => r.result === 'missed');
    out.push('', 'against/ratio: ops/s over the ops/s of a row measured in the same run: "C …" is ../shared/bench/floor.c (the raw syscalls, no HTTP),');
    out.push('  "echo" a node:http server that only answers; memory rows show MiB above a bare `node -e` (RssAnon + RssFile).');
    out.push("cpu µs/op: CPU time (all threads, user + system) per operation, of the daemon; sys: the kernel's share.");
    out.push("others: CPUs' worth of time used by other processes on the machine during the phase (noise).");
    out.push('', `Goals: ${verdicts.length - misses.length}/${verdicts.length} met${misses.length ? ` (missed: ${misses.map((r) => r.name).join('; ')})` : ''}`);
    return out.join('\n');
  }

  toJSON(): Record<string, unknown> {
    return {
      tool: 'ontop-bench',
      quick: this.quick,
      host: { cpus: os.cpus().length, kernel: os.release(), node: process.version, arch: process.arch },
      ...this.info,
      phases: this.rows,
      skipped: this.skipped,
      failures: this.failures,
    };
  }

  /** Writes bench-results/bench-<timestamp>.json, bench-results/latest.json and any extra paths; returns them. */
  write(resultsDir: string, extra: string[], timestamp: string): string[] {
    const text = JSON.stringify(this.toJSON(), null, 2) + '\n';
    fs.mkdirSync(resultsDir, { recursive: true });
    const paths = [path.join(resultsDir, `bench-${timestamp}.json`), path.join(resultsDir, 'latest.json'), ...extra];
    for (const p of paths) {
      fs.mkdirSync(path.dirname(path.resolve(p)), { recursive: true });
      fs.writeFileSync(p, text);
    }
    return paths;
  }
}

function judge(row: Row, target: Target): Verdict {
  const v = row[target.metric] as number | undefined;
  if (v === undefined || Number.isNaN(v)) return 'n/a';
  return (target.cmp === '>=' ? v >= target.threshold : v <= target.threshold) ? 'met' : 'missed';
}

/** A row from a timed loop: ops/s over the wall time, latencies from the samples. */
export function loopRow(id: string, name: string, samples: Samples, wallMs: number, extra: Partial<Row> = {}): Row {
  const s: LatencySummary = samples.summary();
  return {
    id,
    name,
    n: s.n,
    opsPerSec: s.n / (wallMs / 1000),
    p50Ms: s.p50Ms,
    p99Ms: s.p99Ms,
    meanMs: s.meanMs,
    maxMs: s.maxMs,
    ...extra,
  };
}

function fmtInt(v: number): string {
  return Number.isFinite(v) ? Math.round(v).toLocaleString('en-US') : String(v);
}

function fmtNum(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  if (Math.abs(v) >= 100) return fmtInt(v);
  return v.toPrecision(3);
}

function fmtMs(v: number | undefined): string {
  if (v === undefined) return '';
  if (!Number.isFinite(v)) return String(v);
  if (v >= 100) return fmtInt(v);
  if (v >= 10) return v.toFixed(1);
  if (v >= 1) return v.toFixed(2);
  return v.toFixed(3);
}

export const fmt = { int: fmtInt, num: fmtNum, ms: fmtMs };

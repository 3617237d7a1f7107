// The physical floor every speed figure is read against: ../shared/bench/floor.c
// (the raw syscalls of a verb, in C), compiled with cc -O2 into the scratch
// directory and run as child processes in blocks beside the phase it judges,
// in a state directory on the same filesystem as the state root under test.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Row } from './report.js';

export type FloorMode = 'cycle' | 'create' | 'remove';

interface FloorLine {
  floor: string;
  n: number;
  ops_s: number;
  mean_ms: number;
}

function run(file: string, args: string[], timeoutMs = 300_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${path.basename(file)} ${args.join(' ')}: ${stderr.trim() || err.message}`));
      else resolve(stdout);
    });
  });
}

/** Compiles floor.c into `dir`; returns the binary's path. */
export async function buildFloor(source: string, dir: string): Promise<string> {
  if (!fs.existsSync(source)) throw new Error(`the C floor ${source} does not exist (--floor-src)`);
  fs.mkdirSync(dir, { recursive: true });
  const bin = path.join(dir, 'floor');
  await run('cc', ['-O2', '-Wall', '-o', bin, source], 120_000);
  return bin;
}

/**
 * One floor mode, measured in blocks: each block runs `procs` floor processes
 * at once, each doing `n` operations. The rate is the operations of all
 * blocks over their timed spans, a parallel block's span being its slowest
 * process's own timed loop (process start and exit are not counted).
 */
export class CFloor {
  ops = 0;
  seconds = 0;
  blocks = 0;

  constructor(
    private readonly bin: string,
    readonly mode: FloorMode,
    private readonly base: string,
    private readonly stateDir: string,
    readonly procs = 1,
  ) {
    fs.mkdirSync(stateDir, { recursive: true });
  }

  /** `n` operations by each of the processes at once; `counted` false for a warm-up. */
  async block(n: number, counted = true): Promise<void> {
    if (n <= 0) return;
    const lines = await Promise.all(
      Array.from({ length: this.procs }, () => run(this.bin, [this.mode, this.base, this.stateDir, String(n)]).then((out) => JSON.parse(out.trim()) as FloorLine)),
    );
    if (!counted) return;
    this.ops += lines.reduce((s, l) => s + l.n, 0);
    this.seconds += Math.max(...lines.map((l) => l.n / l.ops_s));
    this.blocks++;
  }

  get opsPerSec(): number {
    return this.seconds > 0 ? this.ops / this.seconds : NaN;
  }

  get meanMs(): number {
    return this.ops > 0 ? (this.seconds * 1000 * this.procs) / this.ops : NaN;
  }
}

/** The report row of a floor: its rate and mean time per operation, nothing to judge. */
export function floorRow(id: string, name: string, f: CFloor): Row {
  return { id, name, n: f.ops, opsPerSec: f.opsPerSec, meanMs: f.meanMs, note: `${f.blocks} blocks of ${f.procs} process${f.procs > 1 ? 'es' : ''}, interleaved with the phase it is read against` };
}

// The floor: the overlay cycle a first Mount and last Unmount must do at the
// least (make a fresh workdir and the mountpoint, mount overlay, umount2,
// remove both), done straight through the addon in a tight loop. Two
// flavours: with fs.promises (the same async primitives a Node daemon
// uses: the one ontop is judged against) and with the sync fs calls (what
// is left when no libuv pool hop is paid for mkdir/rmdir).
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { mount, umount2 } from './native.js';
import { Samples } from './stats.js';

export interface LoopResult {
  samples: Samples;
  wallMs: number;
}

export type Flavour = 'async' | 'sync';

/** Escapes a path for the classic overlay option string (`,` `:` and `\`). */
function escapeOption(p: string): string {
  return p.replace(/[\\,:]/g, (c) => '\\' + c);
}

function overlayData(base: string, dir: string): string {
  return `lowerdir=${escapeOption(base)},upperdir=${escapeOption(path.join(dir, 'upper'))},workdir=${escapeOption(path.join(dir, 'work'))}`;
}

async function asyncCycle(base: string, dir: string): Promise<void> {
  const work = path.join(dir, 'work');
  const merged = path.join(dir, 'merged');
  await fsp.mkdir(work);
  await fsp.mkdir(merged);
  await mount('overlay', merged, 'overlay', 0, overlayData(base, dir));
  await umount2(merged, 0);
  try {
    await fsp.rmdir(path.join(work, 'work')); // the kernel's own subdirectory
    await fsp.rmdir(work);
  } catch {
    await fsp.rm(work, { recursive: true, force: true });
  }
  await fsp.rmdir(merged);
}

async function syncCycle(base: string, dir: string): Promise<void> {
  const work = path.join(dir, 'work');
  const merged = path.join(dir, 'merged');
  fs.mkdirSync(work);
  fs.mkdirSync(merged);
  await mount('overlay', merged, 'overlay', 0, overlayData(base, dir));
  await umount2(merged, 0);
  try {
    fs.rmdirSync(path.join(work, 'work'));
    fs.rmdirSync(work);
  } catch {
    fs.rmSync(work, { recursive: true, force: true });
  }
  fs.rmdirSync(merged);
}

/** Floor cycles run in blocks (so they can be interleaved with ontop's), accumulating samples and wall time. */
export class Floor {
  readonly samples: Samples;
  wallMs = 0;
  /** This process's CPU time (all threads) during the timed blocks, µs: user and system. */
  readonly cpuUs = { user: 0, system: 0 };
  private readonly dirs: string[] = [];

  constructor(
    private readonly base: string,
    private readonly dir: string,
    private readonly flavour: Flavour,
    private readonly workers: number,
    expected: number,
  ) {
    this.samples = new Samples(expected);
  }

  private async prepare(): Promise<void> {
    if (this.dirs.length) return;
    for (let w = 0; w < this.workers; w++) {
      const d = path.join(this.dir, `${this.flavour}-${w}`);
      await fsp.mkdir(path.join(d, 'upper'), { recursive: true });
      this.dirs.push(d);
    }
  }

  async warmup(cycles: number): Promise<void> {
    await this.prepare();
    const cycle = this.flavour === 'async' ? asyncCycle : syncCycle;
    for (let i = 0; i < cycles; i++) await cycle(this.base, this.dirs[0]!);
  }

  /** `perWorker` timed cycles by each worker at once. */
  async block(perWorker: number): Promise<void> {
    await this.prepare();
    const cycle = this.flavour === 'async' ? asyncCycle : syncCycle;
    const cpu = process.cpuUsage();
    const start = process.hrtime.bigint();
    await Promise.all(
      this.dirs.map(async (d) => {
        for (let i = 0; i < perWorker; i++) {
          const t0 = process.hrtime.bigint();
          await cycle(this.base, d);
          this.samples.addSpan(t0, process.hrtime.bigint());
        }
      }),
    );
    this.wallMs += Number(process.hrtime.bigint() - start) / 1e6;
    addCpu(this.cpuUs, process.cpuUsage(cpu));
  }
}

function addCpu(into: { user: number; system: number }, d: NodeJS.CpuUsage): void {
  into.user += d.user;
  into.system += d.system;
}

/** The row fields for CPU per operation, as the daemon's rows have them. */
export function cpuFields(cpu: { user: number; system: number }, n: number): { daemonCpuUsPerOp?: number; daemonSysUsPerOp?: number } {
  return n > 0 ? { daemonCpuUsPerOp: (cpu.user + cpu.system) / n, daemonSysUsPerOp: cpu.system / n } : {};
}

/**
 * The floor for a durable Create: build the volume's tree under a temporary
 * name (directory, upper, work, merged, users), write volume.json and
 * fdatasync it, rename the tree into place and fsync the parent, with
 * fs.promises. Nothing less keeps a crash from leaving half a volume or
 * losing an acknowledged one.
 */
export class CreateFloor {
  readonly samples: Samples;
  wallMs = 0;
  readonly cpuUs = { user: 0, system: 0 };
  private made = 0;

  constructor(
    private readonly dir: string,
    expected: number,
  ) {
    this.samples = new Samples(expected);
  }

  async block(count: number): Promise<void> {
    const tmp = path.join(this.dir, 'tmp');
    const volumes = path.join(this.dir, 'volumes');
    await fsp.mkdir(tmp, { recursive: true });
    await fsp.mkdir(volumes, { recursive: true });
    const cpu = process.cpuUsage();
    const start = process.hrtime.bigint();
    for (let i = 0; i < count; i++) {
      const t0 = process.hrtime.bigint();
      const name = `v${this.made++}`;
      const t = path.join(tmp, name);
      await fsp.mkdir(t, { mode: 0o700 });
      await Promise.all(['upper', 'work', 'merged', 'users'].map((d) => fsp.mkdir(path.join(t, d), { mode: 0o700 })));
      const fh = await fsp.open(path.join(t, 'volume.json'), 'wx', 0o600);
      try {
        await fh.writeFile(`{"version":1,"base":"/srv/x","volatile":false,"createdAt":"${new Date().toISOString()}","options":{}}\n`);
        await fh.datasync();
      } finally {
        await fh.close();
      }
      await fsp.rename(t, path.join(volumes, name));
      const dh = await fsp.open(volumes, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
      try {
        await dh.sync();
      } finally {
        await dh.close();
      }
      this.samples.addSpan(t0, process.hrtime.bigint());
    }
    this.wallMs += Number(process.hrtime.bigint() - start) / 1e6;
    addCpu(this.cpuUs, process.cpuUsage(cpu));
  }
}

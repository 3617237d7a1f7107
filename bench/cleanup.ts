// Everything the bench makes is undone here, on success, error or signal:
// undo steps run last-in first-out, exactly once. Directories are removed
// only after every mount under them is detached, so removing a state root
// can never reach through a still-mounted overlay into a base.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { constants, umount2 } from './native.js';

type Step = { what: string; run: () => Promise<void> | void };

export class Cleanup {
  private steps: Step[] = [];
  private running: Promise<void> | undefined;
  readonly problems: string[] = [];

  /** Registers an undo step; returns a function that runs it now (and unregisters it). */
  add(what: string, run: () => Promise<void> | void): () => Promise<void> {
    const step: Step = { what, run };
    this.steps.push(step);
    return async () => {
      const i = this.steps.indexOf(step);
      if (i === -1) return;
      this.steps.splice(i, 1);
      await this.runStep(step);
    };
  }

  /** Runs every remaining step, newest first. Safe to call more than once (later calls wait for the first). */
  runAll(): Promise<void> {
    this.running ??= (async () => {
      while (this.steps.length > 0) await this.runStep(this.steps.pop()!);
    })();
    return this.running;
  }

  private async runStep(step: Step): Promise<void> {
    try {
      await step.run();
    } catch (err) {
      const msg = `cleanup: ${step.what}: ${(err as Error).message}`;
      this.problems.push(msg);
      process.stderr.write(msg + '\n');
    }
  }
}

/** Decodes mountinfo's octal escapes (\040 for a space and so on). */
function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Mount points at or under `dir`, deepest first (so stacked and nested mounts come off in order). */
export function mountsUnder(dir: string): string[] {
  const prefix = dir.endsWith('/') ? dir : dir + '/';
  const found: string[] = [];
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const field = line.split(' ')[4];
    if (field === undefined) continue;
    const mp = unescapeMountinfo(field);
    if (mp === dir || mp.startsWith(prefix)) found.push(mp);
  }
  return found.sort((a, b) => b.length - a.length);
}

export function isMounted(target: string): boolean {
  return mountsUnder(target).includes(target);
}

/** Detaches every mount under `dir` (lazily: never EBUSY); returns how many it took off. */
export async function unmountAllUnder(dir: string): Promise<number> {
  let count = 0;
  for (let round = 0; round < 10; round++) {
    const mounts = mountsUnder(dir);
    if (mounts.length === 0) return count;
    for (const mp of mounts) {
      try {
        await umount2(mp, constants.MNT_DETACH);
        count++;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err; // EINVAL: already gone
      }
    }
  }
  const left = mountsUnder(dir);
  if (left.length > 0) throw new Error(`still mounted after 10 rounds: ${left.join(', ')}`);
  return count;
}

/** Unmounts everything under `dir`, then removes it; refuses to remove while anything is still mounted. */
export async function removeTree(dir: string): Promise<void> {
  if (!fs.existsSync(dir)) return;
  await unmountAllUnder(dir);
  const left = mountsUnder(dir);
  if (left.length > 0) throw new Error(`not removing ${dir}: still mounted: ${left.join(', ')}`);
  await fsp.rm(dir, { recursive: true, force: true, maxRetries: 3 });
}

/** A directory name that is safe to `rm -rf` (absolute, not a system directory). */
export function assertScratch(dir: string): void {
  const resolved = path.resolve(dir);
  if (resolved.split('/').filter(Boolean).length < 2) throw new Error(`refusing to use ${dir} as a scratch directory`);
}

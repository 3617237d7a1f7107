// Seeded randomness for randomized tests: every run prints its seed, and
// ONTOP_SEED=<n> replays it. Math.random cannot be seeded, so tests use this.
import type { Test } from 'tap';
import crypto from 'node:crypto';

export type Rand = () => number;

/** mulberry32: small, fast, seedable; uniform in [0, 1). */
export function mulberry32(seed: number): Rand {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
  };
}

/**
 * The seed of this run: ONTOP_SEED (or the older name given, e.g. FUZZ_SEED)
 * when set, else a fresh random one. Refuses a value that is not an integer
 * rather than silently running another seed.
 */
export function chooseSeed(env: NodeJS.ProcessEnv = process.env, legacy?: string): number {
  const given = env.ONTOP_SEED ?? (legacy === undefined ? undefined : env[legacy]);
  if (given === undefined || given === '') return crypto.randomInt(2 ** 31);
  const n = Number(given);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`ONTOP_SEED must be a non-negative integer, got ${JSON.stringify(given)}`);
  return n >>> 0;
}

export interface Seeded {
  seed: number;
  rand: Rand;
  /** An integer in [0, n). */
  int(n: number): number;
  /** `bytes` random bytes as hex. */
  hex(bytes: number): string;
}

export function fromSeed(seed: number): Seeded {
  const rand = mulberry32(seed);
  const int = (n: number) => Math.floor(rand() * n);
  const hex = (bytes: number) => Array.from({ length: bytes * 2 }, () => int(16).toString(16)).join('');
  return { seed, rand, int, hex };
}

/** A seeded generator for test `t`; the seed is printed as a comment so that a failure can be replayed. */
export function seeded(t: Test, legacy?: string): Seeded {
  const s = fromSeed(chooseSeed(process.env, legacy));
  t.comment(`seed ${s.seed}: replay with ONTOP_SEED=${s.seed}`);
  return s;
}

// Latency samples and their summary: one Float64Array of milliseconds per
// phase, filled in place so recording a sample costs nothing measurable.

export class Samples {
  private data: Float64Array;
  count = 0;

  constructor(expected = 1024) {
    this.data = new Float64Array(Math.max(16, expected));
  }

  /** Records one latency from two process.hrtime.bigint() readings. */
  addSpan(start: bigint, end: bigint): void {
    this.add(Number(end - start) / 1e6);
  }

  add(ms: number): void {
    if (this.count === this.data.length) {
      const bigger = new Float64Array(this.data.length * 2);
      bigger.set(this.data);
      this.data = bigger;
    }
    this.data[this.count++] = ms;
  }

  /** The recorded values, in the order they came. */
  values(): Float64Array {
    return this.data.subarray(0, this.count);
  }

  summary(): LatencySummary {
    const sorted = this.data.slice(0, this.count).sort();
    let sum = 0;
    for (const v of sorted) sum += v;
    return {
      n: this.count,
      p50Ms: percentile(sorted, 0.5),
      p99Ms: percentile(sorted, 0.99),
      meanMs: this.count ? sum / this.count : NaN,
      minMs: this.count ? sorted[0]! : NaN,
      maxMs: this.count ? sorted[this.count - 1]! : NaN,
    };
  }
}

export interface LatencySummary {
  n: number;
  p50Ms: number;
  p99Ms: number;
  meanMs: number;
  minMs: number;
  maxMs: number;
}

/** Nearest-rank percentile of sorted values. */
export function percentile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank]!;
}

/** The middle value, or the mean of the two middle ones. */
export function median(values: number[]): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Milliseconds since a process.hrtime.bigint() reading. */
export function msSince(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e6;
}

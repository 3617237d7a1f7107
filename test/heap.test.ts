// The daemon's collection of dead Buffers: when it collects (growth of
// ArrayBuffer memory past the slack since the last collection, with the floor
// following the total down), and the real V8 collection it uses; and the
// release of memory when the daemon goes idle after a burst.
import t from 'tap';
import vm from 'node:vm';
import { fullCollection, releaseAfterBursts, watchBufferGarbage, watchHeap } from '../lib/heap.js';
import { mallocTrim } from '../lib/native.js';

const tick = (ms = 30) => new Promise<void>((r) => setTimeout(r, ms));

t.test('collects once the ArrayBuffer total exceeds the floor by the slack, then takes the total after it as the floor', async (t) => {
  let bytes = 1000;
  let collections = 0;
  const stop = watchBufferGarbage({
    arrayBuffers: () => bytes,
    collect: () => {
      collections++;
      bytes = 1500; // what was dead is gone; 500 more bytes stay in use
    },
    intervalMs: 5,
    slackBytes: 100,
  });
  t.teardown(stop);
  bytes = 1100;
  await tick();
  t.equal(collections, 0, 'growth up to the slack is left alone');
  bytes = 1101;
  await tick();
  t.equal(collections, 1, 'growth past the slack collects');
  bytes = 1600;
  await tick();
  t.equal(collections, 1, 'the floor is now what stayed in use: Buffers all alive never collect at every check');
  bytes = 1601;
  await tick();
  t.equal(collections, 2);
});

t.test('the floor follows the total down, so growth after a drop counts from the lower total', async (t) => {
  let bytes = 5000;
  let collections = 0;
  const stop = watchBufferGarbage({ arrayBuffers: () => bytes, collect: () => void collections++, intervalMs: 5, slackBytes: 100 });
  t.teardown(stop);
  bytes = 200; // V8 collected by itself
  await tick();
  bytes = 301;
  await tick();
  t.ok(collections >= 1, 'collected at 301, though far below the first floor of 5000');
});

t.test('stop() ends the checks', async (t) => {
  let reads = 0;
  const stop = watchBufferGarbage({ arrayBuffers: () => reads++, collect: () => {}, intervalMs: 5 });
  stop();
  const before = reads;
  await tick();
  t.equal(reads, before);
});

t.test('the defaults read the real ArrayBuffer total and collect with V8 itself', async (t) => {
  const stop = watchBufferGarbage();
  t.teardown(stop);
  t.pass('started with process.memoryUsage() and fullCollection()');
});

t.test('the default collection is made when first needed, and frees dead Buffers', async (t) => {
  let bytes = 0;
  let reads = 0;
  let live: Buffer | undefined = Buffer.alloc(1024 * 1024);
  const weak = new WeakRef(live);
  live = undefined;
  await tick(0);
  const stop = watchBufferGarbage({ arrayBuffers: () => (reads++, bytes), intervalMs: 5, slackBytes: 100 });
  t.teardown(stop);
  bytes = 1000;
  const before = reads;
  await tick();
  t.ok(reads > before + 1, 'the total was read again after the collection');
  t.equal(weak.deref(), undefined, 'a dead 1 MiB Buffer is collected by the lazily made gc()');
});

t.test('fullCollection returns a gc() node already exposes, or makes one without exposing gc to anyone else', async (t) => {
  const given = () => {};
  t.equal(fullCollection(given), given);
  const gc = fullCollection(undefined);
  t.type(gc, 'function');
  let live: Buffer | undefined = Buffer.alloc(1024 * 1024);
  const weak = new WeakRef(live);
  live = undefined;
  await tick(0);
  gc();
  t.equal(weak.deref(), undefined, 'a dead 1 MiB Buffer is collected');
  t.equal(vm.runInNewContext('typeof gc'), 'undefined', '--expose-gc is off again for new contexts');
  t.equal(typeof (globalThis as { gc?: unknown }).gc, 'undefined', 'this global has no gc');
});

/** CPU readings: one value per call, then the last one for ever; `calls` counts them. */
function readings(values: number[]): { read: () => number; calls: () => number; add: (us: number) => void } {
  let calls = 0;
  let extra = 0;
  return {
    read: () => (values[Math.min(calls++, values.length - 1)] as number) + extra,
    calls: () => calls,
    add: (us) => void (extra += us),
  };
}

async function until(done: () => boolean): Promise<void> {
  while (!done()) await tick(5);
}

t.test('releaseAfterBursts: busy intervals add up to a burst; the first idle interval after it collects and trims, once', async (t) => {
  // Idle means at most 1 % of the 10 ms interval: 100 µs.
  const cpu = readings([0, 100, 700, 750, 1350, 1350]);
  const done: string[] = [];
  const stop = releaseAfterBursts({
    cpuMicros: cpu.read,
    collect: () => void done.push(`collect at reading ${cpu.calls()}`),
    trim: () => void done.push('trim'),
    intervalMs: 10,
    burstMicros: 1000,
  });
  t.teardown(stop);
  await until(() => cpu.calls() > 12);
  // Readings: 100 idle (no burst before), 600 busy, 50 idle (600 is no burst yet), 600 busy (a burst: 1200), then idle.
  t.same(done, ['collect at reading 6', 'trim'], 'released at the first idle interval after the burst, and once only');
});

t.test("releaseAfterBursts: the release's own CPU does not count towards the next burst", async (t) => {
  const cpu = readings([0, 2000]);
  let releases = 0;
  const stop = releaseAfterBursts({ cpuMicros: cpu.read, collect: () => cpu.add(5000), trim: () => void releases++, intervalMs: 10, burstMicros: 1000 });
  t.teardown(stop);
  await until(() => cpu.calls() > 10);
  t.equal(releases, 1, 'the 5 ms collection made no burst of its own');
});

t.test("releaseAfterBursts: the defaults read the process's CPU time, collect with V8 and trim with the addon", async (t) => {
  releaseAfterBursts()();
  const stop = releaseAfterBursts({ intervalMs: 20, burstMicros: 1 });
  t.teardown(stop);
  const end = Date.now() + 30;
  while (Date.now() < end); // a busy interval
  await tick(100);
  t.pass('released through fullCollection() and mallocTrim() without throwing');
  t.type(mallocTrim(), 'boolean', 'mallocTrim says whether it released anything');
});

t.test('watchHeap runs both checks, with their defaults, on one timer', async (t) => {
  const stop = watchHeap();
  t.teardown(stop);
  await tick(0);
  t.pass('started');
});

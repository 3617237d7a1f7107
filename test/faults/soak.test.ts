// Resident memory of the real daemon (node dist/main.js) levels off under a
// steady load: 8 keep-alive clients run Mount/Unmount pairs on 8 volumes,
// then Get/List pairs, while the daemon's RssAnon (its private memory:
// malloc and V8's heap, not node's mapped binary) is sampled. After a
// warm-up, the floor of RssAnon in the second half of a phase must be within
// a few bytes a pair of the floor in the first half: memory kept per call
// rises in a straight line and fails that many times over, while V8 growing
// and shrinking its heap only lifts samples above the floor.
import t from 'tap';
import type { Test } from 'tap';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { call, mountId } from '../helpers/client.js';
import { requireBuild, spawnDaemon } from '../helpers/faults.js';
import { mount } from '../../lib/native.js';
import { env } from '../helpers/tmp.js';

const CLIENTS = 8;
/** A phase runs until it made MAX_PAIRS pairs or this much time passed. */
const MOUNT_PHASE_MS = 120_000;
const READ_PHASE_MS = 30_000;
const MAX_PAIRS = 400_000;
const SAMPLE_MS = 1_000;
/**
 * Pairs before judging: the daemon frees dead Buffers once they hold 2 MiB more than after the last
 * collection (lib/heap.ts), and V8's old generation settles; RssAnon reached its level within some 35,000
 * Mount/Unmount pairs here (8 clients, 1,400 pairs a second on a tmpfs), then held it for 150,000 more.
 */
const WARMUP_PAIRS = 40_000;
/** Fewer pairs judged than this, and the bound below could not tell memory kept per call from noise. */
const MIN_PAIRS_JUDGED = 40_000;
/** Allowed rise of the floor, in bytes per pair. Dead Buffers awaiting a full collection kept 200 to 470. */
const MAX_BYTES_PER_PAIR = 40;

interface Sample {
  ms: number;
  pairs: number;
  anonKiB: number;
}

function rssAnonKiB(pid: number): number {
  const m = /^RssAnon:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]);
}

const mib = (kib: number): string => (kib / 1024).toFixed(1);

/** Runs `pair(client, agent)` on every client until the phase ends, sampling the daemon's RssAnon; then judges the samples. */
async function phase(t: Test, what: string, pid: number, ms: number, pair: (client: number, agent: http.Agent) => Promise<void>): Promise<void> {
  const agents = Array.from({ length: CLIENTS }, () => new http.Agent({ keepAlive: true, maxSockets: 1 }));
  t.teardown(() => agents.forEach((a) => a.destroy()));
  const started = Date.now();
  let pairs = 0;
  const samples: Sample[] = [];
  const sample = () => samples.push({ ms: Date.now() - started, pairs, anonKiB: rssAnonKiB(pid) });
  sample();
  const sampler = setInterval(sample, SAMPLE_MS);
  try {
    await Promise.all(
      agents.map(async (agent, i) => {
        while (Date.now() - started < ms && pairs < MAX_PAIRS) {
          await pair(i, agent);
          pairs++;
        }
      }),
    );
  } finally {
    clearInterval(sampler);
  }
  sample();
  for (const s of samples.filter((_, k) => k % 4 === 0 || k === samples.length - 1)) {
    t.comment(`${what}: ${(s.ms / 1000).toFixed(0).padStart(3)} s ${String(s.pairs).padStart(6)} pairs  RssAnon ${mib(s.anonKiB)} MiB`);
  }
  const end = samples[samples.length - 1]!;
  t.comment(`${what}: ${pairs} pairs at ${Math.round(pairs / (end.ms / 1000))}/s; RssAnon ${mib(samples[0]!.anonKiB)} -> ${mib(end.anonKiB)} MiB`);

  const judged = pairs - WARMUP_PAIRS;
  if (judged < MIN_PAIRS_JUDGED) {
    // A machine too busy to make the pairs in time says nothing either way: say so rather than fail or pass.
    t.skip(`${what}: too few pairs to judge (${judged} after the warm-up, ${MIN_PAIRS_JUDGED} needed): this machine is too busy`);
    return;
  }
  const middle = WARMUP_PAIRS + judged / 2;
  const floor = (from: number, to: number) => Math.min(...samples.filter((s) => s.pairs >= from && s.pairs <= to).map((s) => s.anonKiB));
  const [first, second] = [floor(WARMUP_PAIRS, middle), floor(middle, pairs)];
  const perPair = ((second - first) * 1024) / (judged / 2);
  t.ok(
    perPair < MAX_BYTES_PER_PAIR,
    `${what}: the floor of RssAnon moves ${mib(first)} -> ${mib(second)} MiB from the first to the second half after the warm-up: ${perPair.toFixed(1)} bytes a pair (bound ${MAX_BYTES_PER_PAIR})`,
  );
}

t.test('resident memory levels off under steady Mount/Unmount and Get/List loads', async (t) => {
  requireBuild(t);
  const e = await env(t);
  // State root and base on a tmpfs: the load then runs at one rate from start to end. On the disk's ext4
  // every cycle frees inodes that the allocator skips for a minute, and the rate falls fivefold over the
  // phase, leaving too few pairs to judge. Memory, not the disk, is what this test measures.
  const scratch = path.join(e.dir, 'tmpfs');
  fs.mkdirSync(scratch);
  await mount('tmpfs', scratch, 'tmpfs', 0, 'size=256m,mode=0700');
  const root = path.join(scratch, 'root');
  const base = path.join(scratch, 'base');
  fs.mkdirSync(base);
  fs.writeFileSync(path.join(base, 'f.txt'), 'x');
  const socket = path.join(e.dir, 'x.sock');
  const daemon = spawnDaemon(t, root, socket, ['--log-level', 'info']);
  await daemon.ready;
  const pid = daemon.proc.pid!;
  for (let i = 0; i < CLIENTS; i++) t.same((await call(socket, '/VolumeDriver.Create', { Name: `v${i}`, Opts: { base } })).json, {});

  const ok = async (route: string, body: unknown, agent: http.Agent) => {
    const r = await call(socket, route, body, agent);
    if (r.status !== 200 || r.json?.Err) throw new Error(`${route} ${JSON.stringify(body)}: ${r.status} ${r.text}`);
  };
  await phase(t, 'Mount/Unmount', pid, MOUNT_PHASE_MS, async (i, agent) => {
    const ID = mountId();
    await ok('/VolumeDriver.Mount', { Name: `v${i}`, ID }, agent);
    await ok('/VolumeDriver.Unmount', { Name: `v${i}`, ID }, agent);
  });
  await phase(t, 'Get/List', pid, READ_PHASE_MS, async (i, agent) => {
    await ok('/VolumeDriver.Get', { Name: `v${i}` }, agent);
    await ok('/VolumeDriver.List', {}, agent);
  });

  t.equal(daemon.running(), true, 'the daemon is still up');
  for (let i = 0; i < CLIENTS; i++) t.same((await call(socket, '/VolumeDriver.Remove', { Name: `v${i}` })).json, {});
  daemon.proc.kill('SIGTERM');
  t.equal(await daemon.exited, 0, 'the daemon stops cleanly');
});

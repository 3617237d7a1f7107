// Who may change what: the per-volume in-process queue (order per name,
// other names alongside, failures contained) and the exclusive lock on the
// state root that keeps a second daemon out (checked from another process).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { VolumeQueues, lockExclusive } from '../lib/lock.js';

async function dir(t: import('tap').Test): Promise<string> {
  const d = await fsp.mkdtemp(path.join(os.tmpdir(), 'ontop-lock-'));
  t.teardown(() => fsp.rm(d, { recursive: true, force: true }));
  return d;
}
/** A promise and the function that resolves it: the test decides when a holder lets go. */
function gate(): { open: () => void; opened: Promise<void> } {
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  return { open, opened };
}

/** Lets pending callbacks run once, so that a call that is free to proceed does. */
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

// A regression in these tests shows as a wait that never ends: fail in seconds, not at tap's 900 s.
const bounded = { timeout: 20_000 };

t.test('calls for one name run one at a time in arrival order; other names run alongside', bounded, async (t) => {
  const queues = new VolumeQueues();
  const events: string[] = [];
  const a1 = gate();
  const job = (name: string, tag: string, held?: Promise<void>) =>
    queues.run(name, async () => {
      events.push(`start ${tag}`);
      await (held ?? turn()); // a real wait inside the queue: a call running alongside would show between start and end
      events.push(`end ${tag}`);
      return tag;
    });
  const all = Promise.all([job('a', 'a1', a1.opened), job('a', 'a2'), job('b', 'b1'), job('a', 'a3')]);
  t.equal(queues.busy, 2);
  await queues.run('b', async () => undefined); // b's queue, behind b1: b1 is done once this runs
  t.same(events, ['start a1', 'start b1', 'end b1'], 'b ran to its end while a1 held a; a2 and a3 wait behind a1');
  a1.open();
  await queues.drain();
  t.equal(queues.busy, 0, 'drain waited for every queued call');
  t.same(await all, ['a1', 'a2', 'b1', 'a3']);
  t.same(events.filter((e) => / a\d/.test(e)), ['start a1', 'end a1', 'start a2', 'end a2', 'start a3', 'end a3']);
});

t.test('a failing call rejects to its caller and does not block the next one', async (t) => {
  const queues = new VolumeQueues();
  const failing = queues.run('a', async () => {
    throw new Error('boom');
  });
  const next = queues.run('a', async () => 'next');
  await t.rejects(failing, { message: 'boom' });
  t.equal(await next, 'next');
  await queues.drain();
  t.equal(queues.busy, 0, 'a failed call leaves no queue behind');
});

t.test('lockExclusive refuses a second holder without waiting, in this process and in another, and frees on close', bounded, async (t) => {
  const file = path.join(await dir(t), 'daemon.lock');
  const a = await lockExclusive(file);
  t.ok(a);
  t.equal(await lockExclusive(file), undefined, 'a second descriptor in this process is refused');
  const other = spawnSync('flock', ['--nonblock', '--exclusive', file, 'true']);
  t.equal(other.status, 1, 'another process is refused too (flock(1) exits 1 when the lock is taken)');
  await a!.close();
  t.equal(spawnSync('flock', ['--nonblock', '--exclusive', file, 'true']).status, 0, 'free once closed');
  const b = await lockExclusive(file);
  t.ok(b);
  await b!.close();
});

// Per-volume locks: in-process order, exclusion of another holder of the
// file, and deletion of a lock file while someone waits on it.
import t from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { VolumeLocks, tryLockForever } from '../lib/lock.js';

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

/** Lets pending I/O callbacks and timers run once, so that a call that is free to proceed does. */
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

/**
 * Resolves once /proc/locks shows a process blocked in flock(2) on `file`'s
 * inode (a "->" line), or once `instead` settles (the caller then sees that
 * no one had to wait). An ordering by the kernel's own state, not by time.
 */
async function blockedOn(file: string, instead: Promise<unknown>): Promise<boolean> {
  const { ino } = fs.statSync(file);
  let settled = false;
  void instead.then(
    () => (settled = true),
    () => (settled = true),
  );
  for (;;) {
    const waiting = fs
      .readFileSync('/proc/locks', 'utf8')
      .split('\n')
      .some((l) => / -> FLOCK /.test(l) && l.split(/\s+/).some((f) => f.endsWith(`:${ino}`)));
    if (waiting) return true;
    if (settled) return false;
    await turn();
  }
}

// A regression in these tests shows as a wait that never ends: fail in seconds, not at tap's 900 s.
const bounded = { timeout: 20_000 };

t.test('calls for one name run one at a time in arrival order; other names run alongside', bounded, async (t) => {
  const locks = new VolumeLocks(await dir(t));
  const events: string[] = [];
  const a1 = gate();
  const job = (name: string, tag: string, held?: Promise<void>) =>
    locks.with(name, async () => {
      events.push(`start ${tag}`);
      await (held ?? turn()); // a real wait inside the lock: a call running alongside would show between start and end
      events.push(`end ${tag}`);
      return tag;
    });
  const all = Promise.all([job('a', 'a1', a1.opened), job('a', 'a2'), job('b', 'b1'), job('a', 'a3')]);
  t.equal(locks.busy, 2);
  await locks.with('b', async () => undefined); // b's queue, behind b1: b1 is done once this runs
  t.same(events, ['start a1', 'start b1', 'end b1'], 'b ran to its end while a1 held a; a2 and a3 wait behind a1');
  a1.open();
  await locks.drain();
  t.equal(locks.busy, 0, 'drain waited for every queued call');
  t.same(await all, ['a1', 'a2', 'b1', 'a3']);
  t.same(events.filter((e) => / a\d/.test(e)), ['start a1', 'end a1', 'start a2', 'end a2', 'start a3', 'end a3']);
  await locks.drain();
  t.equal(locks.busy, 0);
});

t.test('a failing call rejects to its caller and does not block the next one', async (t) => {
  const locks = new VolumeLocks(await dir(t));
  const failing = locks.with('a', async () => {
    throw new Error('boom');
  });
  const next = locks.with('a', async () => 'next');
  await t.rejects(failing, { message: 'boom' });
  t.equal(await next, 'next');
});

t.test('two lock tables on one directory (two processes) exclude each other through flock', bounded, async (t) => {
  const d = await dir(t);
  const one = new VolumeLocks(d);
  const two = new VolumeLocks(d);
  const held = gate();
  const inside = gate();
  const events: string[] = [];
  const first = one.with('v', async () => {
    events.push('one in');
    inside.open();
    await held.opened;
    events.push('one out');
  });
  await inside.opened;
  const second = two.with('v', async () => events.push('two in'));
  t.ok(await blockedOn(path.join(d, 'v'), second), 'the second waits in flock on the file the first holds');
  t.same(events, ['one in'], 'and has not run');
  held.open();
  await Promise.all([first, second]);
  t.same(events, ['one in', 'one out', 'two in']);
  t.ok(fs.existsSync(path.join(d, 'v')), 'the lock file stays without discard');
});

t.test('discard deletes the lock file, and a holder waiting on the old file moves to a new one', bounded, async (t) => {
  const d = await dir(t);
  const file = path.join(d, 'v');
  const one = new VolumeLocks(d);
  const two = new VolumeLocks(d);
  const three = new VolumeLocks(d);
  const firstHeld = gate();
  const firstIn = gate();
  const first = one.with('v', async (h) => {
    firstIn.open();
    await firstHeld.opened;
    h.discard();
  });
  await firstIn.opened;
  const secondHeld = gate();
  const secondIn = gate();
  const second = two.with('v', async () => {
    secondIn.open();
    await secondHeld.opened;
  });
  // Inode numbers can be reused once freed: the birth time tells two files apart too.
  const identity = () => {
    const st = fs.statSync(file, { bigint: true });
    return `${st.ino}:${st.birthtimeNs}`;
  };
  const old = identity();
  t.ok(await blockedOn(file, second), 'the second waits on the first file');
  firstHeld.open();
  await first;
  await secondIn.opened;
  t.ok(fs.existsSync(file), 'the waiter made the file again at the path');
  t.not(identity(), old, 'a new file, not the discarded one');
  // A third holder opening the path now must wait for the second, which holds the new file.
  const events: string[] = [];
  const third = three.with('v', async () => events.push('third in'));
  t.ok(await blockedOn(file, third), 'the third waits on the file the second holds');
  t.same(events, [], 'and has not run');
  secondHeld.open();
  await Promise.all([second.then(() => events.push('second done')), third]);
  t.same(events, ['second done', 'third in']);
  await one.with('v', async (h) => h.discard());
  t.notOk(fs.existsSync(file), 'a lone holder that discards leaves no file');
});

t.test('tryLockForever refuses a second holder without waiting, and the lock frees on close', async (t) => {
  const file = path.join(await dir(t), 'daemon.lock');
  const a = await tryLockForever(file);
  t.ok(a);
  t.equal(await tryLockForever(file), undefined);
  await a!.close();
  const b = await tryLockForever(file);
  t.ok(b);
  await b!.close();
});

t.test('an in-process-only call queues with the others but never touches a lock file', bounded, async (t) => {
  const d = await dir(t);
  const locks = new VolumeLocks(d);
  const events: string[] = [];
  const held = gate();
  const a = locks.with('v', async () => {
    await held.opened;
    events.push('file lock');
  });
  const b = locks.with(
    'w',
    async (h) => {
      h.discard();
      events.push('queue only');
    },
    false,
  );
  const x = locks.with('x', async () => events.push('queue only, kept'), false);
  const c = locks.with('v', async () => events.push('after'), false);
  await Promise.all([b, x]);
  t.same(events, ['queue only', 'queue only, kept'], 'other names ran while v was held');
  held.open();
  await Promise.all([a, c]);
  t.same(events, ['queue only', 'queue only, kept', 'file lock', 'after'], 'the queue-only call on v waited for the file-locked one');
  t.same(fs.readdirSync(d), ['v'], 'no file for w or x (discard or not)');
});

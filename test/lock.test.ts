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
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

t.test('calls for one name run one at a time in arrival order; other names run alongside', async (t) => {
  const locks = new VolumeLocks(await dir(t));
  const events: string[] = [];
  const job = (name: string, tag: string, ms: number) =>
    locks.with(name, async () => {
      events.push(`start ${tag}`);
      await sleep(ms);
      events.push(`end ${tag}`);
      return tag;
    });
  const all = Promise.all([job('a', 'a1', 30), job('a', 'a2', 1), job('b', 'b1', 1), job('a', 'a3', 1)]);
  t.equal(locks.busy, 2);
  await locks.drain();
  t.equal(locks.busy, 0, 'drain waited for every queued call');
  t.same(await all, ['a1', 'a2', 'b1', 'a3']);
  t.ok(events.indexOf('end b1') < events.indexOf('end a1'), 'b did not wait for a');
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

t.test('two lock tables on one directory (two processes) exclude each other through flock', async (t) => {
  const d = await dir(t);
  const one = new VolumeLocks(d);
  const two = new VolumeLocks(d);
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const events: string[] = [];
  const first = one.with('v', async () => {
    events.push('one in');
    await held;
    events.push('one out');
  });
  await sleep(20);
  const second = two.with('v', async () => events.push('two in'));
  await sleep(100);
  t.same(events, ['one in'], 'the second waits while the first holds the file');
  release();
  await Promise.all([first, second]);
  t.same(events, ['one in', 'one out', 'two in']);
  t.ok(fs.existsSync(path.join(d, 'v')), 'the lock file stays without discard');
});

t.test('discard deletes the lock file, and a holder waiting on the old file moves to a new one', async (t) => {
  const d = await dir(t);
  const one = new VolumeLocks(d);
  const two = new VolumeLocks(d);
  const three = new VolumeLocks(d);
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const first = one.with('v', async (h) => {
    await held;
    h.discard();
  });
  await sleep(20);
  let inode = 0;
  const second = two.with('v', async () => {
    inode = fs.statSync(path.join(d, 'v')).ino;
    await sleep(50);
  });
  await sleep(50);
  release();
  await first;
  await sleep(10);
  // A third holder opening the path now must wait for the second, which holds the new file.
  const events: string[] = [];
  await Promise.all([second.then(() => events.push('second done')), three.with('v', async () => events.push('third in'))]);
  t.same(events, ['second done', 'third in']);
  t.ok(inode > 0 && fs.existsSync(path.join(d, 'v')), 'the waiter re-created and locked the file at the path');
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

t.test('an in-process-only call queues with the others but never touches a lock file', async (t) => {
  const d = await dir(t);
  const locks = new VolumeLocks(d);
  const events: string[] = [];
  const a = locks.with('v', async () => {
    await sleep(20);
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
  const c = locks.with('v', async () => events.push('after'), false);
  await Promise.all([a, b, c]);
  t.same(events, ['queue only', 'file lock', 'after']);
  t.same(fs.readdirSync(d), ['v'], 'no file for w');
});

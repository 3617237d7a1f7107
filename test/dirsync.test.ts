// The shared sync of a directory (volumes/): who shares which fsync, on the
// main thread or in the thread pool, and what a failure does to its callers.
import t from 'tap';
import type { Test } from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DirSync, SLOW_SYNC_MS } from '../lib/dirsync.js';

/** A DirSync of a fresh directory, and counts of its syncs: all of them (each opens the directory) and those on the main thread. */
async function counted(t: Test): Promise<{ ds: DirSync; opens: () => number; onMain: () => number }> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ontop-dirsync-'));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  let opens = 0;
  let onMain = 0;
  const { openSync, fsyncSync } = fs;
  fs.openSync = ((p: fs.PathLike, ...rest: never[]) => {
    if (p === dir) opens++;
    return (openSync as (...a: unknown[]) => number)(p, ...rest);
  }) as typeof fs.openSync;
  fs.fsyncSync = (fd: number) => {
    onMain++;
    fsyncSync(fd);
  };
  t.teardown(() => {
    fs.openSync = openSync;
    fs.fsyncSync = fsyncSync;
  });
  return { ds: new DirSync(dir), opens: () => opens, onMain: () => onMain };
}

t.test('the callers of one turn share one fsync on the main thread; a later call gets one of its own', async (t) => {
  const { ds, opens, onMain } = await counted(t);
  t.equal(ds.slowMs, SLOW_SYNC_MS);
  const calls = Array.from({ length: 20 }, () => ds.sync());
  t.equal(new Set(calls).size, 1, 'one promise for the whole turn');
  t.equal(opens(), 0, 'nothing synced before the turn ends: later callers of the turn may still join');
  await Promise.all(calls);
  t.equal(opens(), 1);
  t.equal(onMain(), 1, 'fsync on the main thread');
  const later = ds.sync();
  t.not(later, calls[0], 'a call after the sync began never joins it');
  await later;
  t.equal(opens(), 2);
});

t.test('a failed sync rejects every caller of its turn, and the next turn tries again', async (t) => {
  const { ds } = await counted(t);
  await fsp.rm(ds.dir, { recursive: true });
  const calls = [ds.sync(), ds.sync()];
  for (const c of calls) await t.rejects(c, { code: 'ENOENT' });
  await fsp.mkdir(ds.dir);
  await t.resolves(ds.sync());
});

t.test('after a slow sync the next go to the thread pool, shared as on the main thread, until one is fast again', async (t) => {
  const { ds, opens, onMain } = await counted(t);
  ds.slowMs = -1; // every sync counts as slow
  await ds.sync();
  t.equal(onMain(), 1, 'the first sync is on the main thread');
  const calls = Array.from({ length: 20 }, () => ds.sync());
  t.equal(opens(), 2, 'a pool sync starts at once');
  t.not(calls[1], calls[0], 'the second caller does not join the sync already running (it may have missed its rename)');
  t.equal(new Set(calls.slice(1)).size, 1, 'callers after the first join one shared next sync');
  const order: number[] = [];
  await Promise.all(calls.map((c, i) => c.then(() => order.push(i))));
  t.equal(order[0], 0, 'the running sync finishes first');
  t.equal(opens(), 3, '20 callers, 2 syncs: the running one and one shared next');
  t.equal(onMain(), 1, 'both in the thread pool');
  ds.slowMs = Infinity; // the next sync is fast
  await ds.sync();
  t.equal(onMain(), 1, 'still in the pool: the last sync was slow');
  await ds.sync();
  t.equal(onMain(), 2, 'back on the main thread after a fast one');
});

t.test('a failed pool sync rejects its caller; the callers waiting behind it get a sync of their own', async (t) => {
  const { ds } = await counted(t);
  ds.slowMs = -1;
  await ds.sync();
  await fsp.rm(ds.dir, { recursive: true });
  const running = ds.sync();
  const next = ds.sync();
  fs.mkdirSync(ds.dir); // back before the next sync starts, which is once the running one has failed
  await t.rejects(running, { code: 'ENOENT' });
  await t.resolves(next);
});

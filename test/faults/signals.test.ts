// A stop that comes early: SIGTERM sent while the daemon is still starting,
// or the instant its socket answers. It must never kill the process outright
// (leaving a stale socket that costs dockerd 15 s a call): the first signal
// stops it cleanly once it is up, a second one exits at once.
import t from 'tap';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { defaultDeps, run, type MainDeps } from '../../lib/main.js';
import { fakeDriver, scratch } from '../helpers/fake-driver.js';
import { env } from '../helpers/tmp.js';
import { requireBuild, spawnDaemon } from '../helpers/faults.js';

function harness(dir: string) {
  const proc = new EventEmitter();
  const exits: number[] = [];
  let exited!: (code: number) => void;
  // 'no exit' after 5 s, so that a broken stop fails rather than hangs.
  const exit = Promise.race([new Promise<number>((r) => (exited = r)), new Promise<'no exit'>((r) => setTimeout(r, 5000, 'no exit').unref())]);
  let release!: () => void;
  const opening = new Promise<void>((r) => (release = r));
  const deps: MainDeps = {
    ...defaultDeps(),
    stderr: () => {},
    proc,
    exit: (code) => {
      exits.push(code);
      exited(code);
    },
    openDriver: async () => {
      await opening; // start-up recovery, taking its time
      return fakeDriver();
    },
  };
  const socket = path.join(dir, 'o.sock');
  const running = run(['--socket', socket, '--root', path.join(dir, 'root')], {}, deps);
  return { proc, exits, exit, release, running, socket };
}

t.test('a SIGTERM during start-up waits for the start to finish, then stops cleanly and removes the socket', async (t) => {
  const h = harness(await scratch(t));
  h.proc.emit('SIGTERM');
  t.same(h.exits, [], 'not killed outright');
  h.release();
  const d = await h.running;
  t.teardown(() => d?.server.close(0));
  t.ok(d, 'the start finished');
  t.equal(await h.exit, 0, 'then it stopped cleanly');
  t.notOk(fs.existsSync(h.socket), 'and removed its socket');
});

t.test('a second signal during start-up exits at once with the signal\'s code', async (t) => {
  const h = harness(await scratch(t));
  h.proc.emit('SIGTERM');
  h.proc.emit('SIGINT');
  t.same(h.exits, [130], 'exit(130) at once, without waiting for the start');
  h.release();
  const d = await h.running;
  t.teardown(() => d?.server.close(0));
  t.same(h.exits, [130], 'and no other exit once the start finished');
});

t.test('the real daemon stopped the instant it says "listening" always exits 0 and removes its socket', async (t) => {
  requireBuild(t);
  const e = await env(t);
  for (let i = 0; i < 5; i++) {
    const socket = path.join(e.dir, `s${i}.sock`);
    const daemon = spawnDaemon(t, e.root, socket);
    await daemon.ready;
    daemon.proc.kill('SIGTERM');
    t.equal(await daemon.exited, 0, `round ${i}: exit 0`);
    t.notOk(fs.existsSync(socket), `round ${i}: no socket left`);
  }
});

// An `ontop commit` killed with SIGKILL at random points (offline: no daemon
// answers, so the command holds daemon.lock and commits itself) leaves the
// view as it was, and the next `ontop commit` completes: the base ends up
// equal, content and metadata, to what the volume showed before. The kill
// points are random (seeded); what is asserted holds at every one of them.
import t from 'tap';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { mountId } from '../helpers/client.js';
import { MAIN, REPO, requireBuild, UNTRACKED } from '../helpers/faults.js';
import { seeded } from '../helpers/seed.js';
import { env } from '../helpers/tmp.js';

requireBuild(t);

/** Content, mode, owner and mtime of every entry below `dir` (the root's own times left out: a view's are its upper's). */
function tree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (rel: string): void => {
    for (const name of fs.readdirSync(path.join(dir, rel)).sort()) {
      const r = path.join(rel, name);
      const st = fs.lstatSync(path.join(dir, r));
      const meta = `${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid} ${st.mtimeMs}`;
      if (st.isDirectory()) {
        out[r + '/'] = `dir ${meta}`;
        walk(r);
      } else if (st.isSymbolicLink()) out[r] = `link ${fs.readlinkSync(path.join(dir, r))}`;
      else out[r] = `file ${meta} ${crypto.createHash('sha256').update(fs.readFileSync(path.join(dir, r))).digest('hex')}`;
    }
  };
  walk('');
  return out;
}

/**
 * Runs `ontop commit` offline. With killAfterMs, it is killed that long after its journal appears (the
 * commit has begun writing), or at once if it finishes first.
 */
function commit(root: string, volume: string, killAfterMs?: number): Promise<{ code: number | null; signal: string | null; stderr: string; started: number }> {
  return new Promise((resolve) => {
    const p = spawn('env', [...UNTRACKED, MAIN, 'commit', '--root', root, '--socket', path.join(root, 'none.sock'), volume], { cwd: REPO, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    let done = false;
    let started = 0;
    p.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const journal = path.join(root, 'volumes', volume, 'commit.journal');
    const watch = (): void => {
      if (done || killAfterMs === undefined) return;
      if (fs.existsSync(journal)) {
        started = 1;
        setTimeout(() => p.kill('SIGKILL'), killAfterMs);
      } else setTimeout(watch, 1);
    };
    watch();
    p.on('close', (code, signal) => {
      done = true;
      resolve({ code, signal, stderr, started });
    });
  });
}

t.test('a commit killed at random points leaves the view as it was; the next one completes it', async (t) => {
  const s = seeded(t);
  for (let round = 0; round < 4; round++) {
    const e = await env(t);
    const base = await e.base('base');
    for (let i = 0; i < 300; i++) await fsp.writeFile(path.join(base, `f${i}`), `old ${i}\n`);
    await fsp.mkdir(path.join(base, 'dir'));
    for (let i = 0; i < 50; i++) await fsp.writeFile(path.join(base, 'dir', `d${i}`), `d ${i}\n`);
    const d = await e.open();
    await d.create({ Name: 'v', Opts: { base } });
    const id = mountId();
    const { Mountpoint: m } = await d.mount({ Name: 'v', ID: id });
    for (let i = 0; i < 300; i += 2) await fsp.writeFile(path.join(m, `f${i}`), `new ${i} ${'x'.repeat(s.int(5000))}\n`);
    for (let i = 1; i < 300; i += 7) await fsp.rm(path.join(m, `f${i}`));
    await fsp.rm(path.join(m, 'dir'), { recursive: true });
    await fsp.mkdir(path.join(m, 'dir'));
    await fsp.writeFile(path.join(m, 'dir', 'only'), 'only\n');
    for (let i = 0; i < 200; i++) await fsp.writeFile(path.join(m, `added${i}`), `a ${i}\n`);
    await fsp.symlink('f0', path.join(m, 'link'));
    const seen = tree(m);
    await d.unmount({ Name: 'v', ID: id });
    await d.close();

    const kills: string[] = [];
    for (let attempt = 0; attempt < 3; attempt++) {
      const r = await commit(e.root, 'v', s.int(300));
      kills.push(`${r.signal ?? r.code}${r.started > 0 ? ' mid-commit' : ''}`);
      if (r.code === 0) break;
    }
    const done = await commit(e.root, 'v');
    t.equal(done.code, 0, `the commit after kills (${kills.join(', ')}) completes`, { stderr: done.stderr });
    t.same(tree(base), seen, 'the base is what the volume showed');
    t.same(fs.readdirSync(path.join(e.root, 'volumes/v/upper')), [], 'the volume has no changes left');
    t.notOk(fs.existsSync(path.join(e.root, 'volumes/v/commit.journal')), 'no journal left');
    const d2 = await e.open();
    const again = await d2.mount({ Name: 'v', ID: id });
    t.same(tree(again.Mountpoint), seen, 'and the view is the same');
    await d2.unmount({ Name: 'v', ID: id });
    await d2.close();
  }
});

t.test('a killed commit, then a Mount before commit is run again: the view is as before the commit, temporary files never seen', async (t) => {
  const s = seeded(t);
  const e = await env(t);
  const base = await e.base('base');
  for (let i = 0; i < 400; i++) await fsp.writeFile(path.join(base, `f${i}`), `old ${i}\n`);
  const d = await e.open();
  await d.create({ Name: 'v', Opts: { base } });
  const id = mountId();
  const { Mountpoint: m } = await d.mount({ Name: 'v', ID: id });
  for (let i = 0; i < 400; i++) await fsp.writeFile(path.join(m, `f${i}`), `new ${i}\n`);
  const seen = tree(m);
  await d.unmount({ Name: 'v', ID: id });
  await d.close();
  const r = await commit(e.root, 'v', s.int(100));
  t.comment(`commit ended with ${r.signal ?? r.code}`);
  const d2 = await e.open();
  const again = await d2.mount({ Name: 'v', ID: id });
  t.same(tree(again.Mountpoint), seen, 'the view is what it was');
  await d2.unmount({ Name: 'v', ID: id });
  t.equal((await d2.commit({ name: 'v' })).name, 'v');
  t.same(tree(base), seen);
  await d2.close();
});

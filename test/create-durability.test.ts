// Create is whole or nothing, for a crash and for a power loss: the new tree
// is synced before its rename into volumes/, volumes/ after it, and a failure
// after the rename takes the volume out of sight again so that memory and
// disk agree.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { DIST_DRIVER, REPO, UNTRACKED, requireBuild } from './helpers/faults.js';
import { env } from './helpers/tmp.js';

t.test('a failure after the rename (a failing fsync of volumes/) leaves no volume on disk or in memory', async (t) => {
  const e = await env(t);
  const base = await e.base();
  let fail = true;
  const d = await e.open({
    faults: (p) => {
      if (p === 'create:after-rename' && fail) throw Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
    },
  });
  await t.rejects(d.create({ Name: 'v', Opts: { base } }), { name: 'DriverError', message: /create of volume v failed: EIO/ });
  t.same(fs.readdirSync(path.join(e.root, 'volumes')), [], 'not on disk');
  t.same(await d.list(), { Volumes: [] }, 'not in memory');
  await t.rejects(d.get({ Name: 'v' }), { message: /no such volume: v/ });
  fail = false;
  t.same(await d.create({ Name: 'v', Opts: { base } }), {}, 'the name is free: a new Create works');
  t.same(await d.remove({ Name: 'v' }), {});
});

t.test('the tree is synced before its rename and volumes/ after it (strace of a real Create)', async (t) => {
  requireBuild(t);
  const strace = spawnSync('strace', ['-V'], { stdio: 'ignore' });
  if (strace.error) return t.skip('strace is not installed (apt-get install strace)');
  const e = await env(t);
  const base = await e.base();
  const out = path.join(e.dir, 'strace.txt');
  const script = `
    const { openDriver } = await import(${JSON.stringify(DIST_DRIVER)});
    const { createLogger } = await import(${JSON.stringify(path.join(REPO, 'dist/log.js'))});
    const d = await openDriver({ root: ${JSON.stringify(e.root)}, logger: createLogger('error') });
    await d.create({ Name: 'v', Opts: { base: ${JSON.stringify(base)} } });
    await d.close();`;
  const run = spawnSync('strace', ['-f', '-y', '-qq', '-o', out, '-e', 'trace=fsync,fdatasync,rename,renameat,renameat2', 'env', ...UNTRACKED, '--input-type=module', '-e', script], {
    encoding: 'utf8',
  });
  t.equal(run.status, 0, run.stderr);
  const lines = fs.readFileSync(out, 'utf8').split('\n');
  const at = (re: RegExp): number => lines.findIndex((l) => re.test(l));
  const tmp = `${path.join(e.root, 'tmp')}/v\\.[0-9a-f]{16}`;
  const rename = at(new RegExp(`rename(at2?)?\\(.*"${tmp}".*"${path.join(e.root, 'volumes/v')}"`));
  t.ok(rename > 0, 'the rename of the new tree into volumes/ is seen');
  const before = (re: RegExp, what: string): void => {
    const i = at(re);
    t.ok(i >= 0 && i < rename, `${what} before the rename`);
  };
  before(new RegExp(`fdatasync\\(\\d+<${tmp}/volume\\.json>`), 'volume.json synced');
  before(new RegExp(`fsync\\(\\d+<${tmp}/upper>`), 'upper/ synced');
  before(new RegExp(`fsync\\(\\d+<${tmp}>`), 'the new volume directory synced');
  const after = lines.findIndex((l, i) => i > rename && new RegExp(`fsync\\(\\d+<${path.join(e.root, 'volumes')}>`).test(l));
  t.ok(after > rename, 'volumes/ synced after the rename');
});

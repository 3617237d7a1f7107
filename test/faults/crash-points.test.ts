// A real SIGKILL between any two steps of Create, Mount, Unmount and Remove:
// a child process runs the compiled driver with a fault hook that kills the
// process at one step. The next start (here, in-process) must bring the
// volume back to a valid state, and the next calls must work on it.
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { env, mountCount, records } from '../helpers/tmp.js';
import { DIST_DRIVER, REPO, UNTRACKED, eventually, mountsUnder, requireBuild, usersWithoutMount } from '../helpers/faults.js';

type Step = ['create' | 'mount' | 'unmount' | 'remove', Record<string, unknown>];

/** Runs `steps` on the compiled driver in a child that SIGKILLs itself at the nth hit of `point`. */
async function killedAt(root: string, point: string, nth: number, steps: Step[]): Promise<{ how: number | string; stderr: string }> {
  const script = `
    const { openDriver } = await import(${JSON.stringify(DIST_DRIVER)});
    const { createLogger } = await import(${JSON.stringify(path.join(REPO, 'dist/log.js'))});
    let hits = 0;
    const faults = (p) => { if (p === ${JSON.stringify(point)} && ++hits === ${nth}) process.kill(process.pid, 'SIGKILL'); };
    const d = await openDriver({ root: ${JSON.stringify(root)}, logger: createLogger('error'), faults });
    for (const [verb, req] of ${JSON.stringify(steps)}) await d[verb](req);
    console.error('the fault point was never reached');
    process.exit(3);`;
  const child = spawn('env', [...UNTRACKED, '--input-type=module', '-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const how = await new Promise<number | string>((r) => child.on('exit', (code, signal) => r(code ?? signal!)));
  return { how, stderr };
}

interface Case {
  point: string;
  nth?: number;
  volatile?: boolean;
  steps: Step[];
  /** What a whole, recovered volume looks like; undefined: no volume. */
  after?: { mounted: boolean; users: number };
  /** What the kill leaves before the next start, checked to prove the crash really happened there. */
  left: (root: string) => void;
}

const V = 'v';
const create: Step = ['create', { Name: V, Opts: { base: '@base' } }];
const mountA: Step = ['mount', { Name: V, ID: 'a' }];
const merged = (root: string) => path.join(root, 'volumes', V, 'merged');
const users = (root: string) => {
  const dir = path.join(root, 'volumes', V, 'users');
  return fs.existsSync(dir) ? records(fs.readdirSync(dir)) : [];
};

const CASES: Case[] = [
  {
    point: 'create:before-rename',
    steps: [create],
    left: (root) => t.equal(fs.readdirSync(path.join(root, 'tmp')).length, 1, 'a half-built volume in tmp/'),
  },
  {
    point: 'mount:before-mount',
    steps: [create, mountA],
    after: { mounted: false, users: 0 },
    left: (root) => t.equal(mountCount(merged(root)), 0, 'no overlay yet'),
  },
  {
    point: 'mount:after-mount',
    steps: [create, mountA],
    after: { mounted: false, users: 0 },
    left: (root) => t.same([mountCount(merged(root)), users(root)], [1, []], 'an overlay without a record'),
  },
  {
    point: 'mount:after-mount',
    volatile: true,
    steps: [create, mountA],
    after: { mounted: false, users: 0 },
    left: (root) => t.same([mountCount(merged(root)), users(root)], [1, []], 'an overlay without a record'),
  },
  {
    point: 'mount:after-record',
    steps: [create, mountA],
    after: { mounted: true, users: 1 },
    left: (root) => t.same([mountCount(merged(root)), users(root)], [1, ['a']], 'an overlay and its record, reply never sent'),
  },
  {
    point: 'mount:after-record',
    nth: 2,
    steps: [create, mountA, mountA],
    after: { mounted: true, users: 2 },
    left: (root) => t.equal(fs.readFileSync(path.join(root, 'volumes', V, 'users', 'a'), 'utf8'), '2', 'the second count is recorded (its reply was lost)'),
  },
  {
    point: 'unmount:after-unrecord',
    steps: [create, mountA, ['unmount', { Name: V, ID: 'a' }]],
    after: { mounted: false, users: 0 },
    left: (root) => t.same([mountCount(merged(root)), users(root)], [1, []], 'an overlay whose last record is gone'),
  },
  {
    point: 'remove:before-unmount',
    steps: [create, mountA, ['remove', { Name: V }]],
    after: { mounted: false, users: 0 },
    left: (root) => t.same([mountCount(merged(root)), users(root)], [1, []], 'records set aside before the overlay is touched'),
  },
  {
    point: 'remove:after-rename',
    steps: [create, mountA, ['remove', { Name: V }]],
    left: (root) => {
      t.ok(fs.readdirSync(path.join(root, 'trash')).some((n) => n.startsWith(`${V}.`)), 'the volume is in the trash');
    },
  },
];

for (const c of CASES) {
  const label = `${c.point}${c.nth ? ` (hit ${c.nth})` : ''}${c.volatile ? ', volatile' : ''}`;
  t.test(`SIGKILL at ${label}: the next start leaves ${c.after ? 'a whole volume' : 'no volume'} that the next calls use normally`, async (t) => {
    requireBuild(t);
    const e = await env(t);
    const base = await e.base('base', { 'a.txt': 'A' });
    const steps = c.steps.map(([verb, req]): Step => [verb, verb === 'create' ? { Name: V, Opts: { base, ...(c.volatile ? { volatile: 'yes' } : {}) } } : req]);
    const { how, stderr } = await killedAt(e.root, c.point, c.nth ?? 1, steps);
    t.equal(how, 'SIGKILL', `killed at the fault point ${stderr}`);
    c.left(e.root);

    const d = await e.open();
    await eventually(() => e.log.has('info', /mount records reconciled/), 10_000, 'the start-up sweep');
    t.same(usersWithoutMount(e.root), [], 'no record without a mount');
    t.same(fs.readdirSync(path.join(e.root, 'tmp')), [], 'tmp/ is empty');
    if (!c.after) {
      t.same(await d.list(), { Volumes: [] }, 'no volume');
      t.same(await d.create({ Name: V, Opts: { base } }), {}, 'the name can be created again');
    } else {
      t.match(await d.get({ Name: V }), { Volume: { Name: V, Status: c.after } });
      t.notOk((await d.get({ Name: V })).Volume.Status?.problems, 'no problems');
    }
    const { Mountpoint } = await d.mount({ Name: V, ID: 'b' });
    t.equal(fs.readFileSync(path.join(Mountpoint, 'a.txt'), 'utf8'), 'A', 'the base shows through');
    fs.writeFileSync(path.join(Mountpoint, 'new.txt'), 'new');
    t.equal(mountCount(Mountpoint), 1, 'exactly one overlay');
    await d.unmount({ Name: V, ID: 'b' });
    t.same(await d.remove({ Name: V }), {}, 'and it can be removed');
    t.same(mountsUnder(e.root), [], 'nothing stays mounted');
    await d.close();
    t.same(fs.readdirSync(path.join(e.root, 'trash')), [], 'the trash is emptied');
  });
}

// Who may use ontop: the socket is 0660, owned by root and the configured
// group; with --allow-base (repeatable) or ONTOP_ALLOW_BASE only bases inside
// those trees are accepted, after resolving symlinks on both sides, so a link
// cannot lead out. Checked through the real daemon (node dist/main.js).
import t from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { call, mountId } from '../helpers/client.js';
import { env } from '../helpers/tmp.js';
import { requireBuild, spawnDaemon } from '../helpers/faults.js';

t.test('the socket of the real daemon is a socket with mode 0660, owner root and the --socket-group group', async (t) => {
  requireBuild(t);
  const e = await env(t);
  for (const [group, gid] of [['4242', 4242], [undefined, 0]] as const) {
    const socket = path.join(e.dir, `s${gid}.sock`);
    const daemon = spawnDaemon(t, path.join(e.dir, `root${gid}`), socket, group ? ['--socket-group', group] : []);
    await daemon.ready;
    const st = fs.lstatSync(socket);
    t.ok(st.isSocket(), 'a socket');
    t.equal(st.mode & 0o7777, 0o660, 'mode 0660: no access for others');
    t.equal(st.uid, 0, 'owned by root');
    t.equal(st.gid, gid, group ? 'group from --socket-group' : 'root\'s group by default');
    t.same(fs.readdirSync(e.dir).filter((n) => n.startsWith('.ontop-')), [], 'no temporary socket left beside it');
    daemon.proc.kill('SIGTERM');
    t.equal(await daemon.exited, 0, 'stops cleanly', { logs: daemon.logs().slice(-3000) });
  }
});

t.test('--allow-base (repeatable) and ONTOP_ALLOW_BASE admit bases only inside their trees, and a symlink cannot lead out', async (t) => {
  requireBuild(t);
  const e = await env(t);
  const allowed = await e.base('allowed/in', { 'a.txt': 'A' });
  const other = await e.base('other');
  const outside = await e.base('outside', { 'secret.txt': 'secret' });
  await fsp.symlink(outside, path.join(e.dir, 'allowed/escape')); // inside by name, outside in fact
  await fsp.symlink(path.join(e.dir, 'allowed'), path.join(e.dir, 'allowed-link')); // outside by name, inside in fact
  const configs: Array<[string, string[], NodeJS.ProcessEnv]> = [
    ['--allow-base twice', ['--allow-base', path.join(e.dir, 'allowed'), '--allow-base', other], {}],
    ['ONTOP_ALLOW_BASE', [], { ONTOP_ALLOW_BASE: `${path.join(e.dir, 'allowed')}:${other}` }],
  ];
  for (const [i, [how, args, environment]] of configs.entries()) {
    const socket = path.join(e.dir, `a${i}.sock`);
    const daemon = spawnDaemon(t, path.join(e.dir, `root${i}`), socket, args, environment);
    await daemon.ready;
    const create = async (name: string, base: string) => (await call(socket, '/VolumeDriver.Create', { Name: name, Opts: { base } })).json;
    t.same(await create('in', allowed), {}, `${how}: a base inside the first tree`);
    t.same(await create('other', other), {}, `${how}: the second tree itself`);
    t.same(await create('vialink', path.join(e.dir, 'allowed-link/in')), {}, `${how}: a path through a link that resolves inside`);
    t.match(await create('out', outside), { Err: /is outside the allowed base directories .*choose a directory inside one of them/ }, `${how}: a base outside`);
    t.match(await create('esc', path.join(e.dir, 'allowed/escape')), { Err: /is outside the allowed base directories/ }, `${how}: a symlink inside pointing out`);
    t.match(await create('up', path.join(e.dir, 'allowed/in/../../outside')), { Err: /is outside the allowed base directories/ }, `${how}: .. out of the tree`);
    t.match(await create('root', '/'), { Err: /is outside the allowed base directories/ }, `${how}: the host root`);
    t.match((await call(socket, '/VolumeDriver.List', {})).json, { Volumes: [{ Name: 'in' }, { Name: 'other' }, { Name: 'vialink' }] });
    const id = mountId();
    const { Mountpoint } = (await call(socket, '/VolumeDriver.Mount', { Name: 'in', ID: id })).json;
    t.same(fs.readdirSync(Mountpoint), ['a.txt'], `${how}: the allowed volume mounts`);
    t.same((await call(socket, '/VolumeDriver.Unmount', { Name: 'in', ID: id })).json, {});
    daemon.proc.kill('SIGTERM');
    t.equal(await daemon.exited, 0);
  }
});

t.test('a volume whose base is outside the allowed trees of this start (allowed at its Create) is refused at Mount', async (t) => {
  const e = await env(t);
  const first = await e.base('first', { 'a.txt': 'A' });
  const second = await e.base('second');
  const d = await e.open({ allowBases: [first] });
  await d.create({ Name: 'v', Opts: { base: first } });
  await d.close();
  const d2 = await e.open({ allowBases: [second] });
  await t.rejects(d2.mount({ Name: 'v', ID: 'a' }), {
    name: 'DriverError',
    message: new RegExp(`^volume v cannot be mounted: its base ${first} is outside the allowed base directories \\(${second}\\): remove the volume, or ask the administrator to allow it`),
  });
  t.same(await d2.remove({ Name: 'v' }), {}, 'it can still be removed');
});

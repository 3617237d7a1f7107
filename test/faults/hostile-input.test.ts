// Hostile input through the real socket (the protocol server on an
// in-process driver, spoken to as dockerd does): names and mount IDs on
// every verb, bases that try to escape or to add mount options, huge option
// values. None may touch a path outside the state root or the base, nor add
// a mount option: after each, nothing new exists outside the root and the
// mount table holds no mount the test did not ask for.
import t from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { splitOptions } from '../../lib/mountinfo.js';
import { constants, mount as sysMount } from '../../lib/native.js';
import { call, mountId } from '../helpers/client.js';
import { env } from '../helpers/tmp.js';
import { mountTable, serve, snapshot } from '../helpers/faults.js';

type Tap = import('tap').Test;

async function setup(t: Tap) {
  const e = await env(t);
  const d = await e.open();
  const socket = path.join(e.dir, 'x.sock');
  await serve(t, d, socket, e.log.logger);
  const base = await e.base('base', { 'a.txt': 'A' });
  const sentinel = await e.base('sentinel', { 'keep.txt': 'keep' });
  const outside = () => snapshot(e.dir).filter((p) => p !== 'root' && !p.startsWith('root/') && p !== 'x.sock');
  // Mounts this test could have made: anywhere below its scratch directory, or naming it in their source or options
  // (other test files mount concurrently elsewhere, so the whole table is not compared).
  const ours = () => mountTable().filter((m) => m.mountPoint.startsWith(e.dir) || m.source.includes(e.dir) || m.superOptions.includes(e.dir)).length;
  const before = { outside: outside(), mounts: ours(), sentinel: snapshot(sentinel) };
  /** Nothing new outside the root, no extra mount, the sentinel untouched. */
  const untouched = (what: string) => {
    t.same(outside(), before.outside, `${what}: nothing created or deleted outside the state root`);
    t.equal(ours(), before.mounts, `${what}: no extra mount`);
    t.same(snapshot(sentinel), before.sentinel, `${what}: the sentinel directory is untouched`);
  };
  const rpc = async (route: string, body: unknown) => (await call(socket, route, body)).json;
  return { e, d, socket, base, sentinel, untouched, rpc };
}

const NAMES: Array<[string, string]> = [
  ['..', '..'],
  ['../x', '../x'],
  ['a/b', 'a/b'],
  ['/abs', '/etc'],
  ['a NUL byte', 'a\u0000b'],
  ['empty', ''],
  ['10,000 characters', 'x'.repeat(10_000)],
  ['non-ASCII', 'volumé'],
  ['CJK', '卷'],
  ['a dot', '.'],
  ['a leading dash', '-rf'],
  ['a newline', 'a\nb'],
];

t.test('hostile names and mount IDs are refused on every verb with a clear Err, touching nothing', async (t) => {
  const { base, untouched, rpc, d } = await setup(t);
  await d.create({ Name: 'good', Opts: { base } });
  for (const [what, name] of NAMES) {
    const verbs: Array<[string, unknown]> = [
      ['/VolumeDriver.Create', { Name: name, Opts: { base } }],
      ['/VolumeDriver.Get', { Name: name }],
      ['/VolumeDriver.Path', { Name: name }],
      ['/VolumeDriver.Mount', { Name: name, ID: mountId() }],
      ['/VolumeDriver.Unmount', { Name: name, ID: mountId() }],
      ['/VolumeDriver.Remove', { Name: name }],
      ['/VolumeDriver.Mount', { Name: 'good', ID: name }],
      ['/VolumeDriver.Unmount', { Name: 'good', ID: name }],
    ];
    for (const [route, body] of verbs) {
      const r = await rpc(route, body);
      t.match(r, { Err: /^(volume name|mount ID) .*(is empty|characters long; the limit is 128|is not allowed: use letters, digits)/ }, `${what} on ${route} (${JSON.stringify(body).slice(0, 60)})`);
    }
  }
  t.same(await rpc('/VolumeDriver.List', {}), { Volumes: [{ Name: 'good' }] });
  untouched('hostile names');
});

t.test('bases that are not absolute, loop, lie on a pseudo-filesystem or inside the state root are refused at Create', async (t) => {
  const { e, untouched, rpc } = await setup(t);
  const loop = path.join(e.dir, 'loop');
  await fsp.symlink(path.join(e.dir, 'loop2'), loop);
  await fsp.symlink(loop, path.join(e.dir, 'loop2'));
  const view = path.join(e.dir, 'rootview');
  await fsp.mkdir(view);
  await sysMount(e.root, view, 'none', constants.MS_BIND, '');
  const before = snapshot(e.dir).filter((p) => !p.startsWith('root'));
  const cases: Array<[string, string, RegExp]> = [
    ['a comma', ',', /must be an absolute path/],
    ['a colon', ':', /has an empty layer/],
    ['a backslash', '\\', /must be an absolute path/],
    ['a newline', '\n/etc', /must be an absolute path/],
    ['a NUL byte', '/etc\u0000/x', /contains a NUL byte/],
    ['a symlink loop', loop, /cannot be used: ELOOP/],
    ['/proc', '/proc', /is on proc, a kernel pseudo-filesystem/],
    ['/sys', '/sys', /is on sysfs, a kernel pseudo-filesystem/],
    ['the state root', e.root, /is inside ontop's state directory/],
    ['a volume layer inside it', path.join(e.root, 'volumes'), /is inside ontop's state directory/],
    ['a bind mount of the state root', view, /is inside ontop's state directory/],
    ['a dotted path into the state root', `${e.dir}/base/../root/tmp`, /is inside ontop's state directory/],
    ['a file', path.join(e.dir, 'base/a.txt'), /is not a directory/],
    ['a missing path', '/nonexistent/ontop', /does not exist on the host/],
  ];
  for (const [what, base, refusal] of cases) {
    t.match(await rpc('/VolumeDriver.Create', { Name: 'v', Opts: { base } }), { Err: refusal }, what);
  }
  t.match(await rpc('/VolumeDriver.Create', { Name: 'v', Opts: { base: '/etc', upperdir: '/tmp' } }), { Err: /unknown option "upperdir"/ }, 'an extra overlay option as a volume option');
  t.same(await rpc('/VolumeDriver.List', {}), { Volumes: [] });
  t.same(fs.readdirSync(path.join(e.root, 'tmp')), []);
  t.same(snapshot(e.dir).filter((p) => !p.startsWith('root')), before);
  await fsp.rm(loop);
  await fsp.rm(path.join(e.dir, 'loop2'));
  const { umount2 } = await import('../../lib/native.js');
  await umount2(view, constants.MNT_DETACH);
  await fsp.rmdir(view);
  untouched('refused bases');
});

t.test('bases whose paths hold , : \\ newline or look like mount options mount exactly that directory and add no option', async (t) => {
  const { e, sentinel, untouched, rpc } = await setup(t);
  const odd = [`a,upperdir=${sentinel}`, 'b:c', 'd\\e', 'new\nline', ` sp ace,workdir=${sentinel}`, 'lowerdir=x'];
  for (const [i, name] of odd.entries()) {
    const dir = path.join(e.dir, 'odd', name);
    await fsp.mkdir(dir, { recursive: true });
    await fsp.writeFile(path.join(dir, 'which'), name);
    // In base, `:` separates stacked layers: a colon (and a backslash) inside one path is escaped.
    const base = dir.replace(/\\/g, '\\\\').replace(/:/g, '\\:');
    t.same(await rpc('/VolumeDriver.Create', { Name: `odd${i}`, Opts: { base } }), {}, `created over ${JSON.stringify(name)}`);
    const id = mountId();
    const { Mountpoint } = await rpc('/VolumeDriver.Mount', { Name: `odd${i}`, ID: id });
    t.equal(fs.readFileSync(path.join(Mountpoint, 'which'), 'utf8'), name, 'the mount shows exactly that directory');
    fs.writeFileSync(path.join(Mountpoint, 'written'), 'w');
    const entry = mountTable().find((m) => m.mountPoint === Mountpoint)!;
    const opts = splitOptions(entry.superOptions);
    t.match(opts.get('lowerdir'), /^\/proc\/self\/fd\/[0-9]+$/, 'the base reaches the kernel as a descriptor, never as a path to parse');
    t.equal(opts.get('upperdir'), path.join(e.root, 'volumes', `odd${i}`, 'upper'), 'upperdir is the volume\'s own');
    t.equal(opts.get('workdir'), path.join(e.root, 'volumes', `odd${i}`, 'work'), 'workdir is the volume\'s own');
    t.same(await rpc('/VolumeDriver.Unmount', { Name: `odd${i}`, ID: id }), {});
    t.same(fs.readdirSync(dir).sort(), ['which'], 'the base itself is unchanged');
    t.same(await rpc('/VolumeDriver.Remove', { Name: `odd${i}` }), {});
  }
  await fsp.rm(path.join(e.dir, 'odd'), { recursive: true });
  untouched('odd bases');
});

t.test('a base that contains the state root (/) is legitimate: it mounts and reads a file', async (t) => {
  const { e, untouched, rpc } = await setup(t);
  t.same(await rpc('/VolumeDriver.Create', { Name: 'host', Opts: { base: '/' } }), {});
  const id = mountId();
  const { Mountpoint } = await rpc('/VolumeDriver.Mount', { Name: 'host', ID: id });
  t.equal(fs.readFileSync(path.join(Mountpoint, e.dir, 'base/a.txt'), 'utf8'), 'A', 'a file of the host, through the volume');
  t.ok(fs.readFileSync(path.join(Mountpoint, 'etc/passwd'), 'utf8').includes('root:'));
  fs.writeFileSync(path.join(Mountpoint, e.dir, 'base/a.txt'), 'changed');
  t.equal(fs.readFileSync(path.join(e.dir, 'base/a.txt'), 'utf8'), 'A', 'the host file itself is unchanged');
  t.same(await rpc('/VolumeDriver.Unmount', { Name: 'host', ID: id }), {});
  t.same(await rpc('/VolumeDriver.Remove', { Name: 'host' }), {});
  untouched('base=/');
});

t.test('a base swapped for a symlink after Create is refused at Mount, and nothing is mounted', async (t) => {
  const { e, base, sentinel, untouched, rpc } = await setup(t);
  t.same(await rpc('/VolumeDriver.Create', { Name: 'v', Opts: { base } }), {});
  await fsp.rename(base, `${base}.real`);
  await fsp.symlink(sentinel, base);
  const r = await rpc('/VolumeDriver.Mount', { Name: 'v', ID: mountId() });
  t.match(r, { Err: new RegExp(`volume v cannot be mounted: its base ${base} now resolves to ${sentinel} \\(a symlink changed\\)`) });
  await fsp.rm(base);
  await fsp.rename(`${base}.real`, base);
  t.same(await rpc('/VolumeDriver.Remove', { Name: 'v' }), {});
  t.same(fs.readdirSync(path.join(e.root, 'volumes')), []);
  untouched('swapped base');
});

t.test('option values of a megabyte are refused: 413 above the body limit, a clear Err below it', async (t) => {
  const { e, base, socket, untouched, rpc } = await setup(t);
  const huge = await call(socket, '/VolumeDriver.Create', { Name: 'v', Opts: { base: '/' + 'a'.repeat(1024 * 1024) } });
  t.equal(huge.status, 413);
  t.match(huge.json, { Err: /request body exceeds 1048576 bytes/ });
  t.match(await rpc('/VolumeDriver.Create', { Name: 'v', Opts: { base: '/' + 'a'.repeat(900 * 1024) } }), { Err: /option base is longer than 262144 bytes: give a shorter value/ });
  t.match(await rpc('/VolumeDriver.Create', { Name: 'v', Opts: { base, volatile: 'y'.repeat(900 * 1024) } }), { Err: /option volatile is longer than 4096 bytes/ });
  t.match(await rpc('/VolumeDriver.Create', { Name: 'v', Opts: { base: base + '/' + 'x/'.repeat(2000) } }), { Err: /does not exist|the overlay options for this volume are/ });
  t.same(fs.readdirSync(path.join(e.root, 'volumes')), []);
  untouched('huge options');
});

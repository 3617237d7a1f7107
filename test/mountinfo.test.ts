// Mount tables: parsing, octal escapes, option splitting, and finding other
// namespaces that hold a filesystem (against a fake /proc).
import t from 'tap';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import {
  escapeOctal,
  mountsAt,
  otherHolders,
  parseLine,
  parseMountinfo,
  peerGroup,
  readMountinfo,
  splitOptions,
  unescapeOctal,
} from '../lib/mountinfo.js';

const LINE = '62 27 0:52 / /tmp/a\\040b\\012c rw,relatime shared:7 master:2 - overlay ontop rw,lowerdir=/x\\134\\054y,upperdir=/u,workdir=/w';

t.test('a line parses into its fields, with octal escapes undone', async (t) => {
  t.same(parseLine(LINE), {
    id: 62,
    parentId: 27,
    device: '0:52',
    root: '/',
    mountPoint: '/tmp/a b\nc',
    optional: ['shared:7', 'master:2'],
    fstype: 'overlay',
    source: 'ontop',
    superOptions: 'rw,lowerdir=/x\\,y,upperdir=/u,workdir=/w',
  });
  t.same(peerGroup(parseLine(LINE)!), '7');
  t.equal(peerGroup(parseLine('1 0 0:1 / / rw - ext4 /dev/vda rw')!), undefined);
});

t.test('blank and malformed lines are skipped', async (t) => {
  t.equal(parseLine(''), undefined);
  t.equal(parseLine('1 2 3 4 5 6 7 8 9 10'), undefined, 'no separator');
  t.equal(parseLine('1 0 0:1 / / rw - ext4'), undefined, 'too few fields after the separator');
  t.equal(parseMountinfo(`\n${LINE}\ngarbage\n`).length, 1);
});

t.test('escapeOctal and unescapeOctal are inverses for space, tab, newline and backslash', async (t) => {
  const s = 'a b\tc\nd\\e,f:g';
  t.equal(escapeOctal(s), 'a\\040b\\011c\\012d\\134e,f:g');
  t.equal(unescapeOctal(escapeOctal(s)), s);
});

t.test('mountsAt finds exactly the mounts on a path, bottom first, not those below or beside it', async (t) => {
  const table = [
    '1 0 0:1 / / rw - ext4 /dev/vda rw',
    '2 1 0:50 / /v/merged rw - overlay ontop rw,upperdir=/a',
    '3 1 0:51 / /v/merged/sub rw - tmpfs x rw',
    '4 2 0:52 / /v/merged rw - overlay ontop rw,upperdir=/b',
    '5 1 0:53 / /v/merged2 rw - tmpfs x rw',
  ].join('\n');
  t.same(mountsAt(table, '/v/merged').map((e) => e.id), [2, 4]);
  t.same(mountsAt(table, '/nowhere'), []);
  t.same(mountsAt('9 1 0:1 / /a\\040b rw - tmpfs x rw', '/a b').map((e) => e.id), [9]);
});

t.test('splitOptions honours backslash escapes, so an escaped comma stays in its value', async (t) => {
  const o = splitOptions('rw,lowerdir=/x\\,upperdir=/etc\\:y\\\\z,upperdir=/u,xino');
  t.equal(o.get('lowerdir'), '/x,upperdir=/etc:y\\z');
  t.equal(o.get('upperdir'), '/u');
  t.equal(o.get('xino'), '');
  t.equal(o.get('rw'), '');
  t.equal(splitOptions('a=1\\').get('a'), '1\\', 'a trailing backslash is kept');
});

t.test('readMountinfo reads this process table, which holds the root mount', async (t) => {
  t.ok(parseMountinfo(await readMountinfo()).some((e) => e.mountPoint === '/'));
});

t.test('otherHolders finds the device in other namespaces, once per namespace, skipping ours, vanished processes and propagated copies', async (t) => {
  const proc = await fsp.mkdtemp(path.join(os.tmpdir(), 'ontop-proc-'));
  t.teardown(() => fsp.rm(proc, { recursive: true, force: true }));
  const ns = async (pid: string, nsName: string | undefined, table?: string): Promise<void> => {
    await fsp.mkdir(path.join(proc, pid, 'ns'), { recursive: true });
    if (nsName !== undefined) await fsp.symlink(nsName, path.join(proc, pid, 'ns', 'mnt'));
    if (table !== undefined) await fsp.writeFile(path.join(proc, pid, 'mountinfo'), table);
  };
  const m = (dev: string, point: string, opt = ''): string => `1 0 ${dev} / ${point} rw ${opt}${opt ? ' ' : ''}- overlay ontop rw`;
  await ns('self', 'mnt:[1]', m('0:9', '/v'));
  await ns('10', 'mnt:[1]', m('0:9', '/v')); // our namespace
  await ns('11', 'mnt:[2]', m('0:9', '/data')); // a container's bind: a use
  await ns('12', 'mnt:[2]', m('0:9', '/data')); // same namespace again: reported once
  await ns('13', undefined); // vanished or a kernel thread
  await ns('14', 'mnt:[3]'); // namespace link but the table is gone
  await ns('15', 'mnt:[4]', m('0:9', '/v', 'master:7')); // a slave copy our unmount removes
  await ns('16', 'mnt:[5]', m('0:9', '/v', 'shared:7')); // a peer copy, likewise
  await ns('17', 'mnt:[6]', m('0:8', '/v')); // another device
  await ns('18', 'mnt:[7]', m('0:9', '/v', 'master:99')); // a copy of another group: counted
  await ns('19', 'mnt:[8]', m('0:9', '/plugins/x/propagated-mount/v', 'shared:7')); // a peer at another path: propagation too
  await fsp.mkdir(path.join(proc, 'sys'));
  const holders = await otherHolders('0:9', '7', proc);
  t.same(holders, [
    { pid: 11, namespace: 'mnt:[2]', mountPoint: '/data' },
    { pid: 18, namespace: 'mnt:[7]', mountPoint: '/v' },
  ]);
  t.same((await otherHolders('0:9', undefined, proc)).map((h) => h.pid), [11, 15, 16, 18, 19], 'without a peer group every copy counts');
});

// The addon's new mount API call and btrfs ioctls, against the real kernel:
// errors name the step, the parameter and the filesystem's own words; btrfs
// calls elsewhere fail with ENOTTY. Their successes: shapes.test.ts and
// btrfs.test.ts.
import t from 'tap';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { btrfsId, fsMount, qgroupLimit, snapshot, subvolCreate, subvolDestroy } from '../lib/native.js';

const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'ontop-native-shapes-'));
t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
for (const d of ['lower', 'upper', 'work', 'merged']) fs.mkdirSync(path.join(dir, d));

t.test('fsMount names the failing step, the parameter, and what the filesystem logged', async (t) => {
  await t.rejects(fsMount('no-such-fs', dir, []), { code: 'ENODEV', syscall: 'fsopen', path: dir });
  await t.rejects(fsMount('overlay', dir, [['lowerdir+', path.join(dir, 'missing')]]), { code: 'ENOENT', syscall: 'fsconfig', key: 'lowerdir+' });
  await t.rejects(fsMount('overlay', dir, [['colour', 'red']]), { code: 'EINVAL', syscall: 'fsconfig', key: 'colour', message: /fsconfig .* \(.*colour.*\)$/ });
  await t.rejects(fsMount('tmpfs', path.join(dir, 'missing'), [['size', '1m']]), { code: 'ENOENT', syscall: 'move_mount' });
  await t.rejects(fsMount('overlay', path.join(dir, 'merged'), [['lowerdir+', path.join(dir, 'lower')], ['upperdir', path.join(dir, 'upper')]]), {
    code: 'EINVAL',
    syscall: 'fsconfig',
  }, 'FSCONFIG_CMD_CREATE without a workdir');
  t.equal(fs.readdirSync(path.join(dir, 'merged')).length, 0, 'nothing mounted');
});

t.test('fsMount and the btrfs calls check their arguments before any native call', async (t) => {
  t.throws(() => fsMount('overlay', dir, [['a', 5 as unknown as string]]), { name: 'TypeError', message: /"value" argument must be of type string/ });
  t.throws(() => fsMount('overlay', dir, [['a\0', 'b']]), { name: 'TypeError', message: /"key" argument must not contain null bytes/ });
  t.throws(() => snapshot('', dir, 'x'), { name: 'TypeError', message: /"source" argument must not be empty/ });
  t.throws(() => qgroupLimit(dir, -1), { name: 'TypeError', message: /"bytes" argument must be a non-negative integer/ });
  t.throws(() => subvolCreate(dir, 5 as unknown as string), { name: 'TypeError' });
  t.throws(() => subvolDestroy(5 as unknown as string, 'x'), { name: 'TypeError' });
  t.throws(() => btrfsId(null as unknown as string), { name: 'TypeError' });
});

t.test('btrfs calls off btrfs fail with ENOTTY, and with the open that failed when the path is missing', async (t) => {
  const missing = path.join(dir, 'missing');
  await t.rejects(subvolCreate(dir, 'sv'), { code: 'ENOTTY', syscall: 'ioctl', path: `${dir}/sv` });
  await t.rejects(subvolCreate(missing, 'sv'), { code: 'ENOENT', syscall: 'open' });
  await t.rejects(snapshot(path.join(dir, 'lower'), dir, 'snap'), { code: 'ENOTTY', syscall: 'ioctl' });
  await t.rejects(snapshot(missing, dir, 'snap'), { code: 'ENOENT', syscall: 'open' });
  await t.rejects(snapshot(dir, missing, 'snap'), { code: 'ENOENT', syscall: 'open' });
  await t.rejects(subvolDestroy(dir, 'lower'), { code: 'ENOTTY', syscall: 'ioctl' });
  await t.rejects(subvolDestroy(missing, 'x'), { code: 'ENOENT', syscall: 'open' });
  await t.rejects(qgroupLimit(dir, 4096), { code: 'ENOTTY', syscall: 'ioctl', path: dir });
  await t.rejects(qgroupLimit(missing, 4096), { code: 'ENOENT', syscall: 'open' });
  await t.rejects(btrfsId(dir), { code: 'ENOTTY', syscall: 'ioctl', path: dir });
  await t.rejects(btrfsId(missing), { code: 'ENOENT', syscall: 'open' });
  t.same(fs.readdirSync(dir).sort(), ['lower', 'merged', 'upper', 'work']);
});

t.test('a subvolume name longer than the ioctl takes is refused, never truncated', async (t) => {
  const long = 'x'.repeat(5000);
  await t.rejects(subvolCreate(dir, long), { code: 'ENAMETOOLONG', syscall: 'ioctl' });
  await t.rejects(snapshot(dir, dir, long), { code: 'ENAMETOOLONG', syscall: 'ioctl' });
  await t.rejects(subvolDestroy(dir, long), { code: 'ENAMETOOLONG', syscall: 'ioctl' });
});

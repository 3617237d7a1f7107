// Volume options: parsing, and resolving the base to a real host directory.
import t from 'tap';
import type { Test } from 'tap';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { BaseContext } from '../lib/options.js';
import fs from 'node:fs';
import { MAX_BASE_LENGTH, MAX_OPTION_LENGTH, isInside, openBase, parseOptions, parseSize, resolveBase, splitLayers, tmpfsSize } from '../lib/options.js';

async function tree(t: Test): Promise<string> {
  const dir = await fsp.realpath(await fsp.mkdtemp(path.join(os.tmpdir(), 'ontop-opts-')));
  t.teardown(() => fsp.rm(dir, { recursive: true, force: true }));
  return dir;
}

async function ctxFor(root: string, over: Partial<BaseContext> = {}): Promise<BaseContext> {
  await fsp.mkdir(root, { recursive: true });
  const st = await fsp.stat(root);
  return { hostRoot: '/', stateRoot: root, stateRootId: { dev: st.dev, ino: st.ino }, allowBases: [], ...over };
}

t.test('base is required, with a message showing how to give it', async (t) => {
  t.throws(() => parseOptions(null), { name: 'DriverError', message: /option "base" is required: docker volume create -d ontop -o base=/ });
  t.throws(() => parseOptions(undefined), { message: /required/ });
  t.throws(() => parseOptions({}), { message: /required/ });
  t.throws(() => parseOptions({ base: '' }), { message: /required/ });
});

t.test('volatile accepts true/false/yes/no/1/0 in any case and defaults to false', async (t) => {
  t.same(parseOptions({ base: '/x' }), { base: '/x', layers: ['/x'], volatile: false, upper: 'disk' });
  for (const v of ['true', 'TRUE', 'Yes', '1']) t.equal(parseOptions({ base: '/x', volatile: v }).volatile, true, v);
  for (const v of ['false', 'False', 'NO', '0']) t.equal(parseOptions({ base: '/x', volatile: v }).volatile, false, v);
  t.throws(() => parseOptions({ base: '/x', volatile: 'maybe' }), { message: /volatile="maybe" is not understood: use true or false/ });
});

t.test('an unknown option is refused, listing the known ones', async (t) => {
  t.throws(() => parseOptions({ base: '/x', sise: '1G' }), { message: 'unknown option "sise": the known options are base, volatile, upper, size' });
});

t.test('options that are not string pairs, or values over 4096 bytes, are refused', async (t) => {
  t.throws(() => parseOptions(['base=/x']), { message: /key=value/ });
  t.throws(() => parseOptions('base=/x'), { message: /key=value/ });
  t.throws(() => parseOptions({ base: 5 }), { message: 'option base must be a string' });
  t.throws(() => parseOptions({ base: '/x', upper: '/' + 'a'.repeat(MAX_OPTION_LENGTH) }), { message: /option upper is longer than 4096 bytes/ });
  t.throws(() => parseOptions({ base: '/' + 'a'.repeat(MAX_BASE_LENGTH) }), { message: /option base is longer than 262144 bytes/ });
});

t.test('isInside compares whole path components', async (t) => {
  t.ok(isInside('/a/b', '/a'));
  t.ok(isInside('/a', '/a'));
  t.notOk(isInside('/ab', '/a'));
  t.ok(isInside('/anything', '/'));
});

t.test('a base resolves to its real path; relative, missing, file, looping and NUL bases are refused', async (t) => {
  const dir = await tree(t);
  const ctx = await ctxFor(path.join(dir, 'state'));
  await fsp.mkdir(path.join(dir, 'real'));
  await fsp.symlink(path.join(dir, 'real'), path.join(dir, 'link'));
  await fsp.writeFile(path.join(dir, 'file'), 'x');
  await fsp.symlink('loop', path.join(dir, 'loop'));
  t.match(await resolveBase(path.join(dir, 'link'), ctx), { host: path.join(dir, 'real'), local: path.join(dir, 'real'), owner: { uid: 0, gid: 0 } });
  await t.rejects(resolveBase('srv/x', ctx), { name: 'DriverError', message: /must be an absolute path/ });
  await t.rejects(resolveBase(path.join(dir, 'missing'), ctx), { message: /does not exist on the host: create the directory first/ });
  await t.rejects(resolveBase(path.join(dir, 'file', 'sub'), ctx), { message: /is not a directory/ });
  await t.rejects(resolveBase(path.join(dir, 'file'), ctx), { message: /is not a directory/ });
  await t.rejects(resolveBase(path.join(dir, 'loop'), ctx), { message: /cannot be used: ELOOP/ });
  await t.rejects(resolveBase('/x\0y', ctx), { message: /NUL byte/ });
});

t.test('the state root, anything inside it, or a path reaching it through a symlink is refused; a base containing it is fine', async (t) => {
  const dir = await tree(t);
  const state = path.join(dir, 'state');
  const ctx = await ctxFor(state);
  await fsp.mkdir(path.join(state, 'volumes'), { recursive: true });
  await fsp.symlink(state, path.join(dir, 'to-state'));
  await t.rejects(resolveBase(state, ctx), { message: /inside ontop's state directory/ });
  await t.rejects(resolveBase(path.join(state, 'volumes'), ctx), { message: /inside ontop's state directory/ });
  await t.rejects(resolveBase(path.join(dir, 'to-state', 'volumes'), ctx), { message: /inside ontop's state directory/ });
  // The same directory seen through a bind mount is caught by device and inode.
  const other = { ...ctx, stateRoot: '/nonexistent-view' };
  await t.rejects(resolveBase(path.join(state, 'volumes'), other), { message: /inside ontop's state directory/ });
  t.equal((await resolveBase(dir, ctx)).host, dir);
  t.equal((await resolveBase('/', ctx)).host, '/');
});

t.test('allowBases limits bases to their trees, after resolving symlinks of both', async (t) => {
  const dir = await tree(t);
  await fsp.mkdir(path.join(dir, 'allowed', 'in'), { recursive: true });
  await fsp.mkdir(path.join(dir, 'outside'));
  await fsp.symlink(path.join(dir, 'allowed'), path.join(dir, 'allowed-link'));
  await fsp.symlink(path.join(dir, 'outside'), path.join(dir, 'allowed', 'escape'));
  const ctx = await ctxFor(path.join(dir, 'state'), { allowBases: [path.join(dir, 'allowed-link'), '/nonexistent-allowed'] });
  t.equal((await resolveBase(path.join(dir, 'allowed', 'in'), ctx)).host, path.join(dir, 'allowed', 'in'));
  await t.rejects(resolveBase(path.join(dir, 'outside'), ctx), { message: /outside the allowed base directories/ });
  await t.rejects(resolveBase(path.join(dir, 'allowed', 'escape'), ctx), { message: /outside the allowed/ });
});

t.test('with a hostRoot, symlinks resolve inside it: an absolute link or ".." never leaves the host', async (t) => {
  const host = await tree(t);
  await fsp.mkdir(path.join(host, 'etc'));
  await fsp.mkdir(path.join(host, 'srv', 'site'), { recursive: true });
  await fsp.symlink('/etc', path.join(host, 'srv', 'abs'));
  await fsp.symlink('../../../../../etc', path.join(host, 'srv', 'rel'));
  await fsp.symlink('site', path.join(host, 'srv', 'here'));
  await fsp.symlink('/srv/l2', path.join(host, 'srv', 'l1'));
  await fsp.symlink('/srv/l1', path.join(host, 'srv', 'l2'));
  const ctx = await ctxFor(path.join(host, 'state'), { hostRoot: host });
  const hostOf = async (p: string): Promise<string> => {
    const opened = await openBase(p, ctx);
    fs.closeSync(opened.fd);
    return opened.host;
  };
  t.equal(await hostOf('/srv/abs'), '/etc');
  t.equal(await hostOf('/srv/rel'), '/etc');
  t.equal(await hostOf('/srv/./here/'), '/srv/site');
  t.equal(await hostOf('/../..'), '/');
  await t.rejects(hostOf('/srv/l1'), { code: 'ELOOP' });
  t.match(await resolveBase('/srv/abs', ctx), { host: '/etc', local: path.join(host, 'etc') });
  await t.rejects(resolveBase('/srv/missing', ctx), { message: /does not exist/ });
});

t.test('base splits into layers, top first, at unescaped colons; \: and \\ escape; any other backslash stays', async (t) => {
  t.same(splitLayers('/srv/a'), ['/srv/a'], 'a single base is read as before');
  t.same(splitLayers('/top:/mid:/bottom'), ['/top', '/mid', '/bottom']);
  t.same(splitLayers('/a\\:b:/c\\\\:/d\\e'), ['/a:b', '/c\\', '/d\\e']);
  t.same(splitLayers('/end\\'), ['/end\\'], 'a trailing backslash stays');
  t.throws(() => splitLayers(':/a'), { message: /has an empty layer \(layer 1 of 2\): separate layers with one colon, top first, and write a colon inside a path as \\:/ });
});

t.test('size takes bytes or k/m/g/t (powers of 1024, any case) and refuses zero, negatives, fractions, units it does not know, and absurd sizes', async (t) => {
  t.equal(parseSize('4096'), 4096);
  t.equal(parseSize('512k'), 512 * 1024);
  t.equal(parseSize('64M'), 64 * 2 ** 20);
  t.equal(parseSize('10g'), 10 * 2 ** 30);
  t.equal(parseSize('1024t'), 2 ** 50, 'the largest');
  for (const bad of ['', 'm', '1.5g', '-1', '1 g', '1gb', '10x', '0x10', '99999999999999999']) t.throws(() => parseSize(bad), { message: /is not understood|more than/ }, bad);
  t.throws(() => parseSize('0'), { message: /less than 4096 bytes/ });
  t.throws(() => parseSize('4095'), { message: /less than 4096 bytes/ });
  t.throws(() => parseSize('1025t'), { message: /more than 1t \* 1024/ });
  t.same(parseOptions({ base: '/x', size: '8m' }).size, 8 * 2 ** 20);
});

t.test('upper=tmpfs implies volatile, refuses volatile=false, and its size defaults to a tenth of memory (whole pages) and may not exceed it', async (t) => {
  t.match(parseOptions({ base: '/x', upper: 'tmpfs' }), { upper: 'tmpfs', volatile: true });
  t.match(parseOptions({ base: '/x', upper: 'tmpfs', volatile: 'yes' }), { upper: 'tmpfs', volatile: true });
  t.throws(() => parseOptions({ base: '/x', upper: 'tmpfs', volatile: 'no' }), { message: /cannot be volatile=false/ });
  t.equal(tmpfsSize(undefined, 10 * 2 ** 30), Math.floor((10 * 2 ** 30 * 0.1) / 4096) * 4096);
  t.equal(tmpfsSize(undefined, 4096), 4096, 'never less than a page');
  t.equal(tmpfsSize(2 ** 20, 2 ** 30), 2 ** 20);
  t.throws(() => tmpfsSize(2 ** 31, 2 ** 30), { message: /more than this machine's memory/ });
});

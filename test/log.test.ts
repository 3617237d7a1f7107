// The JSON-lines logger: levels, fields, error flattening, default writer.
import t from 'tap';
import { createLogger, errorFields, isLevel } from '../lib/log.js';

t.test('logger writes one JSON line per record at or above its level', async (t) => {
  const lines: string[] = [];
  const log = createLogger('info', (l) => lines.push(l));
  log.debug('hidden');
  log.info('shown', { volume: 'v' });
  log.warn('warned');
  log.error('failed');
  t.equal(lines.length, 3);
  const rec = JSON.parse(lines[0]!);
  t.match(rec, { level: 'info', msg: 'shown', volume: 'v' });
  t.equal(new Date(rec.time).toISOString(), rec.time, 'time is RFC 3339');
  t.ok(lines.every((l) => l.endsWith('\n') && !l.slice(0, -1).includes('\n')), 'one line each');
  log.level = 'debug';
  log.debug('now shown');
  t.equal(lines.length, 4);
  t.ok(log.enabled('debug'));
});

t.test('isLevel accepts exactly the four levels', async (t) => {
  for (const l of ['debug', 'info', 'warn', 'error']) t.ok(isLevel(l), l);
  for (const l of ['trace', 'INFO', '']) t.notOk(isLevel(l), l);
});

t.test('errorFields carries code, errno, syscall and path, and a stack only when asked', async (t) => {
  const e = Object.assign(new Error('EBUSY: busy'), { code: 'EBUSY', errno: -16, syscall: 'umount2', path: '/m' });
  t.same(errorFields(e), { err: 'EBUSY: busy', code: 'EBUSY', errno: -16, syscall: 'umount2', path: '/m' });
  t.match(errorFields(e, true), { stack: /EBUSY: busy/ });
  t.same(errorFields(new Error('plain')), { err: 'plain' });
  t.same(errorFields('a string'), { err: 'a string' });
});

t.test('the default writer goes to stderr', async (t) => {
  const written: string[] = [];
  const original = process.stderr.write;
  process.stderr.write = ((chunk: string) => (written.push(chunk), true)) as typeof process.stderr.write;
  try {
    createLogger().info('to stderr');
  } finally {
    process.stderr.write = original;
  }
  t.match(JSON.parse(written[0]!), { level: 'info', msg: 'to stderr' });
});

// daemon.lock's holder: who holds the state root is written into the lock
// file; a daemon waits (bounded) for an offline command, never for another
// daemon; a command never waits; the flock decides, the record only shapes
// messages. In-process: flock(2) locks belong to open file descriptions, so
// two opens in one process exclude each other as two processes would.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { acquireRoot, isAlive, readHolder, RootBusyError } from '../lib/holder.js';
import { captureLogger, env } from './helpers/tmp.js';
import { scratch } from './helpers/fake-driver.js';

t.test('the holder records pid, command and role in the lock file; readHolder reads it back while it lives', async (t) => {
  const dir = await scratch(t);
  const file = path.join(dir, 'daemon.lock');
  const log = captureLogger();
  const fh = await acquireRoot(file, dir, log.logger, { holder: { command: 'ontop commit web', role: 'command' } });
  t.same(readHolder(file), { pid: process.pid, command: 'ontop commit web', role: 'command' });
  await fh.close();
  const again = await acquireRoot(file, dir, log.logger);
  t.same(readHolder(file), { pid: process.pid, command: 'ontop', role: 'daemon' }, 'a new holder replaces the record (a daemon by default)');
  await again.close();
});

t.test('readHolder ignores what is no live holder: missing, garbage, wrong shape, a dead pid', async (t) => {
  const dir = await scratch(t);
  const file = path.join(dir, 'daemon.lock');
  t.equal(readHolder(file), undefined);
  for (const text of ['', 'not json', '[]', 'null', '{"pid":"1","command":"x","role":"daemon"}', '{"pid":1,"command":"x","role":"other"}', '{"pid":1,"role":"daemon"}']) {
    fs.writeFileSync(file, text);
    t.equal(readHolder(file), undefined, text);
  }
  fs.writeFileSync(file, JSON.stringify({ pid: 2 ** 22 + 1, command: 'ontop', role: 'daemon' }));
  t.equal(readHolder(file), undefined, 'a pid beyond pid_max is no live process');
  t.equal(isAlive(process.pid), true);
  t.equal(isAlive(1), true, 'init lives');
});

t.test('a daemon waits for an offline command, says so once, and starts when the command releases the root', async (t) => {
  const e = await env(t);
  const command = await e.open({ lock: { holder: { command: 'ontop commit web', role: 'command' } } });
  const log = captureLogger();
  let started = false;
  const daemon = e.open({ logger: log.logger, lock: { waitMs: 600_000 } }).then((d) => ((started = true), d));
  await log.until((l) => l.some((x) => x.msg.startsWith('waiting for')));
  const waiting = log.lines.filter((x) => x.msg.startsWith('waiting for'));
  t.equal(waiting.length, 1);
  t.equal(waiting[0]!.msg, `waiting for \`ontop commit web\` (pid ${process.pid}) to release the state root`);
  t.match(waiting[0], { level: 'warn', pid: process.pid, command: 'ontop commit web' });
  t.equal(started, false, 'not started while the command holds the root');
  await command.close();
  const d = await daemon;
  t.ok(d, 'started once the command was done');
  t.same(readHolder(path.join(e.root, 'daemon.lock')), { pid: process.pid, command: 'ontop', role: 'daemon' });
  t.equal(log.lines.filter((x) => x.msg.startsWith('waiting for')).length, 1, 'said once');
});

t.test('a daemon that waited its bound for a command gives up saying who holds the root', async (t) => {
  const e = await env(t);
  await e.open({ lock: { holder: { command: 'ontop clone a b', role: 'command' } } });
  await t.rejects(e.open({ lock: { waitMs: 30, pollMs: 5 } }), {
    name: 'DriverError',
    message: new RegExp(`^\`ontop clone a b\` \\(pid ${process.pid}\\) still holds the state root .* after 0 s: let it finish \\(or stop it\\), then start ontop again$`),
  });
});

t.test('a daemon never waits for another daemon, nor a command for anyone', async (t) => {
  const e = await env(t);
  await e.open({ lock: { holder: { command: 'ontop --name a', role: 'daemon' } } });
  const err = await e.open({ lock: { waitMs: 600_000 } }).catch((x: unknown) => x);
  t.type(err, RootBusyError);
  t.match(err, { message: `another ontop process is using the state root ${fs.realpathSync(e.root)}: \`ontop --name a\` (pid ${process.pid})`, holder: { role: 'daemon' } });
  const cmd = await e.open({ lock: { holder: { command: 'ontop ls', role: 'command' } } }).catch((x: unknown) => x);
  t.match(cmd, { holder: { command: 'ontop --name a' } });
});

t.test('a holder that says nothing (an older ontop) is waited for briefly, then refused as before', async (t) => {
  const dir = await scratch(t);
  const file = path.join(dir, 'daemon.lock');
  const log = captureLogger();
  const first = await acquireRoot(file, dir, log.logger);
  await first.truncate(0);
  await t.rejects(acquireRoot(file, dir, log.logger, { waitMs: 20, pollMs: 5 }), { message: `another ontop process is using the state root ${dir}`, holder: undefined });
  await t.rejects(acquireRoot(file, dir, log.logger, { holder: { command: 'ontop ls', role: 'command' } }), { holder: undefined });
  t.same(log.lines, [], 'nothing logged: nobody to name');
  await first.close();
});

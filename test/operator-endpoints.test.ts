// The /Ontop.* endpoints and their client: each reaches its Operator method
// with a typed request; replies are JSON lines (progress, then the result or
// {"Err"}); bad requests are plain 4xx replies; a socket nobody answers on is
// NoDaemonError. Against a fake driver and hand-written servers.
import t from 'tap';
import http from 'node:http';
import path from 'node:path';
import { connectHint, NoDaemonError, RemoteOperator } from '../lib/client.js';
import { DriverError } from '../lib/errors.js';
import { OPERATOR_CONTENT_TYPE, type Operator } from '../lib/operator.js';
import { call } from './helpers/client.js';
import { fakeDriver, scratch, start } from './helpers/fake-driver.js';

function operatorDriver(calls: Array<[string, unknown]>) {
  const op: Operator = {
    info: async () => ({ name: 'ontop', root: '/r', pid: 1, version: '0' }),
    ls: async () => ({ volumes: [] }),
    diff: async (a) => (calls.push(['diff', a]), { changes: [{ kind: 'A', path: '/x' }] }),
    reset: async (a) => {
      calls.push(['reset', a]);
      if (a.name === 'used') throw new DriverError('volume used is in use by 2 mounts; stop its containers first');
      if (a.name === 'boom') throw new Error('unexpected');
      return { name: a.name };
    },
    commit: async (a, onProgress) => {
      calls.push(['commit', a]);
      if (a.name === 'late') {
        onProgress({ files: 1, bytes: 1 });
        throw new Error('disk on fire');
      }
      // Three at once: only the first is sent, the others fall within PROGRESS_EVERY_MS.
      for (let i = 1; i <= 3; i++) onProgress({ files: i, bytes: i * 10, extra: 'dropped' } as never);
      return { name: a.name, base: '/b', dryRun: a.dryRun === true, changes: [], progress: { files: 3, bytes: 30 } };
    },
    clone: async (a, onProgress) => {
      calls.push(['clone', a]);
      onProgress?.({ files: 1, bytes: 1 });
      return { name: a.name, source: a.source, base: '/b', volatile: false, progress: { files: 1, bytes: 1 } };
    },
  };
  return Object.assign(fakeDriver(), op);
}

t.test('every endpoint reaches its Operator method and the client gets the result, progress on the way', async (t) => {
  const calls: Array<[string, unknown]> = [];
  const s = await start(t, { driver: operatorDriver(calls) });
  const c = new RemoteOperator(s.socketPath);
  t.same(await c.info(), { name: 'ontop', root: '/r', pid: 1, version: '0' });
  t.same(await c.ls(), { volumes: [] });
  t.same(await c.diff({ name: 'v' }), { changes: [{ kind: 'A', path: '/x' }] });
  t.same(await c.reset({ name: 'v' }), { name: 'v' });
  const progress: unknown[] = [];
  t.match(await c.commit({ name: 'v', dryRun: true }, (p) => progress.push(p)), { dryRun: true });
  t.same(progress, [{ files: 1, bytes: 10 }], 'one progress line for three calls at once; only files and bytes');
  t.match(await c.clone({ source: 'v', name: 'w', volatile: 'true' }), { name: 'w', source: 'v' }, 'progress without a listener is fine');
  await c.commit({ name: 'v' });
  await c.clone({ source: 'v', name: 'x' });
  t.same(calls, [
    ['diff', { name: 'v' }],
    ['reset', { name: 'v' }],
    ['commit', { name: 'v', dryRun: true }],
    ['clone', { source: 'v', name: 'w', volatile: 'true' }],
    ['commit', { name: 'v', dryRun: false }],
    ['clone', { source: 'v', name: 'x' }],
  ]);
  const r = await call(s.socketPath, '/Ontop.Commit', { name: 'v' });
  t.equal(r.headers['content-type'], OPERATOR_CONTENT_TYPE);
  t.same(
    r.text.trim().split('\n').map((l) => Object.keys(JSON.parse(l))[0]),
    ['progress', 'result'],
    'JSON lines: progress, then the result',
  );
});

t.test('a refusal is an {"Err"} line (a DriverError for the client); an unexpected failure is one too, and logged', async (t) => {
  const calls: Array<[string, unknown]> = [];
  const s = await start(t, { driver: operatorDriver(calls) });
  const c = new RemoteOperator(s.socketPath);
  await t.rejects(c.reset({ name: 'used' }), new DriverError('volume used is in use by 2 mounts; stop its containers first'));
  await t.rejects(c.reset({ name: 'boom' }), { name: 'DriverError', message: /\(HTTP 500\): internal error in Ontop.Reset: unexpected; see the ontop log$/ });
  t.ok(s.lines.some((l) => l.level === 'error' && l.msg === 'call failed unexpectedly' && l.verb === 'Ontop.Reset' && l.status === 500));
  const progress: unknown[] = [];
  await t.rejects(c.commit({ name: 'late' }, (p) => progress.push(p)), new DriverError('internal error in Ontop.Commit: disk on fire; see the ontop log'));
  t.same(progress, [{ files: 1, bytes: 1 }], 'after progress was sent, the failure is an {"Err"} line');
  t.ok(s.lines.some((l) => l.level === 'error' && l.msg === 'call failed unexpectedly' && l.verb === 'Ontop.Commit' && l.status === 200));
  t.ok(s.lines.some((l) => l.level === 'debug' && l.msg === 'call refused' && l.name === 'used'));
});

t.test('a request of the wrong shape is a plain 400 and reaches no method', async (t) => {
  const calls: Array<[string, unknown]> = [];
  const s = await start(t, { driver: operatorDriver(calls) });
  for (const [p, body, msg] of [
    ['/Ontop.Diff', {}, /name must be a string, got nothing/],
    ['/Ontop.Reset', { name: 3 }, /name must be a string, got a number/],
    ['/Ontop.Commit', { name: 'v', dryRun: 'yes' }, /dryRun must be a boolean, got a string/],
    ['/Ontop.Clone', { source: 'v', name: 'w', volatile: true }, /volatile must be a string/],
    ['/Ontop.Clone', '[1]', /request body must be a JSON object/],
  ] as const) {
    const r = await call(s.socketPath, p, body);
    t.equal(r.status, 400, p);
    t.match(r.json.Err, msg);
  }
  await t.rejects(new RemoteOperator(s.socketPath).call('/Ontop.Diff', { name: 1 }), { name: 'DriverError', message: /refused the call \(HTTP 400\): name must be a string/ });
  t.same(calls, []);
});

t.test('a driver without the operator’s verbs answers 404 on /Ontop.*', async (t) => {
  const s = await start(t);
  const r = await call(s.socketPath, '/Ontop.Info', {});
  t.equal(r.status, 404);
  t.match(r.json.Err, /ontop serves \/Plugin.Activate, \/VolumeDriver.\* and \/Ontop.\*/);
});

t.test('the client: no socket or a refused one is NoDaemonError; other failures say what happened', async (t) => {
  const dir = await scratch(t);
  const missing = path.join(dir, 'none.sock');
  await t.rejects(new RemoteOperator(missing).info(), new NoDaemonError(missing, 'ENOENT'));
  await t.rejects(new RemoteOperator('/etc/hostname').info(), { message: /cannot talk to the daemon on \/etc\/hostname: connect ECONNREFUSED|ENOTSOCK|ECONNREFUSED/ });
  t.equal(connectHint('EACCES'), ": run it as root, or as a member of the socket's group (--socket-group)");
  t.equal(connectHint('ENOTDIR'), '');
  await t.rejects(new RemoteOperator('/etc/hostname/x').info(), { message: /^cannot talk to the daemon on \/etc\/hostname\/x: connect ENOTDIR/ });

  // Hand-written servers: what a broken or foreign peer may answer.
  const serve = async (handler: http.RequestListener): Promise<string> => {
    const sock = path.join(dir, `s${Math.random().toString(16).slice(2, 8)}.sock`);
    const server = http.createServer(handler);
    await new Promise<void>((r) => server.listen(sock, r));
    t.teardown(() => new Promise<void>((r) => server.close(() => r())));
    return sock;
  };
  const lines = (body: string) => (_req: http.IncomingMessage, res: http.ServerResponse) => {
    res.writeHead(200, { 'Content-Type': OPERATOR_CONTENT_TYPE });
    res.end(body);
  };
  await t.rejects(new RemoteOperator(await serve(lines('{"progress":{"files":1,"bytes":1}}\n'))).info(), { message: /closed the connection before answering/ });
  await t.rejects(new RemoteOperator(await serve(lines('not json\n'))).info(), { message: /sent a line that is not JSON: not json/ });
  t.same(await new RemoteOperator(await serve(lines('\n{"result":{"a":1}}'))).info(), { a: 1 }, 'a last line without a newline counts');
  const plain = (status: number, body: string) => (_req: http.IncomingMessage, res: http.ServerResponse) => {
    res.writeHead(status);
    res.end(body);
  };
  await t.rejects(new RemoteOperator(await serve(plain(500, 'oops'))).info(), { name: 'DriverError', message: /refused the call \(HTTP 500\): oops$/ });
  await t.rejects(new RemoteOperator(await serve(plain(404, '{"Err":"unknown path"}'))).info(), { message: /\(HTTP 404\): unknown path$/ });
  const cut = (_req: http.IncomingMessage, res: http.ServerResponse) => {
    res.writeHead(200, { 'Content-Type': OPERATOR_CONTENT_TYPE });
    res.write('{"progress":{"files":1,"bytes":1}}\n', () => res.socket?.destroy());
  };
  await t.rejects(new RemoteOperator(await serve(cut)).info(), Error);
});

t.test('an operator call in flight when the server stops is still answered, on a connection marked to close', async (t) => {
  let release!: () => void;
  let entered!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const inside = new Promise<void>((r) => (entered = r));
  const driver = Object.assign(operatorDriver([]), {
    diff: async () => {
      entered();
      await gate;
      return { changes: [] };
    },
  });
  const s = await start(t, { driver });
  const reply = call(s.socketPath, '/Ontop.Diff', { name: 'v' });
  await inside;
  const closed = s.close(60_000);
  release();
  const r = await reply;
  t.equal(r.headers.connection, 'close');
  t.same(JSON.parse(r.text), { result: { changes: [] } });
  await closed;
});

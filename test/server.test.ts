// The protocol server against a fake driver: routes, request validation,
// error mapping, limits, keep-alive, the socket file's life cycle, shutdown.
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { DriverError } from '../lib/errors.js';
import { PLUGIN_CONTENT_TYPE } from '../lib/protocol.js';
import { KEEP_ALIVE_TIMEOUT_MS, MAX_BODY_BYTES, ServerStartError, startServer } from '../lib/server.js';
import { call, mountId } from './helpers/client.js';
import { captureLogger, fakeDriver, raw, scratch, start } from './helpers/fake-driver.js';

const ID = mountId();

t.test('Plugin.Activate with an empty body implements VolumeDriver, with the plugin content type', async (t) => {
  const s = await start(t);
  const r = await call(s.socketPath, '/Plugin.Activate');
  t.equal(r.status, 200);
  t.equal(r.headers['content-type'], PLUGIN_CONTENT_TYPE);
  t.same(r.json, { Implements: ['VolumeDriver'] });
});

t.test('every VolumeDriver route reaches its driver method with a typed request and returns its reply', async (t) => {
  const s = await start(t);
  const sock = s.socketPath;
  t.same((await call(sock, '/VolumeDriver.Create', { Name: 'v', Opts: { base: '/srv/x' } })).json, {});
  t.same((await call(sock, '/VolumeDriver.Create', { Name: 'w', Opts: null })).json, {});
  t.same((await call(sock, '/VolumeDriver.Create', { Name: 'x' })).json, {});
  t.same((await call(sock, '/VolumeDriver.Mount', { Name: 'v', ID })).json, { Mountpoint: '/fake/v' });
  t.same((await call(sock, '/VolumeDriver.Unmount', { Name: 'v', ID })).json, {});
  t.same((await call(sock, '/VolumeDriver.Path', { Name: 'v' })).json, { Mountpoint: '/fake/v' });
  t.same((await call(sock, '/VolumeDriver.Get', { Name: 'v' })).json, {
    Volume: { Name: 'v', CreatedAt: '1970-01-01T00:00:00.000Z', Status: {} },
  });
  t.same((await call(sock, '/VolumeDriver.List', {})).json, { Volumes: [{ Name: 'v' }, { Name: 'w' }, { Name: 'x' }] });
  t.same((await call(sock, '/VolumeDriver.Capabilities', {})).json, { Capabilities: { Scope: 'local' } });
  t.same((await call(sock, '/VolumeDriver.Remove', { Name: 'x' })).json, {});
  t.same(s.driver.calls, [
    ['create', { Name: 'v', Opts: { base: '/srv/x' } }],
    ['create', { Name: 'w', Opts: null }],
    ['create', { Name: 'x', Opts: null }],
    ['mount', { Name: 'v', ID }],
    ['unmount', { Name: 'v', ID }],
    ['path', { Name: 'v' }],
    ['get', { Name: 'v' }],
    ['list', undefined],
    ['capabilities', undefined],
    ['remove', { Name: 'x' }],
  ]);
});

t.test('requests are accepted with any method, no Content-Type, any Host, and an empty or blank body', async (t) => {
  const s = await start(t);
  for (const method of ['POST', 'GET', 'PUT']) {
    const status = await new Promise<number>((resolve, reject) => {
      http
        .request({ socketPath: s.socketPath, path: '/VolumeDriver.Capabilities', method, headers: { Host: 'anything:1' } }, (res) => {
          res.resume();
          resolve(res.statusCode!);
        })
        .on('error', reject)
        .end();
    });
    t.equal(status, 200, method);
  }
  t.same((await call(s.socketPath, '/VolumeDriver.List')).json, { Volumes: [] }, 'empty body is {}');
  t.same((await call(s.socketPath, '/VolumeDriver.List', ' \n')).json, { Volumes: [] }, 'blank body is {}');
  for (const version of ['1.0', '1.1']) {
    const noHost = await raw(s.socketPath, `POST /Plugin.Activate HTTP/${version}\r\nConnection: close\r\n\r\n`);
    t.equal(noHost.status, 200, `HTTP/${version} without Host`);
    t.same(noHost.json, { Implements: ['VolumeDriver'] });
  }
});

t.test('extra fields are ignored and an Opts key named __proto__ stays a plain option', async (t) => {
  const s = await start(t);
  const r = await call(s.socketPath, '/VolumeDriver.Create', '{"Name":"p","Opts":{"__proto__":"x","a":"b"},"Extra":[1]}');
  t.equal(r.status, 200);
  const opts = s.driver.volumes.get('p')!.opts!;
  t.same(Object.keys(opts), ['__proto__', 'a']);
  t.equal(Object.getPrototypeOf(opts), Object.prototype);
});

t.test('malformed request shapes get 400 with an Err naming the problem, before the driver sees them', async (t) => {
  const s = await start(t);
  const cases: [string, string, RegExp][] = [
    ['/VolumeDriver.Get', '{"Name":', /malformed JSON/],
    ['/VolumeDriver.Get', '[]', /must be a JSON object, got an array/],
    ['/VolumeDriver.Get', 'null', /must be a JSON object, got null/],
    ['/VolumeDriver.Get', '42', /must be a JSON object, got a number/],
    ['/VolumeDriver.Get', '"x"', /must be a JSON object, got a string/],
    ['/VolumeDriver.Get', '{}', /Name must be a string, got nothing/],
    ['/VolumeDriver.Remove', '{"Name":1}', /Name must be a string, got a number/],
    ['/VolumeDriver.Path', '{"Name":null}', /Name must be a string, got null/],
    ['/VolumeDriver.Create', '{"Name":{}}', /Name must be a string, got an object/],
    ['/VolumeDriver.Mount', '{"Name":"v"}', /ID must be a string, got nothing/],
    ['/VolumeDriver.Unmount', '{"Name":"v","ID":7}', /ID must be a string, got a number/],
    ['/VolumeDriver.Create', '{"Name":"v","Opts":[]}', /Opts must be an object or null, got an array/],
    ['/VolumeDriver.Create', '{"Name":"v","Opts":"base=/x"}', /Opts must be an object or null, got a string/],
    ['/VolumeDriver.Create', '{"Name":"v","Opts":{"base":1}}', /Opts values must be strings, got a number for "base"/],
    ['/VolumeDriver.Create', '{"Name":"v","Opts":{"a":null}}', /Opts values must be strings, got null for "a"/],
  ];
  for (const [route, body, err] of cases) {
    const r = await call(s.socketPath, route, body);
    t.equal(r.status, 400, `${route} ${body}`);
    t.equal(r.headers['content-type'], PLUGIN_CONTENT_TYPE);
    t.match(r.json, { Err: err }, `${route} ${body}`);
  }
  t.same(s.driver.calls, [], 'the driver saw none of them');
  t.ok(s.lines.some((l) => l.msg === 'call refused' && l.status === 400 && l.level === 'debug'));
});

t.test('an unknown path gets 404 with a JSON Err and the connection is not kept', async (t) => {
  const s = await start(t);
  for (const p of ['/VolumeDriver.Nope', '/Plugin.Activate?x=1', '/', '/volumedriver.get', `/${'x'.repeat(500)}`]) {
    const r = await call(s.socketPath, p, { Name: 'v' });
    t.equal(r.status, 404, p);
    t.match(r.json, { Err: /^unknown path .*ontop serves/ }, p);
    t.ok(r.json.Err.length < 250, 'long paths are clipped in the message');
    t.equal(r.headers.connection, 'close');
  }
});

t.test('a DriverError reaches the client as 200 {"Err": message}, exactly as thrown', async (t) => {
  const s = await start(t);
  const r = await call(s.socketPath, '/VolumeDriver.Create', { Name: 'refuse-1', Opts: null });
  t.equal(r.status, 200);
  t.same(r.json, { Err: 'volume refuse-1 refused: fix it and retry' });
  const g = await call(s.socketPath, '/VolumeDriver.Get', { Name: 'missing' });
  t.same(g.json, { Err: 'no such volume: missing' });
  t.ok(s.lines.some((l) => l.msg === 'call refused' && l.name === 'missing' && l.outcome === 'err' && l.status === 200));
});

t.test('a DriverError with an empty message still gets a non-empty Err', async (t) => {
  const driver = { ...fakeDriver(), list: async () => Promise.reject(new DriverError('')) };
  const s = await start(t, { driver });
  const r = await call(s.socketPath, '/VolumeDriver.List', {});
  t.same(r.json, { Err: 'unknown error' });
});

t.test('an unexpected driver exception is a short 500, logged with its stack, and the server keeps answering', async (t) => {
  const s = await start(t);
  const r = await call(s.socketPath, '/VolumeDriver.Mount', { Name: 'boom-1', ID });
  t.equal(r.status, 500);
  t.same(r.json, { Err: 'internal error in VolumeDriver.Mount: unexpected failure for boom-1; see the ontop log' });
  const line = s.lines.find((l) => l.level === 'error')!;
  t.match(line, { msg: 'call failed unexpectedly', verb: 'VolumeDriver.Mount', name: 'boom-1', status: 500, err: 'unexpected failure for boom-1' });
  t.match(line.stack, /unexpected failure for boom-1\n\s+at /);
  t.same((await call(s.socketPath, '/Plugin.Activate')).json, { Implements: ['VolumeDriver'] });
});

t.test('a driver that throws a non-Error or returns a non-object gets a 500, not a crash or an empty reply', async (t) => {
  const driver = {
    ...fakeDriver(),
    list: async () => Promise.reject('a string'),
    capabilities: async () => undefined as never,
  };
  const s = await start(t, { driver });
  const l = await call(s.socketPath, '/VolumeDriver.List', {});
  t.equal(l.status, 500);
  t.same(l.json, { Err: 'internal error in VolumeDriver.List: a string; see the ontop log' });
  const c = await call(s.socketPath, '/VolumeDriver.Capabilities', {});
  t.equal(c.status, 500);
  t.match(c.json, { Err: /driver returned nothing instead of an object/ });
});

t.test('each call is logged at debug with verb, name, duration and outcome, never the body', async (t) => {
  const s = await start(t);
  await call(s.socketPath, '/VolumeDriver.Create', { Name: 'v', Opts: { secret: 'hunter2' } });
  const line = s.lines.find((l) => l.msg === 'call')!;
  t.match(line, { level: 'debug', verb: 'VolumeDriver.Create', name: 'v', status: 200, outcome: 'ok' });
  t.type(line.ms, 'number');
  t.notOk(JSON.stringify(s.lines).includes('hunter2'));
});

t.test('above debug, answered and refused calls log nothing; a failure of the driver is still logged', async (t) => {
  const { logger, lines } = captureLogger('info');
  const driver = { ...fakeDriver(), list: async () => Promise.reject(new Error('boom')) };
  const s = await start(t, { logger, driver });
  t.equal((await call(s.socketPath, '/VolumeDriver.Get', { Name: 'v' })).status, 200);
  t.equal((await call(s.socketPath, '/VolumeDriver.Get', { Name: 7 })).status, 400);
  t.same(lines, []);
  t.equal((await call(s.socketPath, '/VolumeDriver.List', {})).status, 500);
  t.match(lines, [{ level: 'error', msg: 'call failed unexpectedly', verb: 'VolumeDriver.List' }]);
});

t.test('a declared body over 1 MiB gets 413 at once, without the server waiting for the body', async (t) => {
  const s = await start(t);
  t.equal(MAX_BODY_BYTES, 1024 * 1024);
  const r = await raw(s.socketPath, `POST /VolumeDriver.Create HTTP/1.1\r\nHost: x\r\nContent-Length: ${MAX_BODY_BYTES + 1}\r\n\r\n{"Name":`);
  t.equal(r.status, 413);
  t.match(r.json, { Err: /exceeds 1048576 bytes/ });
  t.ok(r.closed, 'connection closed after the reply');
  t.same(s.driver.calls, []);
});

t.test('a chunked body that grows past the limit gets 413 and the connection is closed', async (t) => {
  const s = await start(t, { maxBodyBytes: 1000 });
  const r = await raw(s.socketPath, (sock) => {
    sock.write('POST /VolumeDriver.Create HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n');
    const chunk = 'a'.repeat(600);
    // Keep sending: the server must answer without reading it all.
    const timer = setInterval(() => sock.writable && sock.write(`${(600).toString(16)}\r\n${chunk}\r\n`, () => {}), 5);
    sock.on('close', () => clearInterval(timer));
  });
  t.equal(r.status, 413);
  t.ok(r.closed);
  t.same(s.driver.calls, []);
  t.same((await call(s.socketPath, '/Plugin.Activate')).json, { Implements: ['VolumeDriver'] }, 'still answering');
});

t.test('a body of exactly the limit is accepted', async (t) => {
  const s = await start(t, { maxBodyBytes: 1000 });
  const body = (n: number) => `{"Name":"v","Opts":{"pad":"${'p'.repeat(n - 30)}"}}`;
  t.equal((await call(s.socketPath, '/VolumeDriver.Create', body(1000))).status, 200);
  t.equal(s.driver.volumes.get('v')?.opts?.pad?.length, 970, 'the driver got the whole body');
  const over = await call(s.socketPath, '/VolumeDriver.Create', body(1001));
  t.equal(over.status, 413, 'one byte more is refused');
  t.equal(s.driver.calls.length, 1);
});

t.test('garbage instead of HTTP gets a 400 JSON Err and the connection is closed', async (t) => {
  const s = await start(t);
  const r = await raw(s.socketPath, 'HELLO THERE\r\n\r\n');
  t.equal(r.status, 400);
  t.match(r.json, { Err: /malformed HTTP request/ });
  t.match(r.text, `Content-Type: ${PLUGIN_CONTENT_TYPE}`);
  t.ok(r.closed);
});

t.test('oversized headers get 431 with a JSON Err', async (t) => {
  const s = await start(t);
  const r = await raw(s.socketPath, `POST /Plugin.Activate HTTP/1.1\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
  t.equal(r.status, 431);
  t.match(r.json, { Err: 'request headers too large' });
});

t.test('a client too slow to send its headers gets 408 and does not hold up others', async (t) => {
  const s = await start(t, { headersTimeoutMs: 300, requestTimeoutMs: 500 });
  const slow = raw(
    s.socketPath,
    (sock) => {
      let i = 0;
      const text = 'POST /Plugin.Activate HTTP/1.1\r\nHost: x\r\n';
      const timer = setInterval(() => (i < text.length && sock.writable ? sock.write(text[i++]!) : clearInterval(timer)), 100);
      sock.on('close', () => clearInterval(timer));
    },
    5000,
  );
  let slowDone = false;
  void slow.then(() => (slowDone = true));
  t.same((await call(s.socketPath, '/Plugin.Activate')).json, { Implements: ['VolumeDriver'] });
  t.notOk(slowDone, 'another client is answered while the slow one is still pending');
  const r = await slow;
  t.equal(r.status, 408);
  t.match(r.json, { Err: 'request not received in time' });
  t.ok(r.closed);
});

t.test('a slow driver call is not cut short by the request timeout', async (t) => {
  const s = await start(t, { headersTimeoutMs: 200, requestTimeoutMs: 300 });
  const r = await call(s.socketPath, '/VolumeDriver.Create', { Name: 'slow-800' });
  t.equal(r.status, 200, 'answered by the driver, not cut at 300 ms');
  t.same(r.json, {});
  t.ok(s.driver.volumes.has('slow-800'));
});

t.test('a parse error while a response is pending drops the connection instead of interleaving a reply', async (t) => {
  const s = await start(t);
  const r = await raw(s.socketPath, 'POST /VolumeDriver.Create HTTP/1.1\r\nContent-Length: 19\r\n\r\n{"Name":"slow-300"}GARBAGE\r\n\r\n');
  t.equal(r.text, '', 'no reply on that connection');
  t.ok(r.closed);
  t.same((await call(s.socketPath, '/Plugin.Activate')).json, { Implements: ['VolumeDriver'] }, 'still answering');
});

t.test('a client that hangs up mid-body is logged as a refused call, not an internal error', async (t) => {
  const s = await start(t);
  await raw(
    s.socketPath,
    (sock) => sock.write('POST /VolumeDriver.Get HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"Na', () => setTimeout(() => sock.destroy(), 50)),
    1000,
  );
  await new Promise((r) => setTimeout(r, 50));
  t.match(
    s.lines.find((l) => l.msg === 'call refused'),
    { status: 400, err: /request aborted/ },
  );
  t.notOk(s.lines.some((l) => l.level === 'error'));
  t.same((await call(s.socketPath, '/Plugin.Activate')).json, { Implements: ['VolumeDriver'] });
});

t.test('200 parallel requests are all answered correctly', async (t) => {
  const s = await start(t);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
  t.teardown(() => agent.destroy());
  await call(s.socketPath, '/VolumeDriver.Create', { Name: 'v', Opts: null }, agent);
  const replies = await Promise.all(
    Array.from({ length: 200 }, (_, i) =>
      i % 2 ? call(s.socketPath, '/VolumeDriver.Get', { Name: 'v' }, agent) : call(s.socketPath, '/VolumeDriver.Mount', { Name: 'v', ID: mountId() }),
    ),
  );
  for (const [i, r] of replies.entries()) {
    t.equal(r.status, 200);
    t.same(r.json, i % 2 ? { Volume: { Name: 'v', CreatedAt: '1970-01-01T00:00:00.000Z', Status: {} } } : { Mountpoint: '/fake/v' });
  }
});

t.test('a keep-alive client reuses one connection for many calls, with a keep-alive timeout above dockerd’s 30 s', async (t) => {
  const s = await start(t);
  t.equal(s.server.keepAliveTimeout, KEEP_ALIVE_TIMEOUT_MS);
  t.ok(KEEP_ALIVE_TIMEOUT_MS > 30_000);
  let connections = 0;
  s.server.on('connection', () => connections++);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  for (let i = 0; i < 5; i++) t.equal((await call(s.socketPath, '/VolumeDriver.List', {}, agent)).status, 200);
  // 400s keep the connection too: the body was read.
  t.equal((await call(s.socketPath, '/VolumeDriver.Get', '{', agent)).status, 400);
  t.equal((await call(s.socketPath, '/VolumeDriver.List', {}, agent)).status, 200);
  t.equal(connections, 1);
});

t.test('the socket is created with mode 0660, owner root and the given group, in a new 0755 directory', async (t) => {
  const dir = await scratch(t);
  const socketPath = path.join(dir, 'plugins', 'ontop.sock');
  const { logger } = captureLogger();
  const s = await startServer({ socketPath, socketGroup: 4242, driver: fakeDriver(), logger });
  t.teardown(() => s.close(0));
  const st = fs.lstatSync(socketPath);
  t.ok(st.isSocket());
  t.equal(st.mode & 0o777, 0o660);
  t.equal(st.uid, 0);
  t.equal(st.gid, 4242);
  t.equal(fs.statSync(path.dirname(socketPath)).mode & 0o777, 0o755);
  t.same(fs.readdirSync(path.dirname(socketPath)), ['ontop.sock'], 'no temporary file is left');
});

/** A socket file that nobody listens on, as a killed plugin leaves it. */
async function staleSocket(socketPath: string): Promise<void> {
  const srv = net.createServer();
  const bound = `${socketPath}.bound`;
  await new Promise<void>((r) => srv.listen(bound, r));
  fs.renameSync(bound, socketPath);
  await new Promise((r) => srv.close(r));
}

t.test('a stale socket (nobody listening) is replaced', async (t) => {
  const dir = await scratch(t);
  const socketPath = path.join(dir, 'ontop.sock');
  await staleSocket(socketPath);
  const stale = fs.lstatSync(socketPath).ino;
  const s = await startServer({ socketPath, driver: fakeDriver(), logger: captureLogger().logger });
  t.teardown(() => s.close(0));
  t.not(fs.lstatSync(socketPath).ino, stale, 'a new socket took its place');
  t.same((await call(socketPath, '/Plugin.Activate')).json, { Implements: ['VolumeDriver'] });
});

t.test('temporary sockets of killed ontop processes beside the socket are removed at start, and nothing else', async (t) => {
  const dir = await scratch(t);
  const socketPath = path.join(dir, 'ontop.sock');
  const exited = spawn(process.execPath, ['-e', '']);
  await new Promise((r) => exited.on('exit', r));
  const dead = exited.pid!;
  const living = spawn('sleep', ['60']);
  t.teardown(() => living.kill('SIGKILL'));
  const listening = net.createServer();
  await new Promise<void>((r) => listening.listen(path.join(dir, 'listening.tmp'), r));
  t.teardown(() => new Promise((r) => listening.close(r)));
  fs.renameSync(path.join(dir, 'listening.tmp'), path.join(dir, `.ontop-${dead + 1000000}`)); // a dead pid, yet someone answers
  await staleSocket(path.join(dir, `.ontop-${dead}`)); // killed between bind and rename
  await staleSocket(path.join(dir, `.ontop-${living.pid}`)); // an ontop starting right now
  await staleSocket(path.join(dir, '.ontop-x')); // not one of ours
  fs.writeFileSync(path.join(dir, `.ontop-${dead + 2000000}`), 'a file, not a socket');
  const { logger, lines } = captureLogger();
  const s = await startServer({ socketPath, driver: fakeDriver(), logger });
  t.teardown(() => s.close(0));
  t.same(
    fs.readdirSync(dir).sort(),
    [`.ontop-${dead + 1000000}`, `.ontop-${dead + 2000000}`, `.ontop-${living.pid}`, '.ontop-x', 'ontop.sock'].sort(),
    'only the dead process\'s temporary socket went',
  );
  t.same(
    lines.filter((l) => l.msg === 'removed a temporary socket left by a killed ontop').map((l) => [l.level, l.path]),
    [['info', path.join(dir, `.ontop-${dead}`)]],
  );
});

t.test('start is refused while another process answers on the socket, which keeps working', async (t) => {
  const first = await start(t);
  await t.rejects(startServer({ socketPath: first.socketPath, driver: fakeDriver(), logger: captureLogger().logger }), {
    name: 'ServerStartError',
    message: /another process is listening on .*ontop.sock; is ontop already running/,
  });
  t.same((await call(first.socketPath, '/Plugin.Activate')).json, { Implements: ['VolumeDriver'] });
});

t.test('a socket whose listener is too busy to accept is not replaced', async (t) => {
  const dir = await scratch(t);
  const socketPath = path.join(dir, 'busy.sock');
  // A listener with a backlog of one that never accepts: its event loop is blocked.
  const child = spawn(
    process.execPath,
    [
      '-e',
      `require('net').createServer().listen({ path: ${JSON.stringify(socketPath)}, backlog: 1 });
       process.stdout.write('ready');
       Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20000);`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  t.teardown(() => child.kill('SIGKILL'));
  await new Promise((r) => child.stdout.once('data', r));
  const fill: net.Socket[] = [];
  for (let i = 0; i < 2; i++) {
    const c = net.connect(socketPath);
    c.on('error', () => {});
    fill.push(c);
    await new Promise((r) => c.once('connect', r));
  }
  t.teardown(() => fill.forEach((c) => c.destroy()));
  const busy = fs.lstatSync(socketPath).ino;
  await t.rejects(startServer({ socketPath, driver: fakeDriver(), logger: captureLogger().logger }), {
    name: 'ServerStartError',
    message: /cannot tell whether .*busy.sock is in use \(connect failed with EAGAIN\)/,
  });
  t.equal(fs.lstatSync(socketPath).ino, busy, 'left in place');
});

t.test('a regular file, directory or symlink at the socket path is refused and left untouched', async (t) => {
  const dir = await scratch(t);
  const file = path.join(dir, 'file.sock');
  fs.writeFileSync(file, 'user data');
  const sub = path.join(dir, 'dir.sock');
  fs.mkdirSync(sub);
  const link = path.join(dir, 'link.sock');
  fs.symlinkSync(file, link);
  for (const socketPath of [file, sub, link]) {
    await t.rejects(startServer({ socketPath, driver: fakeDriver(), logger: captureLogger().logger }), {
      name: 'ServerStartError',
      message: /exists and is not a socket; refusing to replace it/,
    });
  }
  t.equal(fs.readFileSync(file, 'utf8'), 'user data');
  t.ok(fs.statSync(sub).isDirectory());
  t.ok(fs.lstatSync(link).isSymbolicLink());
  t.same(fs.readdirSync(dir).sort(), ['dir.sock', 'file.sock', 'link.sock']);
});

t.test('a socket path too long for a Unix socket is refused instead of silently truncated', async (t) => {
  const dir = await scratch(t);
  const socketPath = path.join(dir, `${'x'.repeat(100)}.sock`);
  const err = await startServer({ socketPath, driver: fakeDriver(), logger: captureLogger().logger }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof ServerStartError, 'a ServerStartError');
  t.match(err, { name: 'ServerStartError', message: /is too long/ });
  t.same(fs.readdirSync(dir), [], 'nothing bound');
});

t.test('a failure after binding (here: an invalid group) closes the server and leaves no file behind', async (t) => {
  const dir = await scratch(t);
  const socketPath = path.join(dir, 'ontop.sock');
  // The socket is bound under a temporary name before the group is set: the chown is what fails here.
  await t.rejects(startServer({ socketPath, socketGroup: -2, driver: fakeDriver(), logger: captureLogger().logger }), { code: 'ERR_OUT_OF_RANGE', message: /gid/ });
  t.same(fs.readdirSync(dir), [], 'neither the temporary nor the real socket');
});

t.test('close removes the socket, and is idempotent', async (t) => {
  const s = await start(t);
  t.ok(fs.existsSync(s.socketPath));
  const a = s.close();
  t.equal(s.close(), a, 'same promise');
  await a;
  t.notOk(fs.existsSync(s.socketPath));
  t.same(fs.readdirSync(s.dir), []);
});

t.test('close leaves a socket or file that replaced ours alone', async (t) => {
  const s = await start(t);
  fs.rmSync(s.socketPath);
  await staleSocket(s.socketPath);
  const successor = fs.lstatSync(s.socketPath).ino;
  await s.close();
  t.equal(fs.lstatSync(s.socketPath).ino, successor, "a successor's socket survives");
  t.ok(s.lines.some((l) => l.level === 'warn' && /replaced/.test(l.msg)));

  const s2 = await start(t);
  fs.rmSync(s2.socketPath);
  fs.writeFileSync(s2.socketPath, 'user data');
  await s2.close();
  t.equal(fs.readFileSync(s2.socketPath, 'utf8'), 'user data', 'a file put there survives too');

  const s3 = await start(t);
  fs.rmSync(s3.socketPath);
  t.doesNotThrow(() => s3.removeSocketSync(), 'an already removed socket is fine');
  t.notOk(s3.lines.some((l) => l.level === 'warn'), 'and not mistaken for a replaced one');
});

t.test('close lets an in-flight call finish within the grace period, then closes its connection', async (t) => {
  const s = await start(t);
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  await call(s.socketPath, '/Plugin.Activate', undefined, agent);
  const pending = call(s.socketPath, '/VolumeDriver.Create', { Name: 'slow-300' }, agent);
  await new Promise((r) => setTimeout(r, 50));
  const started = Date.now();
  await s.close(5000);
  const r = await pending;
  t.equal(r.status, 200);
  t.equal(r.headers.connection, 'close', 'told not to reuse the connection');
  t.ok(Date.now() - started < 2000, 'did not wait for the whole grace period');
  t.notOk(fs.existsSync(s.socketPath));
  await t.rejects(call(s.socketPath, '/Plugin.Activate'), { code: 'ENOENT' }, 'no longer accepting');
});

t.test('close gives up on a call that outlives the grace period and drops its connection', async (t) => {
  const s = await start(t);
  const pending = call(s.socketPath, '/VolumeDriver.Create', { Name: 'slow-2000' });
  await new Promise((r) => setTimeout(r, 50));
  const started = Date.now();
  await s.close(200);
  t.ok(Date.now() - started < 1500, 'bounded by the grace period, not the call');
  await t.rejects(pending, { code: 'ECONNRESET' });
  t.ok(s.lines.some((l) => l.level === 'warn' && l.inFlight === 1));
  t.notOk(fs.existsSync(s.socketPath));
});

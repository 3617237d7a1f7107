// Connection pressure on the real daemon (node dist/main.js): 1,000
// connections open at once, each asking Get, are all answered while the
// daemon's memory stays bounded; and clients that trickle a request a byte
// a second do not hold up anyone else.
import t from 'tap';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { call, mountId } from '../helpers/client.js';
import { env } from '../helpers/tmp.js';
import { requireBuild, sleep, spawnDaemon } from '../helpers/faults.js';

const CONNECTIONS = 1000;
const RSS_LIMIT_KIB = 200 * 1024;

function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]);
}

function connect(socket: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(socket);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Sends one whole request on an open connection and resolves with the raw response (the server closes it). */
function ask(s: net.Socket, body: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    s.setEncoding('utf8');
    s.on('data', (c: string) => (got += c));
    s.on('end', () => resolve(got));
    s.on('error', reject);
    s.write(`POST /VolumeDriver.Get HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  });
}

t.test('1,000 connections open at once all get their Get answered, and the daemon stays under 200 MiB', async (t) => {
  requireBuild(t);
  const e = await env(t);
  const socket = path.join(e.dir, 'x.sock');
  const daemon = spawnDaemon(t, e.root, socket, ['--log-level', 'info']);
  await daemon.ready;
  const base = await e.base('base');
  t.same((await call(socket, '/VolumeDriver.Create', { Name: 'v', Opts: { base } })).json, {});

  let peak = rssKiB(daemon.proc.pid!);
  const sampler = setInterval(() => (peak = Math.max(peak, rssKiB(daemon.proc.pid!))), 20);
  try {
    // Stopped, the daemon accepts nothing: every connection must wait in the listen backlog (a Unix
    // socket refuses with EAGAIN beyond it), as they would behind a busy event loop.
    daemon.proc.kill('SIGSTOP');
    let sockets: net.Socket[];
    try {
      sockets = await Promise.all(Array.from({ length: CONNECTIONS }, () => connect(socket)));
    } finally {
      daemon.proc.kill('SIGCONT');
    }
    t.equal(sockets.length, CONNECTIONS, 'every connection was accepted (none refused by a full backlog)');
    const replies = await Promise.all(sockets.map((s) => ask(s, '{"Name":"v"}\n')));
    const ok = replies.filter((r) => r.startsWith('HTTP/1.1 200 ') && r.includes('"Name":"v"') && !r.includes('"Err"'));
    t.equal(ok.length, CONNECTIONS, 'every one answered with the volume');
  } finally {
    clearInterval(sampler);
  }
  t.ok(peak < RSS_LIMIT_KIB, `peak RSS ${Math.round(peak / 1024)} MiB stays under ${RSS_LIMIT_KIB / 1024} MiB`);
  t.equal(daemon.running(), true, 'the daemon is still up');
  t.same((await call(socket, '/VolumeDriver.Remove', { Name: 'v' })).json, {});
});

t.test('20 clients trickling a request a byte a second do not stall others: normal calls are answered within 2 s', async (t) => {
  requireBuild(t);
  const e = await env(t);
  const socket = path.join(e.dir, 'x.sock');
  const daemon = spawnDaemon(t, e.root, socket);
  await daemon.ready;
  const base = await e.base('base');
  const request = 'POST /VolumeDriver.Get HTTP/1.1\r\nHost: plugin\r\nContent-Length: 13\r\n\r\n{"Name":"v"}\n';
  const slow = await Promise.all(Array.from({ length: 20 }, () => connect(socket)));
  let stop = false;
  const trickles = slow.map(async (s) => {
    s.on('error', () => {});
    for (let i = 0; i < request.length && !stop && !s.destroyed; i++) {
      s.write(request[i]!);
      await sleep(1000);
    }
  });
  t.teardown(() => {
    stop = true;
    for (const s of slow) s.destroy();
  });
  await sleep(1500); // every slow client is mid-request
  const timed = async (what: string, route: string, body: unknown, want: unknown) => {
    const started = Date.now();
    const reply = await Promise.race([call(socket, route, body), sleep(2000).then(() => undefined)]);
    t.ok(reply !== undefined, `${what} answered within 2 s (${Date.now() - started} ms)`);
    if (reply) t.match(reply.json, want, `${what} answered correctly`);
  };
  const id = mountId();
  for (let round = 0; round < 3; round++) {
    await timed('Create', '/VolumeDriver.Create', { Name: 'v', Opts: { base } }, {});
    await timed('Get', '/VolumeDriver.Get', { Name: 'v' }, { Volume: { Name: 'v' } });
    await timed('Mount', '/VolumeDriver.Mount', { Name: 'v', ID: id }, { Mountpoint: String });
    await timed('Unmount', '/VolumeDriver.Unmount', { Name: 'v', ID: id }, {});
    await timed('Remove', '/VolumeDriver.Remove', { Name: 'v' }, {});
    await sleep(500);
  }
  t.equal(slow.filter((s) => !s.destroyed).length, 20, 'the slow clients are still connected, still trickling');
  stop = true;
  for (const s of slow) s.destroy();
  await Promise.all(trickles);
});

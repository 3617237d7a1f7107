// Fuzzes the protocol server: random bytes, mutated valid requests, wrong
// types, huge numbers, deep nesting and odd unicode, to every route. Every
// reply must be what an independent oracle expects (200, or 400 with an
// Err), the driver must only ever see well-typed requests, and the server
// must answer normally afterwards. Seeded: ONTOP_SEED=<n> (or the older
// FUZZ_SEED) replays a run; the seed is printed as a comment.
import t from 'tap';
import http from 'node:http';
import { PLUGIN_CONTENT_TYPE } from '../lib/protocol.js';
import { call, mountId, type Reply } from './helpers/client.js';
import { start } from './helpers/fake-driver.js';
import { chooseSeed, fromSeed } from './helpers/seed.js';

const TOTAL = Number(process.env.FUZZ_COUNT ?? 20_000);
const PARALLEL = 32;
const SEED = chooseSeed(process.env, 'FUZZ_SEED');

const ROUTES = [
  '/Plugin.Activate',
  '/VolumeDriver.Create',
  '/VolumeDriver.Remove',
  '/VolumeDriver.Mount',
  '/VolumeDriver.Unmount',
  '/VolumeDriver.Path',
  '/VolumeDriver.Get',
  '/VolumeDriver.List',
  '/VolumeDriver.Capabilities',
];
const NEEDS_NAME = new Set(ROUTES.slice(1, 7));
const NEEDS_ID = new Set(['/VolumeDriver.Mount', '/VolumeDriver.Unmount']);

const { rand, int } = fromSeed(SEED);
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;

const NAMES = ['v', 'vol_1', 'a.b-c', '', ' ', 'ü', '名前', '🙂', 'a\u0000b', '\u202eevil', 'x'.repeat(300), '../../etc', 'refuse-x', '\ud800'];
const TOKENS = ['null', 'true', '[]', '{}', '""', '0', '-0', '1e309', '-1e-400', '123456789012345678901234567890', '"\\u0000"', '"\\ud800"', ',', ':', '"', '\\', '{', '}', '[', ']', '\u00ff', '\ufeff'];

function randomValue(depth = 0): unknown {
  switch (int(depth > 3 ? 6 : 8)) {
    case 0: return null;
    case 1: return rand() < 0.5;
    case 2: return pick([0, -1, 1.5, 1e308, -1e308, Number.MAX_SAFE_INTEGER + 2, 2 ** 64]);
    case 3: return pick(NAMES);
    case 4: return mountId(rand);
    case 5: return String.fromCodePoint(...Array.from({ length: int(8) }, () => int(0x10ffff + 1)));
    case 6: return Array.from({ length: int(4) }, () => randomValue(depth + 1));
    default: return Object.fromEntries(Array.from({ length: int(4) }, () => [pick(['Name', 'ID', 'Opts', 'base', '__proto__', 'x']), randomValue(depth + 1)]));
  }
}

function validBody(route: string): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  if (NEEDS_NAME.has(route)) body.Name = pick(NAMES);
  if (NEEDS_ID.has(route)) body.ID = mountId(rand);
  if (route === '/VolumeDriver.Create') body.Opts = pick([null, undefined, {}, { base: '/srv/x' }, { volatile: 'true', base: '/a,b:c' }]);
  return body;
}

function mutate(text: string): string {
  let s = text;
  for (let n = 1 + int(4); n > 0; n--) {
    const at = int(s.length + 1);
    switch (int(5)) {
      case 0: s = s.slice(0, at) + String.fromCharCode(int(256)) + s.slice(at + 1); break;
      case 1: s = s.slice(0, at) + pick(TOKENS) + s.slice(at); break;
      case 2: s = s.slice(0, at) + s.slice(at + 1 + int(8)); break;
      case 3: s = s.slice(0, at) + s.slice(at, at + int(16)).repeat(2) + s.slice(at); break;
      default: s = s.slice(0, at) + pick(TOKENS) + s.slice(at + int(4));
    }
  }
  return s;
}

function deep(depth: number): string {
  return rand() < 0.5 ? '['.repeat(depth) + ']'.repeat(depth) : `{"Name":${'{"a":'.repeat(depth)}1${'}'.repeat(depth)}}`;
}

/** One fuzz case: a path and a raw body. */
function generate(): { route: string; body: string | Buffer } {
  const route = rand() < 0.02 ? encodeURI(mutate(pick(ROUTES))) : pick(ROUTES);
  switch (int(7)) {
    case 0: return { route, body: Buffer.from(Array.from({ length: int(200) }, () => int(256))) };
    case 1: return { route, body: mutate(JSON.stringify(validBody(route)) + '\n') };
    case 2: {
      const body = validBody(route);
      for (const k of Object.keys(body).concat('Opts')) if (rand() < 0.5) body[k] = randomValue();
      return { route, body: JSON.stringify(body) };
    }
    case 3: return { route, body: `{"Name":${pick(['1e999', '-1e999', '1' + '0'.repeat(400), '0.' + '0'.repeat(400) + '1'])},"ID":${pick(['1e309', '"x"'])}}` };
    case 4: return { route, body: deep(1 + int(rand() < 0.1 ? 20_000 : 200)) };
    case 5: return { route, body: JSON.stringify(randomValue()) };
    default: return { route, body: JSON.stringify(validBody(route)) + pick(['', '\n', ' ', '\r\n', 'x', '{}']) };
  }
}

/** The status(es) the server may answer, worked out independently of it. */
function expected(route: string, raw: string | Buffer): number | number[] {
  // A target not starting with "/" may be refused by the HTTP parser (400) or
  // reach the router (404: llhttp takes "*..." as asterisk-form); node's
  // client sends an empty path as "/".
  if (!ROUTES.includes(route)) return route === '' || route.startsWith('/') ? 404 : [400, 404];
  const text = Buffer.isBuffer(raw) ? raw.toString('utf8') : raw;
  if (text.trim() === '') return NEEDS_NAME.has(route) ? 400 : 200;
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return 400;
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return 400;
  const b = body as Record<string, unknown>;
  if (NEEDS_NAME.has(route) && typeof b.Name !== 'string') return 400;
  if (NEEDS_ID.has(route) && typeof b.ID !== 'string') return 400;
  if (route === '/VolumeDriver.Create' && b.Opts !== undefined && b.Opts !== null) {
    if (typeof b.Opts !== 'object' || Array.isArray(b.Opts)) return 400;
    if (Object.values(b.Opts).some((v) => typeof v !== 'string')) return 400;
  }
  return 200;
}

t.test(`${TOTAL} fuzzed requests to every route get well-formed, correct replies and the server survives (seed ${SEED})`, async (t) => {
  t.comment(`seed ${SEED}: replay with ONTOP_SEED=${SEED}`);
  const s = await start(t);
  const agent = new http.Agent({ keepAlive: true, maxSockets: PARALLEL });
  t.teardown(() => agent.destroy());
  t.equal((await call(s.socketPath, '/VolumeDriver.Create', { Name: 'kept', Opts: null }, agent)).status, 200);
  const keptReply = (await call(s.socketPath, '/VolumeDriver.Get', { Name: 'kept' }, agent)).json;

  const started = Date.now();
  const perRoute = new Map<string, number>();
  const failures: string[] = [];
  let next = 0;
  const check = (route: string, body: string | Buffer, r: Reply) => {
    const want = [expected(route, body)].flat();
    const problems: string[] = [];
    if (!want.includes(r.status)) problems.push(`status ${r.status}, expected ${want.join(' or ')}`);
    if (r.headers['content-type'] !== PLUGIN_CONTENT_TYPE) problems.push(`content-type ${r.headers['content-type']}`);
    if (typeof r.json !== 'object' || r.json === null) problems.push('body is not a JSON object');
    else if (r.status !== 200 && !(typeof r.json.Err === 'string' && r.json.Err.length > 0)) problems.push('error without Err');
    if (problems.length && failures.length < 10) {
      failures.push(`${route} ${JSON.stringify(Buffer.isBuffer(body) ? body.toString('base64') : body.slice(0, 200))}: ${problems.join('; ')}: ${r.text.slice(0, 200)}`);
    }
  };
  await Promise.all(
    Array.from({ length: PARALLEL }, async () => {
      while (next < TOTAL) {
        next++;
        const { route, body } = generate();
        perRoute.set(route, (perRoute.get(route) ?? 0) + 1);
        check(route, body, await call(s.socketPath, route, body, agent));
      }
    }),
  );
  const ms = Date.now() - started;
  t.same(failures, [], 'every reply matched the oracle');
  for (const route of ROUTES) t.ok((perRoute.get(route) ?? 0) > TOTAL / 20, `${route} was fuzzed ${perRoute.get(route)} times`);
  t.comment(`${TOTAL} requests in ${ms} ms`);

  for (const [verb, req] of s.driver.calls) {
    if (req === undefined) continue;
    const r = req as Record<string, unknown>;
    if (typeof r.Name !== 'string') t.fail(`${verb} got a non-string Name`);
    if ((verb === 'mount' || verb === 'unmount') && typeof r.ID !== 'string') t.fail(`${verb} got a non-string ID`);
    if (verb === 'create' && r.Opts !== null && !Object.values(r.Opts as object).every((v) => typeof v === 'string')) t.fail('create got bad Opts');
  }
  t.notOk(s.lines.some((l) => l.level === 'error'), 'nothing unexpected was logged');

  const fresh = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => fresh.destroy());
  t.same((await call(s.socketPath, '/Plugin.Activate', undefined, fresh)).json, { Implements: ['VolumeDriver'] });
  t.same((await call(s.socketPath, '/VolumeDriver.Get', { Name: 'kept' }, fresh)).json, keptReply);
  t.same((await call(s.socketPath, '/VolumeDriver.Get', { Name: 'kept' }, agent)).json, keptReply, 'the fuzzing agent still works too');
});

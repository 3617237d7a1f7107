// The protocol layer: Docker's volume plugin protocol over HTTP/1.1 on a Unix
// socket, dispatching typed requests to a VolumeDriver. It owns the socket
// file, framing, routing, request validation and the error → {"Err"} mapping;
// it knows nothing of volumes. What dockerd relies on: every call is
// `POST /<Method>`, routed here on the exact path with no Content-Type or
// Host required; only a 200 with a JSON body (`{}` at least) is success, and
// an error is `{"Err": "..."}`; connections are kept alive (dockerd drops an
// idle one after 30 s); and dockerd retries a socket nobody answers on for
// about 15 s per call, so the socket goes when the daemon does.
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { isDriverError } from './errors.js';
import { errorFields, type Logger } from './log.js';
import { OPERATOR_CONTENT_TYPE, type OnProgress, type Operator } from './operator.js';
import { PLUGIN_CONTENT_TYPE, type VolumeDriver } from './protocol.js';
import { listenAtomically, prepareSocketPath } from './socket.js';

export { ServerStartError } from './socket.js';

export const MAX_BODY_BYTES = 1024 * 1024;
/** Above dockerd's 30 s idle timeout, so a reused connection is never closed under a request. */
export const KEEP_ALIVE_TIMEOUT_MS = 65_000;
export const MAX_CONNECTIONS = 4096;

export interface ServerOptions {
  socketPath: string;
  /** Group owning the socket (mode 0660); left as created when absent. */
  socketGroup?: number;
  /** Docker's verbs; the operator's too (the /Ontop.* endpoints) when it has them. */
  driver: VolumeDriver & Partial<Operator>;
  logger: Logger;
  /** Limits, overridable for tests. */
  maxBodyBytes?: number;
  headersTimeoutMs?: number;
  requestTimeoutMs?: number;
}

export interface RunningServer {
  server: http.Server;
  socketPath: string;
  /** Stops accepting, lets in-flight calls finish for at most graceMs, closes every connection, removes the socket. */
  close(graceMs?: number): Promise<void>;
  /** Removes the socket file now, if it is still ours; for an exit that cannot wait. */
  removeSocketSync(): void;
}


/** A refusal to process a request, answered as {"Err": message} with `status`. */
class ProtocolError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

type Body = Record<string, unknown>;
type Handler = (driver: VolumeDriver, body: Body) => Promise<unknown>;

const ROUTES = new Map<string, Handler>([
  ['/Plugin.Activate', async () => ({ Implements: ['VolumeDriver'] })],
  ['/VolumeDriver.Create', (d, b) => d.create({ Name: nameOf(b), Opts: optsOf(b) })],
  ['/VolumeDriver.Remove', (d, b) => d.remove({ Name: nameOf(b) })],
  ['/VolumeDriver.Mount', (d, b) => d.mount({ Name: nameOf(b), ID: idOf(b) })],
  ['/VolumeDriver.Unmount', (d, b) => d.unmount({ Name: nameOf(b), ID: idOf(b) })],
  ['/VolumeDriver.Path', (d, b) => d.path({ Name: nameOf(b) })],
  ['/VolumeDriver.Get', (d, b) => d.get({ Name: nameOf(b) })],
  ['/VolumeDriver.List', (d) => d.list()],
  ['/VolumeDriver.Capabilities', (d) => d.capabilities()],
]);

/**
 * The operator's endpoints (`ontop ls`, `diff`, ...): same socket, same
 * permissions as Docker's. Each replies in JSON lines: progress, then the
 * result or {"Err"} (operator.ts).
 */
type OperatorHandler = (operator: Operator, body: Body, onProgress: OnProgress) => Promise<unknown>;

const OPERATOR_ROUTES = new Map<string, OperatorHandler>([
  ['/Ontop.Info', (o) => o.info()],
  ['/Ontop.Ls', (o) => o.ls()],
  ['/Ontop.Diff', (o, b) => o.diff({ name: stringField(b, 'name') })],
  ['/Ontop.Reset', (o, b) => o.reset({ name: stringField(b, 'name') })],
  ['/Ontop.Commit', (o, b, p) => o.commit({ name: stringField(b, 'name'), dryRun: booleanField(b, 'dryRun') }, p)],
  [
    '/Ontop.Clone',
    (o, b, p) => {
      const volatile = b.volatile === undefined ? {} : { volatile: stringField(b, 'volatile') };
      return o.clone({ source: stringField(b, 'source'), name: stringField(b, 'name'), ...volatile }, p);
    },
  ],
]);

/** A progress line at most this often: a commit of a million small files must not send a million lines. */
export const PROGRESS_EVERY_MS = 100;

function isOperator(driver: VolumeDriver & Partial<Operator>): driver is VolumeDriver & Operator {
  return typeof driver.info === 'function';
}

function stringField(body: Body, key: string): string {
  const v = body[key];
  if (typeof v !== 'string') throw new ProtocolError(400, `${key} must be a string, got ${kindOf(v)}`);
  return v;
}

function booleanField(body: Body, key: string): boolean {
  const v = body[key] ?? false;
  if (typeof v !== 'boolean') throw new ProtocolError(400, `${key} must be a boolean, got ${kindOf(v)}`);
  return v;
}

function nameOf(body: Body): string {
  if (typeof body.Name !== 'string') throw new ProtocolError(400, `Name must be a string, got ${kindOf(body.Name)}`);
  return body.Name;
}

function idOf(body: Body): string {
  if (typeof body.ID !== 'string') throw new ProtocolError(400, `ID must be a string, got ${kindOf(body.ID)}`);
  return body.ID;
}

function optsOf(body: Body): Record<string, string> | null {
  const opts = body.Opts;
  if (opts === undefined || opts === null) return null;
  if (!isObject(opts)) throw new ProtocolError(400, `Opts must be an object or null, got ${kindOf(opts)}`);
  for (const [k, v] of Object.entries(opts)) {
    if (typeof v !== 'string') throw new ProtocolError(400, `Opts values must be strings, got ${kindOf(v)} for ${JSON.stringify(k)}`);
  }
  // fromEntries defines own properties, so a "__proto__" key stays a plain key.
  return Object.fromEntries(Object.entries(opts)) as Record<string, string>;
}

function isObject(v: unknown): v is Body {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The JSON kind of a value, for protocol errors ("an array", "a number"). */
function kindOf(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

/** Keeps user-controlled text in messages short. */
function clip(s: string, max = 100): string {
  return s.length > max ? `${s.slice(0, max)}...` : s;
}

/** The verb a request path names, for messages and logs ("VolumeDriver.Get"); built only when one is written. */
function verbOf(url: string): string {
  return clip(url).replace(/^\//, '');
}

function parseBody(raw: Buffer): Body {
  // A retried request can arrive empty; dockerd's Activate is empty too.
  if (raw.length === 0) return {};
  const text = raw.toString('utf8');
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (err) {
    // Blank is empty too; looked at only here, so that a body that parses is never trimmed (a copy).
    if (text.trim() === '') return {};
    throw new ProtocolError(400, `malformed JSON in request body: ${(err as Error).message}`);
  }
  if (!isObject(body)) throw new ProtocolError(400, `request body must be a JSON object, got ${kindOf(body)}`);
  return body;
}

/** Reads the body, refusing (413) as soon as it is known to exceed `limit`, without reading the rest. */
function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  const tooLarge = () => new ProtocolError(413, `request body exceeds ${limit} bytes`);
  if (declared > limit) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.off('data', onData);
        req.pause();
        reject(tooLarge());
        return;
      }
      chunks.push(chunk);
    };
    req.on('data', onData);
    // One chunk, as dockerd's small bodies come, is the body itself: no copy.
    req.on('end', () => resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks)));
    // The client went away mid-body: nobody will read the answer, but log it as a protocol problem, not ours.
    req.on('error', (err) => reject(new ProtocolError(400, `request aborted: ${err.message}`)));
  });
}

function errorBody(message: string): string {
  return JSON.stringify({ Err: message || 'unknown error' });
}

interface Outcome {
  status: number;
  body: string;
  /** Close the connection after replying: the rest of the request was not read. */
  close?: boolean;
}

export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const { socketPath, driver, logger } = opts;
  const maxBody = opts.maxBodyBytes ?? MAX_BODY_BYTES;
  for (const left of await prepareSocketPath(socketPath)) {
    logger.info('removed a temporary socket left by a killed ontop', { path: left });
  }

  const requestTimeout = opts.requestTimeoutMs ?? 30_000;
  const server = http.createServer({
    keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
    headersTimeout: opts.headersTimeoutMs ?? 10_000,
    // Time to receive a whole request; a slow driver call is not cut short by it.
    requestTimeout,
    connectionsCheckingInterval: Math.min(1000, requestTimeout),
    // dockerd's Host header varies by version; node would answer 400 to an HTTP/1.1 request without one.
    requireHostHeader: false,
  });
  server.maxConnections = MAX_CONNECTIONS;

  let closing = false;
  let inFlight = 0;
  let drained: (() => void) | undefined;

  // One function for every response, not a closure each.
  const settled = (): void => {
    inFlight--;
    if (closing && inFlight === 0) drained?.();
  };
  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    inFlight++;
    res.on('close', settled);
    void handle(req, res);
  });

  server.on('clientError', (err: NodeJS.ErrnoException, socket: net.Socket) => {
    logger.debug('client error', errorFields(err));
    // Answer only when no response is under way on this connection: one
    // written now could interleave with it. Otherwise just drop the connection.
    const pending = (socket as net.Socket & { _httpMessage?: unknown })._httpMessage;
    if (!socket.writable || pending) {
      socket.destroy();
      return;
    }
    const [status, message] =
      err.code === 'HPE_HEADER_OVERFLOW'
        ? [431, 'request headers too large']
        : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? [408, 'request not received in time']
          : [400, `malformed HTTP request (${err.code})`];
    const body = errorBody(message);
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: ${PLUGIN_CONTENT_TYPE}\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  });

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const started = performance.now();
    // Always set on a request a server received.
    const url = req.url as string;
    let name: unknown;
    let outcome: Outcome;
    let failure: unknown;
    const route = ROUTES.get(url);
    if (route === undefined) {
      const operatorRoute = OPERATOR_ROUTES.get(url);
      if (operatorRoute !== undefined && isOperator(driver)) {
        await handleOperator(req, res, operatorRoute, driver, url, started);
        return;
      }
    }
    try {
      if (!route) throw new ProtocolError(404, `unknown path ${JSON.stringify(clip(url))}: ontop serves /Plugin.Activate, /VolumeDriver.* and /Ontop.*`);
      const body = parseBody(await readBody(req, maxBody));
      name = body.Name;
      const result = await route(driver, body);
      if (!isObject(result)) throw new Error(`driver returned ${kindOf(result)} instead of an object`);
      outcome = { status: 200, body: JSON.stringify(result) };
    } catch (err) {
      failure = err;
      outcome = toOutcome(err, url);
    }
    reply(req, res, outcome);
    logCall(url, name, started, outcome.status, failure);
  }

  function logCall(url: string, name: unknown, started: number, status: number, failure: unknown): void {
    // Below 500 the line is a debug one: not built at all when nobody reads it.
    if (status < 500 && !logger.enabled('debug')) return;
    const fields = {
      verb: verbOf(url),
      ...(typeof name === 'string' ? { name: clip(name) } : {}),
      ms: Math.round((performance.now() - started) * 10) / 10,
      status,
      outcome: status === 200 && failure === undefined ? 'ok' : 'err',
    };
    if (status >= 500 || (failure !== undefined && !isDriverError(failure) && !(failure instanceof ProtocolError))) {
      logger.error('call failed unexpectedly', { ...fields, ...errorFields(failure, true) });
    } else if (failure !== undefined) logger.debug('call refused', { ...fields, err: (failure as Error).message });
    else logger.debug('call', fields);
  }

  /**
   * An operator's call: the request is read and checked as Docker's are (a
   * protocol error is a plain 4xx reply); then a 200 whose body is JSON
   * lines, written as the work goes: progress, then the result or {"Err"}.
   */
  async function handleOperator(req: http.IncomingMessage, res: http.ServerResponse, route: OperatorHandler, operator: Operator, url: string, started: number): Promise<void> {
    let name: unknown;
    let failure: unknown;
    const line = (value: unknown): void => {
      if (!res.headersSent) {
        const headers: http.OutgoingHttpHeaders = { 'Content-Type': OPERATOR_CONTENT_TYPE };
        if (closing) headers.Connection = 'close';
        res.writeHead(200, headers);
      }
      res.write(JSON.stringify(value) + '\n');
    };
    let lastProgress = -Infinity;
    const onProgress: OnProgress = (p) => {
      const now = performance.now();
      if (now - lastProgress < PROGRESS_EVERY_MS) return;
      lastProgress = now;
      line({ progress: { files: p.files, bytes: p.bytes } });
    };
    try {
      const body = parseBody(await readBody(req, maxBody));
      name = body.name;
      line({ result: await route(operator, body, onProgress) });
    } catch (err) {
      failure = err;
      const outcome = toOutcome(err, url);
      if (!res.headersSent && outcome.status !== 200) {
        reply(req, res, outcome);
        logCall(url, name, started, outcome.status, failure);
        return;
      }
      line(JSON.parse(outcome.body));
    }
    res.end();
    logCall(url, name, started, 200, failure);
  }

  function toOutcome(err: unknown, url: string): Outcome {
    if (isDriverError(err)) return { status: 200, body: errorBody(err.message) };
    // After a 413 or 404 the body is left unread: close rather than wait for (or drain) it.
    if (err instanceof ProtocolError) return { status: err.status, body: errorBody(err.message), close: err.status === 413 || err.status === 404 };
    const message = err instanceof Error ? err.message : String(err);
    return { status: 500, body: errorBody(`internal error in ${verbOf(url)}: ${clip(message, 300)}; see the ontop log`) };
  }

  function reply(req: http.IncomingMessage, res: http.ServerResponse, outcome: Outcome): void {
    const headers: http.OutgoingHttpHeaders = {
      'Content-Type': PLUGIN_CONTENT_TYPE,
      'Content-Length': Buffer.byteLength(outcome.body),
    };
    if (closing || outcome.close) headers.Connection = 'close';
    res.writeHead(outcome.status, headers);
    // The rest of an unread body would otherwise keep the connection busy.
    if (outcome.close) res.end(outcome.body, () => req.socket.destroy());
    else res.end(outcome.body);
  }

  const identity = await listenAtomically(server, socketPath, opts.socketGroup, MAX_CONNECTIONS);
  logger.debug('socket ready', { socket: socketPath, ino: identity.ino });

  /** Unlinks the socket only while it is still the one we bound: never a successor's, never a user's file. */
  function removeSocketSync(): void {
    const st = fs.lstatSync(socketPath, { throwIfNoEntry: false });
    if (!st) return;
    if (st.isSocket() && st.ino === identity.ino && st.dev === identity.dev) fs.rmSync(socketPath, { force: true });
    else logger.warn('socket was replaced by someone else; leaving it', { socket: socketPath });
  }

  let closed: Promise<void> | undefined;
  function close(graceMs = 10_000): Promise<void> {
    closed ??= (async () => {
      closing = true;
      const serverClosed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      if (inFlight > 0) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          new Promise<void>((resolve) => (drained = resolve)),
          new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs))),
        ]);
        clearTimeout(timer);
        if (inFlight > 0) logger.warn('closing connections with calls still in flight', { inFlight, graceMs });
      }
      server.closeAllConnections();
      await serverClosed;
      removeSocketSync();
    })();
    return closed;
  }

  return { server, socketPath, close, removeSocketSync };
}

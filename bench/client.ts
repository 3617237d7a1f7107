// A plugin client that talks the way dockerd does (POST, dockerd's Accept
// header, no Content-Type, Go's JSON with its trailing newline, keep-alive),
// kept cheap so the harness is never the bottleneck: one keep-alive Agent
// with one socket per client, no parsing of large replies unless asked.
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { PLUGIN_CONTENT_TYPE } from '../lib/protocol.js';

export interface Reply {
  status: number;
  text: string;
  /** Request latency in nanoseconds, from before http.request to the reply's last byte. */
  ns: bigint;
}

/** A call that dockerd would count as failed: a non-200 status, an Err, or a transport error. */
export class PluginCallError extends Error {
  override name = 'PluginCallError';
  constructor(
    readonly method: string,
    readonly status: number,
    readonly body: string,
  ) {
    super(`${method}: ${status === 0 ? '' : `HTTP ${status}: `}${describeBody(body)}`);
  }
}

function describeBody(body: string): string {
  try {
    const parsed = JSON.parse(body) as { Err?: unknown };
    if (typeof parsed?.Err === 'string' && parsed.Err !== '') return parsed.Err;
  } catch {
    /* not JSON: shown raw, as dockerd would */
  }
  return body.length > 300 ? body.slice(0, 300) + '…' : body;
}

/** Go's http.Client headers, as dockerd's plugin client sends them (minus Content-Type, which it never sets). */
const BASE_HEADERS = {
  Host: 'plugin',
  'User-Agent': 'Go-http-client/1.1',
  Accept: PLUGIN_CONTENT_TYPE,
  'Accept-Encoding': 'gzip',
};

export class PluginClient {
  private readonly agent: http.Agent;

  constructor(readonly socketPath: string) {
    // dockerd's idle timeout is 30 s; one socket per client so concurrency is what the caller makes it.
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 1, maxFreeSockets: 1, keepAliveMsecs: 30_000 });
  }

  /** One raw call; `body` undefined sends an empty body (Plugin.Activate), anything else as Go's encoder would. */
  request(method: string, body?: unknown): Promise<Reply> {
    const payload = body === undefined ? '' : JSON.stringify(body) + '\n';
    return new Promise((resolve, reject) => {
      const start = process.hrtime.bigint();
      const req = http.request(
        {
          socketPath: this.socketPath,
          path: '/' + method,
          method: 'POST',
          agent: this.agent,
          headers: { ...BASE_HEADERS, 'Content-Length': Buffer.byteLength(payload) },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const ns = process.hrtime.bigint() - start;
            const text = chunks.length === 1 ? chunks[0]!.toString('utf8') : Buffer.concat(chunks).toString('utf8');
            resolve({ status: res.statusCode ?? 0, text, ns });
          });
          res.on('error', reject);
        },
      );
      req.on('error', (err) => reject(Object.assign(new PluginCallError(method, 0, err.message), { cause: err })));
      req.end(payload);
    });
  }

  /**
   * A call that must succeed as dockerd judges success: status 200 and a
   * non-empty body without an Err. Small replies are parsed and checked; a
   * large one (List of thousands) only has its head looked at, to keep the
   * client cheap. Returns the latency in nanoseconds and the raw text.
   */
  async ok(method: string, body?: unknown): Promise<Reply> {
    const reply = await this.request(method, body);
    if (reply.status !== 200 || reply.text === '' || hasErr(reply.text)) {
      throw new PluginCallError(method, reply.status, reply.text);
    }
    return reply;
  }

  /** Like ok(), and parses the JSON reply. */
  async json<T>(method: string, body?: unknown): Promise<T> {
    return JSON.parse((await this.ok(method, body)).text) as T;
  }

  close(): void {
    this.agent.destroy();
  }
}

function hasErr(text: string): boolean {
  if (text.length <= 4096) {
    try {
      const parsed = JSON.parse(text) as { Err?: unknown };
      return typeof parsed !== 'object' || parsed === null || (typeof parsed.Err === 'string' && parsed.Err !== '');
    } catch {
      return true;
    }
  }
  return /^\s*\{\s*"Err"\s*:\s*"[^"]/.test(text.slice(0, 64));
}

/** A 64-hex mount ID, as dockerd makes them (one per container use). */
export function mountId(): string {
  return randomBytes(32).toString('hex');
}

// Talks to a plugin socket the way dockerd does: POST, its Accept header, no
// Content-Type, a JSON body with Go's trailing newline, keep-alive.
import crypto from 'node:crypto';
import http from 'node:http';

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  /** Parsed body, or undefined when it is not JSON. */
  json: any;
}

export const ACCEPT = 'application/vnd.docker.plugins.v1.2+json';

/** Sends one call. `body` undefined sends an empty body; a string is sent raw; anything else as Go would encode it. */
export function call(socketPath: string, path: string, body?: unknown, agent?: http.Agent): Promise<Reply> {
  const payload = body === undefined ? '' : typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body) + '\n';
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        socketPath,
        path,
        method: 'POST',
        agent,
        headers: { Host: 'plugin', Accept: ACCEPT, 'Content-Length': Buffer.byteLength(payload) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown;
          try {
            json = JSON.parse(text);
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

/**
 * A 64-hex mount ID, as dockerd makes them. A randomized test passes its
 * seeded generator (helpers/seed.ts) so that a replay makes the same IDs;
 * otherwise the ID comes from the CSPRNG (unique, and nothing depends on it).
 */
export function mountId(rand?: () => number): string {
  if (rand === undefined) return crypto.randomBytes(32).toString('hex');
  let s = '';
  while (s.length < 64) s += Math.floor(rand() * 16).toString(16);
  return s;
}

// Load generators: N clients, each with its own keep-alive connection, each
// running its own sequence of calls, timed per call and over the wall.
import { PluginClient } from './client.js';
import { Samples } from './stats.js';

export interface LoadResult {
  samples: Samples;
  wallMs: number;
}

/**
 * Runs `body(client, index)` on `clients` fresh clients at once; `body`
 * times its own calls into the shared samples. The clients are connected
 * (one Plugin.Capabilities each) before the clock starts.
 */
export async function withClients(
  socketPath: string,
  clients: number,
  expected: number,
  body: (client: PluginClient, index: number, samples: Samples) => Promise<void>,
): Promise<LoadResult> {
  const pool = Array.from({ length: clients }, () => new PluginClient(socketPath));
  try {
    await Promise.all(pool.map((c) => c.ok('VolumeDriver.Capabilities', {})));
    const samples = new Samples(expected);
    const start = process.hrtime.bigint();
    await Promise.all(pool.map((c, i) => body(c, i, samples)));
    return { samples, wallMs: Number(process.hrtime.bigint() - start) / 1e6 };
  } finally {
    for (const c of pool) c.close();
  }
}

/** `perClient` calls of `method` by each client; `bodyFor(i, k)` makes the k-th request of client i. */
export function hammer(
  socketPath: string,
  clients: number,
  perClient: number,
  method: string,
  bodyFor: (client: number, k: number) => unknown,
): Promise<LoadResult> {
  return withClients(socketPath, clients, clients * perClient, async (client, i, samples) => {
    for (let k = 0; k < perClient; k++) {
      const reply = await client.ok(method, bodyFor(i, k));
      samples.add(Number(reply.ns) / 1e6);
    }
  });
}

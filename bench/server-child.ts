// A node:http server the bench runs as a child process (`node -e SCRIPT`),
// for references measured beside ontop: the echo ceiling and the Node
// ceiling. Started once it accepts connections on its socket; stopped with
// SIGTERM, waiting for its exit.
import { spawn, type ChildProcess } from 'node:child_process';
import { tryConnect } from './daemon.js';

export class ServerChild {
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();

  constructor(
    private readonly what: string,
    private readonly script: string,
    readonly socketPath: string,
  ) {}

  /** Spawns the script with `env` added to the bench's environment; resolves once its socket accepts. */
  async start(env: Record<string, string>): Promise<void> {
    const child = spawn(process.execPath, ['-e', this.script], { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    this.child = child;
    this.exited = new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.once('error', () => resolve());
    });
    const deadline = Date.now() + 10_000;
    while (!(await tryConnect(this.socketPath))) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the ${this.what} did not start${stderr.trim() ? `: ${stderr.trim()}` : ''}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  async stop(): Promise<void> {
    if (this.child && this.child.exitCode === null) this.child.kill('SIGTERM');
    await this.exited;
    this.child = undefined;
  }
}

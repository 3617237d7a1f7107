// The operator's side of the /Ontop.* endpoints: an Operator whose every
// verb is a request on the daemon's socket. Reads the JSON lines of a reply
// as they come (progress, then the result or {"Err"}). A socket nobody
// answers on (missing, or refused: a killed daemon's) is NoDaemonError, so
// that a command can work on the state root itself.
import http from 'node:http';
import { DriverError } from './errors.js';
import type {
  CloneArgs,
  CloneResult,
  CommitArgs,
  CommitResult,
  DiffResult,
  InfoResult,
  LsResult,
  NameArgs,
  OnProgress,
  Operator,
  ResetResult,
} from './operator.js';
import { OPERATOR_CONTENT_TYPE } from './operator.js';

/** Nobody answers on the socket: `code` is ENOENT (no socket) or ECONNREFUSED (a stale one). */
export class NoDaemonError extends Error {
  override name = 'NoDaemonError';
  constructor(
    readonly socket: string,
    readonly code: string,
  ) {
    super(`no ontop daemon answers on ${socket} (${code})`);
  }
}

/** What to do about a connect error, when there is something to say. */
export function connectHint(code: string | undefined): string {
  return code === 'EACCES' ? ": run it as root, or as a member of the socket's group (--socket-group)" : '';
}

export class RemoteOperator implements Operator {
  constructor(readonly socket: string) {}

  info(): Promise<InfoResult> {
    return this.call('/Ontop.Info', {}) as Promise<InfoResult>;
  }

  ls(): Promise<LsResult> {
    return this.call('/Ontop.Ls', {}) as Promise<LsResult>;
  }

  diff(args: NameArgs): Promise<DiffResult> {
    return this.call('/Ontop.Diff', args) as Promise<DiffResult>;
  }

  reset(args: NameArgs): Promise<ResetResult> {
    return this.call('/Ontop.Reset', args) as Promise<ResetResult>;
  }

  commit(args: CommitArgs, onProgress?: OnProgress): Promise<CommitResult> {
    return this.call('/Ontop.Commit', args, onProgress) as Promise<CommitResult>;
  }

  clone(args: CloneArgs, onProgress?: OnProgress): Promise<CloneResult> {
    return this.call('/Ontop.Clone', args, onProgress) as Promise<CloneResult>;
  }

  /** One request; resolves with the result, rejects with a DriverError for {"Err"}. */
  call(path: string, body: unknown, onProgress?: OnProgress): Promise<unknown> {
    const payload = JSON.stringify(body);
    return new Promise((resolve, reject) => {
      let settled = false;
      const settle = (err: Error | undefined, value?: unknown): void => {
        if (settled) return;
        settled = true;
        if (err) reject(err);
        else resolve(value);
      };
      const req = http.request(
        {
          socketPath: this.socket,
          path,
          method: 'POST',
          // One connection per command, closed with it: nothing keeps the process alive afterwards.
          agent: false,
          headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) },
        },
        (res) => {
          res.setEncoding('utf8');
          const streamed = res.headers['content-type'] === OPERATOR_CONTENT_TYPE;
          let text = '';
          const onLine = (l: string): void => {
            if (l.trim() === '') return;
            let msg: { progress?: { files: number; bytes: number }; result?: unknown; Err?: string };
            try {
              msg = JSON.parse(l);
            } catch {
              settle(new Error(`the daemon on ${this.socket} sent a line that is not JSON: ${l.slice(0, 100)}`));
              return;
            }
            if (msg.progress !== undefined) onProgress?.(msg.progress);
            else if (typeof msg.Err === 'string') settle(new DriverError(msg.Err));
            else if ('result' in msg) settle(undefined, msg.result);
          };
          res.on('data', (chunk: string) => {
            text += chunk;
            if (!streamed) return;
            let nl: number;
            while ((nl = text.indexOf('\n')) >= 0) {
              onLine(text.slice(0, nl));
              text = text.slice(nl + 1);
            }
          });
          res.on('end', () => {
            if (streamed) {
              onLine(text);
              settle(new Error(`the daemon on ${this.socket} closed the connection before answering (did it stop?)`));
              return;
            }
            // A plain reply: a protocol error (a 4xx with {"Err"}), e.g. from an ontop that has no such endpoint.
            let err: string | undefined;
            try {
              err = (JSON.parse(text) as { Err?: string }).Err;
            } catch {
              err = undefined;
            }
            settle(new DriverError(`the daemon on ${this.socket} refused the call (HTTP ${res.statusCode}): ${err ?? text.slice(0, 200)}`));
          });
          res.on('error', (err) => settle(err));
        },
      );
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') settle(new NoDaemonError(this.socket, err.code));
        else settle(new Error(`cannot talk to the daemon on ${this.socket}: ${err.message}${connectHint(err.code)}`));
      });
      req.end(payload);
    });
  }
}

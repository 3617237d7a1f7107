// One JSON object per line on stderr, in pino's shape without the dependency:
// {"level":"info","time":"...","msg":"...", ...fields}. Errors contribute
// their code, errno, syscall and path. Quiet by default (info).

export const LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type Level = (typeof LEVELS)[number];

export type Fields = Record<string, unknown>;

export interface Logger {
  level: Level;
  debug(msg: string, fields?: Fields): void;
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  enabled(level: Level): boolean;
}

export function isLevel(value: string): value is Level {
  return (LEVELS as readonly string[]).includes(value);
}

/** Flattens an error into loggable fields: message, code, errno, syscall, path, and stack for unexpected ones. */
export function errorFields(err: unknown, withStack = false): Fields {
  if (!(err instanceof Error)) return { err: String(err) };
  const e = err as Error & { code?: unknown; errno?: unknown; syscall?: unknown; path?: unknown };
  const out: Fields = { err: e.message };
  if (e.code !== undefined) out.code = e.code;
  if (e.errno !== undefined) out.errno = e.errno;
  if (e.syscall !== undefined) out.syscall = e.syscall;
  if (e.path !== undefined) out.path = e.path;
  if (withStack && e.stack) out.stack = e.stack;
  return out;
}

export function createLogger(level: Level = 'info', write: (line: string) => void = (l) => process.stderr.write(l)): Logger {
  const logger: Logger = {
    level,
    enabled: (l) => LEVELS.indexOf(l) >= LEVELS.indexOf(logger.level),
    debug: (msg, fields) => emit('debug', msg, fields),
    info: (msg, fields) => emit('info', msg, fields),
    warn: (msg, fields) => emit('warn', msg, fields),
    error: (msg, fields) => emit('error', msg, fields),
  };
  function emit(l: Level, msg: string, fields?: Fields): void {
    if (!logger.enabled(l)) return;
    write(JSON.stringify({ level: l, time: new Date().toISOString(), msg, ...fields }) + '\n');
  }
  return logger;
}

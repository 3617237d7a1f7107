// DriverError: a refusal the user caused and can fix. Its message reaches
// `docker` as it is; anything else thrown by the driver is unexpected.

export class DriverError extends Error {
  override name = 'DriverError';
}

export function isDriverError(err: unknown): err is DriverError {
  return err instanceof DriverError;
}

/** The errno code of a system error (`EBUSY`), or undefined for anything else. */
export function errnoCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

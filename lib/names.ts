// Volume names and mount IDs: the only strings from dockerd that become file
// names, so each is checked here, on every verb, before it touches a path.
import { DriverError } from './errors.js';

/**
 * 128 characters: dockerd's anonymous volumes use 64, and the longest file the
 * store derives from a name (`trash/<name>.<kind>.<16 hex>`) then stays far
 * below NAME_MAX (255 bytes; names are ASCII, so characters are bytes).
 */
export const MAX_NAME_LENGTH = 128;

/** Volume names, mount IDs and the driver's own name: what dockerd and Docker's local driver accept. */
export const NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

/** Shows a bad value in a message without echoing 10,000 characters or control bytes. */
export function quote(value: string): string {
  const shown = value.length > 40 ? value.slice(0, 40) + '…' : value;
  return JSON.stringify(shown);
}

function check(kind: string, value: unknown): string {
  if (typeof value !== 'string') throw new DriverError(`${kind} must be a string, got ${value === null ? 'null' : typeof value}`);
  if (value === '') throw new DriverError(`${kind} is empty: give a name such as "data" or "web_1"`);
  if (value.length > MAX_NAME_LENGTH) {
    throw new DriverError(`${kind} ${quote(value)} is ${value.length} characters long; the limit is ${MAX_NAME_LENGTH}`);
  }
  if (!NAME_PATTERN.test(value)) {
    throw new DriverError(
      `${kind} ${quote(value)} is not allowed: use letters, digits, "_", "." and "-", starting with a letter or digit`,
    );
  }
  return value;
}

/** Returns the name if it is a safe volume name, else throws a DriverError that says what is allowed. */
export function checkName(name: unknown): string {
  return check('volume name', name);
}

/** Mount IDs are 64 hex characters from dockerd; any safe file name is accepted. */
export function checkMountId(id: unknown): string {
  return check('mount ID', id);
}

export function isValidName(name: string): boolean {
  return name.length <= MAX_NAME_LENGTH && NAME_PATTERN.test(name);
}

export function isValidMountId(id: string): boolean {
  return isValidName(id);
}

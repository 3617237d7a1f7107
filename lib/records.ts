// Mount records: one file per mount ID in a volume's users/, holding how
// many times that ID is mounted. Written atomically, never fsync'd: they
// mean something only within one boot, and after a power loss the boot id
// changes and start-up clears them all (the kernel lost the mounts too).
import fs from 'node:fs';
import path from 'node:path';
import { randomSuffix, readSmallFile } from './files.js';
import { isValidMountId } from './names.js';

/** Prefix of a mount record being written (renamed to its ID when complete); never a valid mount ID. */
export const TMP_RECORD = '.tmp.';

/**
 * The file a first use's record is a hard link to: it holds "1" (the TMP_RECORD prefix: no record itself, and
 * deleted at the next start; a record linked to it keeps the inode). A link makes a record without making an
 * inode, and its deletion frees none: on ext4 those are what a record written as a file of its own costs most
 * (docs/performance.md). A count other than 1 is written to a file of the record's own (writeRecord).
 */
export const ONE_RECORD = `${TMP_RECORD}one`;

export interface Records {
  /** Mount ID → count. */
  users: Map<string, number>;
  /** What in users/ is no valid record, in words. */
  damaged: string[];
}

/**
 * The mount records in a volume's users/ directory, and what there is not a valid record
 * (damage: users/ that is no directory or cannot be read, an entry that is
 * no regular file, a name that is no mount ID, a count that is no positive
 * integer), described for a human. Only a missing users/ means "no
 * records". A damaged entry with a usable name still counts as one user: it
 * was written only while mounted. Half-written records (TMP_RECORD prefix)
 * left by a killed process never count: their rename, which would have made
 * them a record, did not happen. An entry is opened non-blocking and without
 * following a symlink, and read only once fstat says it is a regular file:
 * a FIFO or a device put there can never block the daemon.
 */
export function readRecords(dir: string): Records {
  const users = new Map<string, number>();
  const damaged: string[] = [];
  let entries: string[];
  try {
    entries = fs.readdirSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { users, damaged }; // made again by the next Mount
    damaged.push(`users/ cannot be read (${(err as Error).message})`);
    return { users, damaged };
  }
  for (const id of entries) {
    const file = path.join(dir, id);
    if (id.startsWith(TMP_RECORD)) {
      try {
        fs.unlinkSync(file);
      } catch {
        // Not a file (or gone): it is no record either way, and unlink is all a start does to the unknown.
      }
      continue;
    }
    const shown = JSON.stringify(id).slice(1, -1).slice(0, 80);
    const read = readSmallFile(file);
    const n = read.text !== undefined && /^[1-9][0-9]{0,8}$/.test(read.text.trim()) ? Number(read.text.trim()) : undefined;
    if (!isValidMountId(id)) damaged.push(`users/${shown} is not named after a mount ID`);
    else if (read.problem !== undefined) damaged.push(`users/${id} ${read.problem}`);
    else if (n === undefined) damaged.push(`users/${id} holds ${JSON.stringify(String(read.text).slice(0, 20))}, not a count`);
    users.set(id, n ?? 1);
  }
  return { users, damaged };
}

/** Writes a record atomically (a temporary file renamed over it): a kill mid-write never leaves a torn count. */
export function writeRecord(dir: string, id: string, count: number): void {
  const tmp = path.join(dir, `${TMP_RECORD}${id}.${randomSuffix()}`);
  const write = (): void => {
    fs.writeFileSync(tmp, String(count));
    try {
      fs.renameSync(tmp, path.join(dir, id));
    } catch (err) {
      fs.rmSync(tmp, { force: true });
      throw err;
    }
  };
  try {
    write();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    fs.mkdirSync(dir, { mode: 0o700 }); // not recursive: no record for a volume that is gone
    write();
  }
}

/**
 * Adds the record of a mount ID's first use as a hard link to ONE_RECORD: one link(2), and the record appears
 * whole. False when no link could be made (ONE_RECORD or users/ missing, a record of that name left, the
 * filesystem's link limit): the caller writes the record as a file then.
 */
export function addRecord(dir: string, id: string): boolean {
  try {
    fs.linkSync(path.join(dir, ONE_RECORD), path.join(dir, id));
    return true;
  } catch {
    return false;
  }
}

export function deleteRecord(dir: string, id: string): void {
  // unlink, not rm: rm answers an EPERM (an immutable users/) with a misleading ENOTDIR from a retry as a directory.
  try {
    fs.unlinkSync(path.join(dir, id));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/** How many records a users/ directory (or one set aside) holds; half-written ones do not count. */
export function countRecords(dir: string): number {
  try {
    return fs.readdirSync(dir).filter((n) => !n.startsWith(TMP_RECORD)).length;
  } catch {
    return 0; // set aside was a file, not a directory: damage, and it is gone with the rest
  }
}

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
 * A spare record file: a retired record's inode, kept to hold the next record (the TMP_RECORD prefix: never a
 * record, and deleted at the next start). Making and freeing an inode for every Mount and Unmount is what
 * their records cost most on ext4 (docs/performance.md); a rename and a write cost far less.
 */
export function spareName(k: number): string {
  return `${TMP_RECORD}spare.${k}`;
}

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

/** Bytes of a record written into a spare file: the count padded with spaces, so that it covers any count before it. */
const SPARE_BYTES = 10;

/**
 * Writes a record into the spare file `spare` and renames it to the ID: the record appears whole, as with
 * writeRecord, without a new inode. Written over, never truncated: ext4 flushes a file truncated to empty
 * (auto_da_alloc), a write in place costs nothing of the kind. False when the spare is gone or no regular file.
 */
export function writeRecordInto(dir: string, spare: string, id: string, count: number): boolean {
  const from = path.join(dir, spare);
  let fd: number;
  try {
    // Non-blocking and no symlink followed: whatever replaced a spare can neither block the daemon nor be written through.
    fd = fs.openSync(from, fs.constants.O_WRONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch {
    return false;
  }
  try {
    fs.writeSync(fd, String(count).padEnd(SPARE_BYTES), 0);
    // Longer only if it was a damaged record found at start and retired since: cut its tail.
    if (fs.fstatSync(fd).size > SPARE_BYTES) fs.ftruncateSync(fd, SPARE_BYTES);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(from, path.join(dir, id));
  return true;
}

/** Takes a record out of sight by renaming it to the spare file `spare`. False when there was no record. */
export function retireRecord(dir: string, id: string, spare: string): boolean {
  try {
    fs.renameSync(path.join(dir, id), path.join(dir, spare));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    return false;
  }
  return true;
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

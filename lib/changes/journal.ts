// The commit journal: the lines a commit syncs before each step it takes in
// the base, and recoverCommit, which reads them to undo what an interrupted
// commit left.
import fsp from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { errnoCode } from '../errors.js';
import { fsyncPath, lstatOrNull, parentOf, setTimes } from './files.js';

/**
 * One line of the commit journal, JSON, paths in base64:
 * - `{t}`: a temp file about to be made in the base; a re-run deletes it.
 * - `{d, a, m}`: an upper directory's times before the commit removed
 *   anything from it; a re-run puts them back (removing an entry moves a
 *   directory's mtime, which the view shows).
 * - `{x}` then `{go}`: upper entries left for the end (hard links) whose
 *   removal began; a re-run finishes it, since the base then holds them all.
 * Each line is synced before what it announces is done.
 */
interface JournalLine {
  t?: string;
  d?: string;
  a?: string;
  m?: string;
  x?: string;
  go?: true;
}

async function readJournal(journal: string): Promise<JournalLine[] | null> {
  let text: string;
  try {
    text = await fsp.readFile(journal, 'utf8');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return null;
    throw err;
  }
  const lines: JournalLine[] = [];
  for (const line of text.split('\n')) {
    // A line cut short by a kill was never synced: what it announced never happened.
    try {
      const parsed: unknown = JSON.parse(line);
      if (typeof parsed === 'object' && parsed !== null) lines.push(parsed as JournalLine);
    } catch {
      continue;
    }
  }
  return lines;
}

/** Waits for `p`, taking a failure with one of `codes` (ENOENT unless given) for done. */
export async function tolerate(p: Promise<unknown>, ...codes: string[]): Promise<void> {
  try {
    await p;
  } catch (err) {
    if (!(codes.length === 0 ? ['ENOENT'] : codes).includes(errnoCode(err)!)) throw err;
  }
}

/**
 * Finishes what an interrupted commit left, from its journal: deletes the
 * temp files it made in the base, completes the removal of hard-linked
 * upper files if it had begun, and puts back the times of the upper
 * directories it removed entries from; then deletes the journal. After this
 * the view (base + upper) is exactly what it was before the commit began.
 * Safe to run again if interrupted. Resolves to false when there was no
 * journal. commitChanges does this first; run it before mounting a volume
 * whose commit may have been interrupted (the temps are visible in the view).
 */
export async function recoverCommit(journal: string): Promise<boolean> {
  const lines = await readJournal(journal);
  if (lines === null) return false;
  const b = (s: string) => Buffer.from(s, 'base64');
  for (const l of lines) if (typeof l.t === 'string') await tolerate(fsp.unlink(b(l.t)));
  if (lines.some((l) => l.go === true)) {
    for (const l of lines) {
      if (typeof l.x !== 'string') continue;
      const p = b(l.x);
      const st = await lstatOrNull(p);
      // A directory that still holds something keeps it, as a change for the next commit.
      if (st?.isDirectory()) await tolerate(fsp.rmdir(p), 'ENOENT', 'ENOTEMPTY');
      else if (st !== null) await tolerate(fsp.unlink(p));
    }
  }
  for (const l of lines) {
    if (typeof l.d !== 'string' || typeof l.a !== 'string' || typeof l.m !== 'string') continue;
    await tolerate(setTimes(b(l.d), { atimeNs: BigInt(l.a), mtimeNs: BigInt(l.m) }));
  }
  await tolerate(fsp.unlink(journal));
  return true;
}

export class Journal {
  private constructor(
    private readonly path: string,
    private readonly fh: FileHandle,
  ) {}

  /** An empty journal, its directory entry on disk before any line is announced. */
  static async create(path: string): Promise<Journal> {
    await fsp.writeFile(path, '', { mode: 0o600 });
    await fsyncPath(parentOf(Buffer.from(path)));
    return new Journal(path, await fsp.open(path, 'a'));
  }

  async add(...lines: JournalLine[]): Promise<void> {
    try {
      await this.fh.appendFile(lines.map((l) => JSON.stringify(l) + '\n').join(''));
      await this.fh.datasync();
    } catch (err) {
      throw new Error(`cannot write the commit journal ${this.path}: ${(err as Error).message}`, { cause: err });
    }
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}

// Printing paths, which are bytes: on one line and unambiguous for people
// (formatPath), or as text plus the exact bytes for JSON (jsonPath).

/** Length of the valid UTF-8 sequence at b[i] (1 to 4), or 0 when the byte there starts none. */
function utf8Length(b: Buffer, i: number): number {
  const c = b[i]!;
  if (c < 0x80) return 1;
  let n: number;
  let min: number;
  if (c >= 0xc2 && c <= 0xdf) [n, min] = [2, 0x80];
  else if (c >= 0xe0 && c <= 0xef) [n, min] = [3, 0x800];
  else if (c >= 0xf0 && c <= 0xf4) [n, min] = [4, 0x10000];
  else return 0;
  if (i + n > b.length) return 0;
  let cp = c & (0xff >> (n + 1));
  for (let k = 1; k < n; k++) {
    const cc = b[i + k]!;
    if ((cc & 0xc0) !== 0x80) return 0;
    cp = (cp << 6) | (cc & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

function isUtf8(b: Buffer): boolean {
  for (let i = 0; i < b.length; ) {
    const n = utf8Length(b, i);
    if (n === 0) return false;
    i += n;
  }
  return true;
}

/** Characters that would break a line or hide what follows: C0, DEL, C1, and the Unicode line and paragraph separators. */
function isControl(cp: number): boolean {
  return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp === 0x2028 || cp === 0x2029;
}

const ESCAPES: Record<number, string> = { 0x0a: '\\n', 0x09: '\\t', 0x0d: '\\r', 0x22: '\\"', 0x5c: '\\\\' };

/**
 * A path on one line, unambiguously. Printed as it is when it is valid UTF-8
 * and holds no control character, `"` or `\`; otherwise as a C-style quoted
 * string: `"` around it, `\n`, `\t`, `\r`, `\"` and `\\` for those bytes,
 * `\xHH` (always two lowercase hex digits) for every other control character
 * (each byte of its UTF-8 form) and every byte that is not part of valid
 * UTF-8, and every other character as itself. A plain path never starts
 * with `"`, so the two forms cannot be confused.
 */
export function formatPath(p: Buffer): string {
  const s = p.toString('utf8');
  let plain = isUtf8(p);
  if (plain) {
    for (const ch of s) {
      const cp = ch.codePointAt(0)!;
      if (isControl(cp) || cp === 0x22 || cp === 0x5c) {
        plain = false;
        break;
      }
    }
  }
  if (plain) return s;
  let out = '"';
  for (let i = 0; i < p.length; ) {
    const n = utf8Length(p, i);
    if (n === 0) {
      out += '\\x' + p[i]!.toString(16).padStart(2, '0');
      i++;
      continue;
    }
    const ch = p.toString('utf8', i, i + n);
    const cp = ch.codePointAt(0)!;
    const esc = ESCAPES[cp];
    if (esc !== undefined) out += esc;
    else if (isControl(cp)) for (let k = i; k < i + n; k++) out += '\\x' + p[k]!.toString(16).padStart(2, '0');
    else out += ch;
    i += n;
  }
  return out + '"';
}

/**
 * A path for JSON output: `path` is the text (with U+FFFD for bytes that are
 * not UTF-8); `pathBase64` holds the exact bytes, and is present exactly when
 * the bytes are not valid UTF-8.
 */
export function jsonPath(p: Buffer): { path: string; pathBase64?: string } {
  return isUtf8(p) ? { path: p.toString('utf8') } : { path: p.toString('utf8'), pathBase64: p.toString('base64') };
}

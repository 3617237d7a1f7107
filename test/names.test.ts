// Volume names and mount IDs: which strings may become file names.
import t from 'tap';
import { DriverError } from '../lib/errors.js';
import { MAX_NAME_LENGTH, checkMountId, checkName, quote } from '../lib/names.js';

t.test('names of letters, digits, "_", "." and "-" starting with a letter or digit are accepted', async (t) => {
  for (const n of ['a', 'web', 'Web_1', 'x.y-z', '0abc', 'a'.repeat(MAX_NAME_LENGTH), 'f'.repeat(64)]) t.equal(checkName(n), n);
});

t.test('every name that could escape the state root or break a file name is refused with a DriverError', async (t) => {
  const bad: unknown[] = ['', '.', '..', '../x', '/abs', 'a/b', 'x\0y', '-x', '_x', '.hidden', 'a b', 'é', 'naïve', 'a\nb', 'x'.repeat(10_000), 'a'.repeat(MAX_NAME_LENGTH + 1)];
  for (const n of bad) t.throws(() => checkName(n), DriverError, JSON.stringify(n).slice(0, 30));
  t.throws(() => checkName(''), { message: /empty/ });
  t.throws(() => checkName('../x'), { message: /"\.\.\/x" is not allowed: use letters, digits/ });
  t.throws(() => checkName('x'.repeat(10_000)), { message: /10000 characters long; the limit is 128/ });
});

t.test('a name that is not a string is refused, naming its type', async (t) => {
  t.throws(() => checkName(undefined), { name: 'DriverError', message: 'volume name must be a string, got undefined' });
  t.throws(() => checkName(null), { message: /got null/ });
  t.throws(() => checkName(42), { message: /got number/ });
});

t.test('mount IDs follow the same rules and say "mount ID"', async (t) => {
  t.equal(checkMountId('ab'.repeat(32)), 'ab'.repeat(32));
  t.throws(() => checkMountId('../../etc/passwd'), { name: 'DriverError', message: /^mount ID/ });
});

t.test('quote shortens long values and escapes control characters', async (t) => {
  t.equal(quote('a\nb'), '"a\\nb"');
  t.equal(quote('y'.repeat(100)), JSON.stringify('y'.repeat(40) + '…'));
});

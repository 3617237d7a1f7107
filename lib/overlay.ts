// Mounting and unmounting one volume's overlay: the option string handed to
// the kernel, built so that no byte of a path can add or change an option.
import { DriverError } from './errors.js';
import { constants, fsMount, mount, umount2 } from './native.js';
import type { SystemError } from './native.js';
import type { MountEntry } from './mountinfo.js';
import { splitOptions } from './mountinfo.js';

/** Shown as the mount's source in mount tables, and how ontop recognizes its own overlays. */
export const OVERLAY_SOURCE = 'ontop';

/**
 * Chosen on purpose and passed the same on every mount, so that a kernel or
 * distribution default never changes a volume between two mounts:
 * - bases change offline between mounts (the host owns them); overlayfs
 *   promises that this is safe only when index, metacopy, redirect_dir and
 *   xino are off (Documentation/filesystems/overlayfs.rst, "Changes to
 *   underlying filesystems").
 * - index=off: index=on would also make the next mount fail with ESTALE once
 *   the base's directory is replaced, and it ties the upper to one lower.
 * - metacopy=off: metacopy is unsafe with layers the user controls.
 * - redirect_dir=off: renaming a directory that comes from the base fails
 *   with EXDEV, which programs handle by copying (mv does).
 * - xino=off: inode numbers stay the underlying ones; nothing here needs
 *   them stable across layers.
 * uuid is left at its default.
 */
export const OVERLAY_OPTIONS = 'index=off,metacopy=off,redirect_dir=off,xino=off';

/** One page minus the terminating NUL: the kernel copies at most this much mount data. */
export const MAX_DATA_BYTES = 4095;

/** `\`, `,` and `:` get a backslash: overlayfs splits options on `,` and layers on `:`. */
export function escapeLayerPath(p: string): string {
  return p.replace(/[\\,:]/g, (c) => '\\' + c);
}

export interface Layers {
  /** One lower, or a stack of them, top first. */
  lower: string | readonly string[];
  upper: string;
  work: string;
  /**
   * overlayfs's own `volatile`: no syncs to the upper, for a volume whose
   * changes are dropped anyway. It leaves work/work/incompat/volatile behind,
   * which refuses the next mount on that workdir: every first Mount gets a
   * fresh workdir (Store.freshWorkDir), so none sees it.
   */
  volatile?: boolean;
}

function lowersOf(l: Layers): readonly string[] {
  return typeof l.lower === 'string' ? [l.lower] : l.lower;
}

/** The mount(2) data string; refuses one the kernel would truncate. */
export function overlayData(l: Layers): string {
  const data =
    `lowerdir=${lowersOf(l).map(escapeLayerPath).join(':')},upperdir=${escapeLayerPath(l.upper)},workdir=${escapeLayerPath(l.work)},` +
    OVERLAY_OPTIONS +
    (l.volatile === true ? ',volatile' : '');
  const bytes = Buffer.byteLength(data);
  if (bytes > MAX_DATA_BYTES) {
    throw new DriverError(
      `the overlay options for this volume are ${bytes} bytes, more than the kernel's ${MAX_DATA_BYTES}: ` +
        (lowersOf(l).length > 1 ? 'this kernel takes a stack of layers only in one string (no lowerdir+, Linux 6.8); give fewer layers' : 'use a state root with a shorter path'),
    );
  }
  return data;
}

/** The new mount API's parameters: one `lowerdir+` per layer, no escaping, no length limit but the kernel's 500 layers. */
export function overlayParams(l: Layers): Array<[string, string]> {
  const params: Array<[string, string]> = [['source', OVERLAY_SOURCE]];
  for (const lower of lowersOf(l)) params.push(['lowerdir+', lower]);
  params.push(['upperdir', l.upper], ['workdir', l.work]);
  for (const opt of OVERLAY_OPTIONS.split(',')) params.push(opt.split('=') as [string, string]);
  if (l.volatile === true) params.push(['volatile', '']);
  return params;
}

/**
 * A single lower goes the classic way (mount(2), one escaped string). A
 * stack goes through the new mount API, one layer per call; a kernel
 * without `lowerdir+` (before 6.8) refuses its first with EINVAL, and the
 * stack then goes in the escaped string, as long as it fits.
 */
export async function mountOverlay(l: Layers, target: string): Promise<void> {
  if (lowersOf(l).length === 1) return mount(OVERLAY_SOURCE, target, 'overlay', 0, overlayData(l));
  try {
    await fsMount('overlay', target, overlayParams(l));
  } catch (err) {
    const e = err as SystemError;
    if (!(e.syscall === 'fsconfig' && e.key === 'lowerdir+' && e.code === 'EINVAL')) throw err;
    await mount(OVERLAY_SOURCE, target, 'overlay', 0, overlayData(l));
  }
}

/** A plain unmount: fails with EBUSY while a host process holds a file open below it. */
export function unmountOverlay(target: string): Promise<void> {
  return umount2(target, constants.UMOUNT_NOFOLLOW);
}

/** Detaches lazily: never EBUSY; the filesystem lives on until its last user lets go. */
export function detachOverlay(target: string): Promise<void> {
  return umount2(target, constants.MNT_DETACH | constants.UMOUNT_NOFOLLOW);
}

/** True when the mount is an ontop overlay over exactly this upper layer: one that may be reused. */
export function isOverlayOf(e: MountEntry, upper: string): boolean {
  return e.fstype === 'overlay' && e.source === OVERLAY_SOURCE && splitOptions(e.superOptions).get('upperdir') === upper;
}

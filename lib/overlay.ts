// Mounting and unmounting one volume's overlay: the option string handed to
// the kernel, built so that no byte of a path can add or change an option.
import { DriverError } from './errors.js';
import { constants, mount, umount2 } from './native.js';
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
  lower: string;
  upper: string;
  work: string;
}

/** The mount(2) data string; refuses one the kernel would truncate. */
export function overlayData(l: Layers): string {
  const data =
    `lowerdir=${escapeLayerPath(l.lower)},upperdir=${escapeLayerPath(l.upper)},workdir=${escapeLayerPath(l.work)},` + OVERLAY_OPTIONS;
  const bytes = Buffer.byteLength(data);
  if (bytes > MAX_DATA_BYTES) {
    throw new DriverError(
      `the overlay options for this volume are ${bytes} bytes, more than the kernel's ${MAX_DATA_BYTES}: use a state root with a shorter path`,
    );
  }
  return data;
}

export function mountOverlay(l: Layers, target: string): Promise<void> {
  return mount(OVERLAY_SOURCE, target, 'overlay', 0, overlayData(l));
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

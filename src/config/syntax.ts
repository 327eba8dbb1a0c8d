/**
 * Value syntaxes shared by the config validator and the policy engine.
 * AE (Application Entity) VR per DICOM PS3.5 Table 6.2-1: at most 16 characters from the Default Character
 * Repertoire excluding backslash (5CH) and control characters; leading and trailing spaces are not significant;
 * a value made only of spaces is not allowed.
 * UI (UID) VR per PS3.5 Table 6.2-1 / 9.1: digits and dots, at most 64 characters.
 */

export const AE_TITLE_MAX_LENGTH = 16;
export const UID_MAX_LENGTH = 64;

/** Removes the space padding that is not significant in an AE title. */
export function trimAeTitle(value: string): string {
  return value.replace(/^ +| +$/g, '');
}

/** Removes what pads a value read off the wire: trailing NULs and spaces, leading spaces. */
export function stripWirePadding(value: string): string {
  return value.replace(/^ +|[\0 ]+$/g, '');
}

/** Returns why `value` (already trimmed) is not a valid AE title, or null when it is. */
export function aeTitleError(value: string): string | null {
  if (value.length === 0) return 'AE title must not be empty or only spaces';
  if (value.length > AE_TITLE_MAX_LENGTH) {
    return `AE title "${value}" is ${value.length} characters long; at most ${AE_TITLE_MAX_LENGTH} are allowed`;
  }
  if (value.includes('\\')) return `AE title "${value}" must not contain a backslash`;
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(value)) return 'AE title must not contain control characters';
  if (/[^\u0020-\u007e]/.test(value)) {
    return `AE title "${value}" must use the DICOM default character repertoire (printable ASCII)`;
  }
  return null;
}

/** Returns why `value` is not a valid UID, or null when it is. */
export function uidError(value: string): string | null {
  if (value.length === 0) return 'UID must not be empty';
  if (value.length > UID_MAX_LENGTH)
    return `UID is ${value.length} characters long; at most ${UID_MAX_LENGTH} are allowed`;
  if (!/^[0-9]+(\.[0-9]+)*$/.test(value)) {
    return `"${value}" is not a UID (digits separated by single dots)`;
  }
  return null;
}

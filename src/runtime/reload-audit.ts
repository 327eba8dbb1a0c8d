// Reloads on the audit trail: a reload that changed something is a Security Alert 110129 (Security
// Configuration, outcome 0) listing the changes; a reload that failed is one too, outcome 4 when the new
// configuration was refused before anything changed (it could not be read or validated, or its TLS material
// was refused: stage load or build) and 8 when a valid configuration could not be installed (stage apply).
// The running configuration stays in force in both failure cases. Dry runs change nothing and are not
// audited.
import { formatChanges } from '../config/diff.js';
import type { AuditTrail } from '../observe/audit/index.js';
import type { Reloader, ReloadFailure, ReloadSuccess } from './reload.js';

/** The Alert Description of a failed reload. */
export function reloadFailureDescription(r: ReloadFailure): string {
  return `configuration reload failed (${r.stage}); the running configuration stays in force: ${r.message}`;
}

/** Audits the reloader's results on the trail. Returns a function that stops it. */
export function auditReloads(reloader: Reloader, trail: AuditTrail): () => void {
  const file = reloader.configPath;
  const onReloaded = (r: ReloadSuccess): void => {
    if (r.changes.length === 0 && r.changedFiles.length === 0) return;
    trail.configurationChanged({
      description: formatChanges(r.changes, r.changedFiles),
      kind: 'security',
      file,
    });
  };
  const onFailed = (r: ReloadFailure): void => {
    trail.configurationChangeFailed({
      description: reloadFailureDescription(r),
      outcome: r.stage === 'apply' ? 8 : 4,
      kind: 'security',
      file,
    });
  };
  reloader.on('reloaded', onReloaded);
  reloader.on('reload-failed', onFailed);
  return () => {
    reloader.off('reloaded', onReloaded);
    reloader.off('reload-failed', onFailed);
  };
}

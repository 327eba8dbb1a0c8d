/** One problem found in a configuration file. */
export interface ConfigIssue {
  /** Key path such as `peers.CT_ROOM1.addresses[0]`; '' for the document (or file) itself. */
  path: string;
  /** 1-based line in the file, when known. */
  line: number | null;
  /** 1-based column in the file, when known. */
  column: number | null;
  message: string;
}

/** Formats one issue as `file:line:col key.path: message`. */
export function formatIssue(file: string | null, issue: ConfigIssue): string {
  let where = file ?? '<config>';
  if (issue.line !== null) {
    where += `:${issue.line}`;
    if (issue.column !== null) where += `:${issue.column}`;
  }
  return issue.path === '' ? `${where}: ${issue.message}` : `${where} ${issue.path}: ${issue.message}`;
}

/** Thrown by parseConfig / loadConfig; `message` lists every issue, one per line. */
export class ConfigError extends Error {
  readonly code = 'CONFIG_INVALID';
  readonly file: string | null;
  readonly issues: ConfigIssue[];

  constructor(file: string | null, issues: ConfigIssue[]) {
    super(issues.map((issue) => formatIssue(file, issue)).join('\n'));
    this.name = 'ConfigError';
    this.file = file;
    this.issues = issues;
  }
}

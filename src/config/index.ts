export type {
  LedgerConfig,
  LedgerFailureMode,
  LedgerFsyncMode,
  LimitsConfig,
  LoggingConfig,
  PeerConfig,
  ProxyConfig,
  RouteConfig,
  ServiceName,
  TlsProfileName,
  UpstreamConfig,
  UpstreamTlsConfig,
} from './types.js';
export { LEDGER_FAILURE_MODES, LEDGER_FSYNC_MODES, SERVICE_NAMES, TLS_PROFILE_NAMES } from './types.js';
export { ConfigError, formatIssue, type ConfigIssue } from './errors.js';
export { DEFAULTS, loadConfig, parseConfig } from './load.js';
export { MAX_DURATION_MS, parseDuration } from './duration.js';
export { aeTitleError, stripWirePadding, trimAeTitle, uidError } from './syntax.js';
export {
  parseAddressRange,
  parseRemoteAddress,
  rangeContains,
  type AddressRange,
  type IpAddress,
} from './address.js';

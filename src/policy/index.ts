export {
  compilePolicy,
  REJECTS,
  type AdmitDecision,
  type AdmitRefusal,
  type AdmitRequest,
  type ContextFilterResult,
  type PeerPolicy,
  type Policy,
  type RejectSpec,
  type RoleSelection,
} from './policy.js';
export {
  DimseRequest,
  isResponseCommand,
  isStorageSopClass,
  SERVICE_REQUESTS,
  servicesForAbstractSyntax,
  sopClassesForService,
  STORAGE_SOP_CLASS_ARC,
  VERIFICATION_SOP_CLASS,
} from './services.js';

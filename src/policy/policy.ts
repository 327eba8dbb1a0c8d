import {
  parseAddressRange,
  parseRemoteAddress,
  rangeContains,
  type AddressRange,
} from '../config/address.js';
import { stripWirePadding } from '../config/syntax.js';
import type {
  CertificateIdentity,
  PeerConfig,
  ProxyConfig,
  ReceiverConfig,
  RouteConfig,
  ServiceName,
  UpstreamConfig,
} from '../config/types.js';
import { identityMatches } from './identity.js';
import type { CertificateIdentities } from '../tls/identity.js';
import type { PresentationContextRq } from '../pdu/types.js';
import {
  CALLER_SERVICE_REQUESTS,
  SERVICE_REQUESTS,
  isResponseCommand,
  isStorageSopClass,
  servicesForAbstractSyntax,
} from './services.js';
import type {
  AdmitRefusal,
  ListenerKind,
  PolicyRefusal,
  ReturnAdmitRefusal,
} from '../vocabulary/outcomes.js';

/** A-ASSOCIATE-RJ fields, PS3.8 9.3.4 (Table 9-21). */
export interface RejectSpec {
  result: number;
  source: number;
  reason: number;
}

/** The rejects the policy issues. */
/** The counts and limits one association's admission is judged on (limits.maxAssociations, the peer's). */
export interface AssociationCounts {
  calling: string;
  /** Admitted associations now, on both listeners. */
  activeTotal: number;
  /** Admitted associations of `calling` now. */
  activeForPeer: number;
  maxAssociations: number;
  peerLimit: number;
}

/**
 * The association limits as one pure check (PS3.8 9.3.4: 2/3/2 local limit exceeded): used by the policy on
 * one process's counts, and by the daemon's process on the counts of every worker (cluster/admission.ts).
 */
export function associationLimit(c: AssociationCounts): {
  refusal: 'too-many-associations' | 'too-many-peer-associations';
  reject: RejectSpec;
  message: string;
} | null {
  if (c.activeTotal >= c.maxAssociations) {
    return {
      refusal: 'too-many-associations',
      reject: REJECTS.localLimitExceeded,
      message: `${c.activeTotal} associations active; limits.maxAssociations is ${c.maxAssociations}`,
    };
  }
  if (c.activeForPeer >= c.peerLimit) {
    return {
      refusal: 'too-many-peer-associations',
      reject: REJECTS.localLimitExceeded,
      message: `${c.activeForPeer} associations active for ${JSON.stringify(c.calling)}; its limit is ${c.peerLimit}`,
    };
  }
  return null;
}

export const REJECTS = Object.freeze({
  /** rejected-permanent / DICOM UL service-user / calling-AE-title-not-recognized. */
  callingAeNotRecognized: Object.freeze({ result: 1, source: 1, reason: 3 }),
  /** rejected-permanent / DICOM UL service-user / called-AE-title-not-recognized. */
  calledAeNotRecognized: Object.freeze({ result: 1, source: 1, reason: 7 }),
  /** rejected-transient / DICOM UL service-provider (presentation related) / local-limit-exceeded. */
  localLimitExceeded: Object.freeze({ result: 2, source: 3, reason: 2 }),
}) satisfies Record<string, RejectSpec>;

export type { AdmitRefusal, ReturnAdmitRefusal } from '../vocabulary/outcomes.js';

export type AdmitDecision =
  | { accepted: true; peer: PeerPolicy; route: RouteConfig; upstream: UpstreamConfig }
  | {
      accepted: false;
      refusal: AdmitRefusal;
      reject: RejectSpec;
      message: string;
      peerAeTitle: string | null;
    };

export interface AdmitRequest {
  /** As received; space / NUL padding is removed before lookup. */
  callingAeTitle: string;
  /** As received; space / NUL padding is removed before lookup. */
  calledAeTitle: string;
  /** The socket's remote address (IPv4, IPv6, or IPv4-mapped IPv6 from a dual-stack socket). */
  remoteAddress: string;
  /** Associations already active, not counting the one being admitted. */
  activeTotal: number;
  /** Associations already active for a peer AE title, not counting the one being admitted. */
  activeForPeer: (aeTitle: string) => number;
}

export interface ContextFilterResult {
  /** The proposed contexts that may be forwarded, unchanged (padding kept for byte-exact re-encoding). */
  allowed: PresentationContextRq[];
  /** The refused ones; abstractSyntax without its wire padding. */
  refused: { id: number; abstractSyntax: string }[];
}

export interface RoleSelection {
  sopClassUid: string;
  scuRole: number;
  scpRole: number;
}

export interface PeerPolicy {
  readonly aeTitle: string;
  readonly services: ReadonlySet<ServiceName>;
  /** peer.maxAssociations, or limits.maxAssociationsPerPeer when the peer sets none. */
  readonly maxAssociations: number;
  /**
   * Splits proposed presentation contexts into those this peer may use and those to refuse. A context is
   * allowed when its abstract syntax is in the peer's sopClasses, or is covered by one of its services; a
   * Storage SOP Class is covered by 'store', or by 'get' when the peer asks for the SCP role for that SOP
   * class by SCP/SCU Role Selection (it then receives C-GET's C-STORE sub-operations, PS3.7 D.3.3.4).
   */
  filterPresentationContexts(contexts: PresentationContextRq[], roles: RoleSelection[]): ContextFilterResult;
  /** True when the peer may name `destinationAeTitle` (padding removed) as C-MOVE destination. */
  mayMoveTo(destinationAeTitle: string): boolean;
  /**
   * True when the peer may send a message with this Command Field on a context of this abstract syntax.
   * Request commands need a service that covers the SOP class and defines the command (C-STORE-RQ on a
   * storage context needs 'store'; a 'get'-only peer has storage contexts but may only answer on them).
   * Responses are allowed on any abstract syntax the peer may negotiate. SOP classes listed in the peer's
   * sopClasses allow every command.
   */
  mayInvoke(abstractSyntax: string, commandField: number): boolean;
}

export interface ReturnAdmitRequest extends AdmitRequest {
  /** The identities of the certificate the caller presented on the return listener (verified by TLS). */
  identities: CertificateIdentities | null;
}

export type ReturnAdmitDecision =
  | { accepted: true; caller: PeerPolicy; destination: string; receiver: ReceiverConfig }
  | {
      accepted: false;
      refusal: ReturnAdmitRefusal;
      reject: RejectSpec;
      message: string;
      peerAeTitle: string | null;
    };

export interface Policy {
  readonly config: ProxyConfig;
  admit(req: AdmitRequest): AdmitDecision;
  /**
   * The return listener's decision: the calling AE must be bound to an identity the caller's certificate
   * carries (else 1/1/3), the called AE must be a peer with a receiver (else 1/1/7).
   */
  admitReturn(req: ReturnAdmitRequest): ReturnAdmitDecision;
  /** The compiled policy of a peer by AE title (padding removed), if configured. */
  peer(aeTitle: string): PeerPolicy | undefined;
  /**
   * True when a socket address is listed for someone on this listener: in a peer's `addresses` (forward)
   * or a caller's `addresses` (return; a caller without addresses lists none). Such addresses may use the
   * connections limits.pendingReservedForPeers keeps.
   */
  isKnownAddress(listener: ListenerKind, remoteAddress: string): boolean;
}

class CompiledPeer implements PeerPolicy {
  readonly aeTitle: string;
  readonly services: ReadonlySet<ServiceName>;
  readonly maxAssociations: number;
  readonly #ranges: readonly AddressRange[];
  readonly #moveDestinations: ReadonlySet<string>;
  readonly #sopClasses: ReadonlySet<string>;
  readonly #anyAddress: boolean;
  readonly #requests: Readonly<Record<ServiceName, ReadonlySet<number>>>;

  constructor(
    peer: Pick<PeerConfig, 'aeTitle' | 'services' | 'maxAssociations' | 'moveDestinations' | 'sopClasses'> & {
      addresses: string[] | null;
    },
    defaultMaxAssociations: number,
    requests: Readonly<Record<ServiceName, ReadonlySet<number>>> = SERVICE_REQUESTS,
  ) {
    this.#requests = requests;
    this.aeTitle = stripWirePadding(peer.aeTitle);
    this.services = new Set(peer.services);
    this.maxAssociations = peer.maxAssociations ?? defaultMaxAssociations;
    this.#anyAddress = peer.addresses === null;
    this.#ranges = (peer.addresses ?? []).map((text) => {
      const parsed = parseAddressRange(text.trim());
      if (!parsed.ok) throw new Error(`peer ${JSON.stringify(peer.aeTitle)}: ${parsed.message}`);
      return { address: parsed.address, prefix: parsed.prefix };
    });
    this.#moveDestinations = new Set(peer.moveDestinations.map(stripWirePadding));
    this.#sopClasses = new Set(peer.sopClasses.map(stripWirePadding));
    Object.freeze(this);
  }

  /** True when the socket address `remoteAddress` is in this peer's address list. */
  allowsAddress(remoteAddress: string): boolean {
    if (this.#anyAddress) return true;
    const address = parseRemoteAddress(remoteAddress);
    if (address === null) return false;
    return this.#ranges.some((range) => rangeContains(range, address));
  }

  filterPresentationContexts(contexts: PresentationContextRq[], roles: RoleSelection[]): ContextFilterResult {
    const scpRequested = new Set<string>();
    for (const role of roles) if (role.scpRole === 1) scpRequested.add(stripWirePadding(role.sopClassUid));
    const allowed: PresentationContextRq[] = [];
    const refused: { id: number; abstractSyntax: string }[] = [];
    for (const context of contexts) {
      const uid = stripWirePadding(context.abstractSyntax);
      if (this.#contextAllowed(uid, scpRequested.has(uid))) allowed.push(context);
      else refused.push({ id: context.id, abstractSyntax: uid });
    }
    return { allowed, refused };
  }

  mayMoveTo(destinationAeTitle: string): boolean {
    return this.#moveDestinations.has(stripWirePadding(destinationAeTitle));
  }

  mayInvoke(abstractSyntax: string, commandField: number): boolean {
    const uid = stripWirePadding(abstractSyntax);
    if (this.#sopClasses.has(uid)) return true;
    if (isResponseCommand(commandField)) return this.#contextAllowed(uid, true);
    return servicesForAbstractSyntax(uid).some(
      (service) => this.services.has(service) && this.#requests[service].has(commandField),
    );
  }

  #contextAllowed(uid: string, scpRoleRequested: boolean): boolean {
    if (this.#sopClasses.has(uid)) return true;
    if (isStorageSopClass(uid)) {
      return this.services.has('store') || (this.services.has('get') && scpRoleRequested);
    }
    return servicesForAbstractSyntax(uid).some((service) => this.services.has(service));
  }
}

/** The parsed ranges of address lists (validated by the schema: an entry that does not parse is skipped). */
function listedRanges(lists: ReadonlyArray<readonly string[] | null>): AddressRange[] {
  const out: AddressRange[] = [];
  for (const text of lists.flatMap((list) => list ?? [])) {
    const parsed = parseAddressRange(text.trim());
    if (parsed.ok) out.push({ address: parsed.address, prefix: parsed.prefix });
  }
  return out;
}

/**
 * Compiles a configuration snapshot into the decisions the proxy takes per association. Called once per
 * configuration load: address ranges, routes and SOP class sets are prepared here so that admit() and the
 * per-peer checks are cheap. Throws if the configuration is inconsistent (only possible for a hand-built
 * ProxyConfig; snapshots from parseConfig are already validated).
 */
export function compilePolicy(config: ProxyConfig): Policy {
  const peers = new Map<string, CompiledPeer>();
  for (const peer of Object.values(config.peers)) {
    const compiled = new CompiledPeer(peer, config.limits.maxAssociationsPerPeer);
    peers.set(compiled.aeTitle, compiled);
  }

  const routes = new Map<string, { route: RouteConfig; upstream: UpstreamConfig }>();
  for (const route of config.routes) {
    const upstream = Object.hasOwn(config.upstreams, route.upstream)
      ? config.upstreams[route.upstream]
      : undefined;
    if (upstream === undefined) {
      throw new Error(
        `route for ${JSON.stringify(route.calledAeTitle)} names unknown upstream "${route.upstream}"`,
      );
    }
    routes.set(stripWirePadding(route.calledAeTitle), { route, upstream });
  }

  const maxAssociations = config.limits.maxAssociations;

  // Return listener: each calling AE title bound to one certificate identity; destinations = receivers.
  const callers = new Map<string, { policy: CompiledPeer; identity: CertificateIdentity }>();
  for (const caller of config.returnListener?.callers ?? []) {
    for (const ae of caller.aeTitles) {
      const policy = new CompiledPeer(
        {
          aeTitle: ae,
          services: caller.services,
          maxAssociations: caller.maxAssociations,
          moveDestinations: [],
          sopClasses: [],
          addresses: caller.addresses,
        },
        config.limits.maxAssociationsPerPeer,
        CALLER_SERVICE_REQUESTS,
      );
      callers.set(policy.aeTitle, { policy, identity: caller.identity });
    }
  }
  const receivers = new Map<string, ReceiverConfig>();
  for (const peer of Object.values(config.peers)) {
    if (peer.receiver) receivers.set(stripWirePadding(peer.aeTitle), peer.receiver);
  }

  type Refused<R extends PolicyRefusal> = {
    accepted: false;
    refusal: R;
    reject: RejectSpec;
    message: string;
    peerAeTitle: string | null;
  };
  const refuse = <R extends PolicyRefusal>(
    refusal: R,
    reject: RejectSpec,
    message: string,
    peerAeTitle: string | null,
  ): Refused<R> => ({ accepted: false, refusal, reject, message, peerAeTitle });

  /** The association limits, the same on both listeners (PS3.8 9.3.4: 2/3/2 local limit exceeded). */
  const overLimit = (
    req: AdmitRequest,
    calling: string,
    peerLimit: number,
  ): Refused<'too-many-associations' | 'too-many-peer-associations'> | null => {
    const over = associationLimit({
      calling,
      activeTotal: req.activeTotal,
      activeForPeer: req.activeForPeer(calling),
      maxAssociations,
      peerLimit,
    });
    return over ? refuse(over.refusal, over.reject, over.message, calling) : null;
  };

  // The addresses each listener's peers are listed with (a caller without addresses lists none).
  const listed: Record<ListenerKind, AddressRange[]> = {
    forward: listedRanges(Object.values(config.peers).map((p) => p.addresses)),
    return: listedRanges((config.returnListener?.callers ?? []).map((c) => c.addresses)),
  };
  return Object.freeze({
    config,
    peer(aeTitle: string): PeerPolicy | undefined {
      return peers.get(stripWirePadding(aeTitle));
    },
    isKnownAddress(listener: ListenerKind, remoteAddress: string): boolean {
      const ranges = listed[listener];
      if (ranges.length === 0) return false;
      const address = parseRemoteAddress(remoteAddress);
      return address !== null && ranges.some((range) => rangeContains(range, address));
    },
    admit(req: AdmitRequest): AdmitDecision {
      const calling = stripWirePadding(req.callingAeTitle);
      const called = stripWirePadding(req.calledAeTitle);
      const peer = peers.get(calling);
      if (peer === undefined) {
        return refuse(
          'unknown-calling-ae',
          REJECTS.callingAeNotRecognized,
          `calling AE title ${JSON.stringify(calling)} is not a configured peer`,
          null,
        );
      }
      if (!peer.allowsAddress(req.remoteAddress)) {
        return refuse(
          'address-not-allowed',
          REJECTS.callingAeNotRecognized,
          `calling AE title ${JSON.stringify(calling)} is not allowed from address ${JSON.stringify(req.remoteAddress)}`,
          calling,
        );
      }
      const target = routes.get(called);
      if (target === undefined) {
        return refuse(
          'unknown-called-ae',
          REJECTS.calledAeNotRecognized,
          `called AE title ${JSON.stringify(called)} has no route`,
          calling,
        );
      }
      const limited = overLimit(req, calling, peer.maxAssociations);
      if (limited) return limited;
      return { accepted: true, peer, route: target.route, upstream: target.upstream };
    },
    admitReturn(req: ReturnAdmitRequest): ReturnAdmitDecision {
      const calling = stripWirePadding(req.callingAeTitle);
      const called = stripWirePadding(req.calledAeTitle);
      const caller = callers.get(calling);
      if (caller === undefined) {
        return refuse(
          'unknown-calling-ae',
          REJECTS.callingAeNotRecognized,
          `calling AE title ${JSON.stringify(calling)} is not a returnListener caller`,
          null,
        );
      }
      // The TLS layer already refused callers without a certificate from the configured CA; this is the
      // binding of the AE title (which anyone can type) to the identity the CA vouched for.
      if (req.identities === null) {
        return refuse(
          'no-client-certificate',
          REJECTS.callingAeNotRecognized,
          `calling AE title ${JSON.stringify(calling)} presented no certificate`,
          calling,
        );
      }
      if (!identityMatches(req.identities, caller.identity)) {
        return refuse(
          'certificate-identity-mismatch',
          REJECTS.callingAeNotRecognized,
          `calling AE title ${JSON.stringify(calling)} requires a certificate with ${caller.identity.kind} ${JSON.stringify(caller.identity.value)}; the caller's certificate (${req.identities.subject}) does not carry it`,
          calling,
        );
      }
      if (!caller.policy.allowsAddress(req.remoteAddress)) {
        return refuse(
          'address-not-allowed',
          REJECTS.callingAeNotRecognized,
          `calling AE title ${JSON.stringify(calling)} is not allowed from address ${JSON.stringify(req.remoteAddress)}`,
          calling,
        );
      }
      const receiver = receivers.get(called);
      if (receiver === undefined) {
        return refuse(
          'unknown-destination',
          REJECTS.calledAeNotRecognized,
          `called AE title ${JSON.stringify(called)} is not a peer with a receiver`,
          calling,
        );
      }
      const limited = overLimit(req, calling, caller.policy.maxAssociations);
      if (limited) return limited;
      return { accepted: true, caller: caller.policy, destination: called, receiver };
    },
  });
}

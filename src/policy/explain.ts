// "Would this modality be let in, and why not?" — the answer a compiled policy gives to a calling AE
// title from a source address calling an AE title, and to one request on that association, with the
// configuration key that decided. It runs the very decisions the relay takes (policy.ts admit(), the
// peer's presentation context filter, requests.ts), not a copy of them; only the live counts of the
// association limits are left out (explained as the limits that would apply).
import { CommandField, Status, commandName } from '../dimse/command.js';
import type { ServiceName } from '../config/types.js';
import { SERVICE_NAMES } from '../config/types.js';
import { stripWirePadding } from '../config/syntax.js';
import type { Policy } from './policy.js';
import { RequestPolicy } from './requests.js';
import { isStorageSopClass, sopClassesForService, VERIFICATION_SOP_CLASS } from './services.js';

export interface ExplainQuery {
  callingAeTitle: string;
  calledAeTitle: string;
  /** The modality's source address as the proxy would see it (after a PROXY protocol header). */
  remoteAddress: string;
  /** A service (echo, store, …) or a SOP Class UID; omitted: the association only. */
  service?: string | null;
  /** The C-MOVE destination AE title (with service move or a MOVE information model). */
  moveDestination?: string | null;
}

export interface AssociationAnswer {
  accepted: boolean;
  /** `A-ASSOCIATE-AC …` or `A-ASSOCIATE-RJ r/s/reason (…)`. */
  answer: string;
  /** The refusal code (the log's and metrics' name), null when accepted. */
  refusal: string | null;
  reason: string;
  /** The configuration key that decided. */
  rule: string;
}

export interface RequestAnswer {
  command: string;
  sopClassUid: string;
  allowed: boolean;
  /** What the modality gets. */
  answer: string;
  reason: string;
  rule: string;
}

export interface Explanation {
  association: AssociationAnswer;
  /** Absent without a service, or when the association itself is refused. */
  request?: RequestAnswer;
}

/** The request command a service's SOP class is used with (the first it defines, PS3.4). */
const SERVICE_COMMAND: Readonly<Record<ServiceName, number>> = {
  echo: CommandField.CEchoRq,
  store: CommandField.CStoreRq,
  find: CommandField.CFindRq,
  move: CommandField.CMoveRq,
  get: CommandField.CGetRq,
  worklist: CommandField.CFindRq,
  mpps: CommandField.NCreateRq,
  commitment: CommandField.NActionRq,
};

/** The SOP class a service is explained with when no SOP class is given (the common one of each). */
const EXAMPLE_SOP_CLASS: Readonly<Record<ServiceName, string>> = {
  echo: VERIFICATION_SOP_CLASS,
  store: '1.2.840.10008.5.1.4.1.1.2', // CT Image Storage
  find: '1.2.840.10008.5.1.4.1.2.2.1', // Study Root Query/Retrieve Information Model - FIND
  move: '1.2.840.10008.5.1.4.1.2.2.2', // Study Root Query/Retrieve Information Model - MOVE
  get: '1.2.840.10008.5.1.4.1.2.2.3', // Study Root Query/Retrieve Information Model - GET
  worklist: '1.2.840.10008.5.1.4.31', // Modality Worklist Information Model - FIND
  mpps: '1.2.840.10008.3.1.2.3.3', // Modality Performed Procedure Step
  commitment: '1.2.840.10008.1.20.1', // Storage Commitment Push Model
};

const isService = (s: string): s is ServiceName => (SERVICE_NAMES as readonly string[]).includes(s);

/** The SOP class and command a query's `service` stands for. */
function requestOf(service: string): { sopClassUid: string; commandField: number } {
  if (isService(service)) {
    return { sopClassUid: EXAMPLE_SOP_CLASS[service], commandField: SERVICE_COMMAND[service] };
  }
  // A SOP Class UID: the command its service class uses.
  const uid = stripWirePadding(service);
  if (uid === VERIFICATION_SOP_CLASS) return { sopClassUid: uid, commandField: CommandField.CEchoRq };
  if (isStorageSopClass(uid)) return { sopClassUid: uid, commandField: CommandField.CStoreRq };
  for (const s of ['move', 'get', 'find', 'worklist', 'mpps', 'commitment'] as const) {
    if (sopClassesForService(s).has(uid)) return { sopClassUid: uid, commandField: SERVICE_COMMAND[s] };
  }
  return { sopClassUid: uid, commandField: CommandField.CStoreRq };
}

const hex4 = (n: number): string => n.toString(16).toUpperCase().padStart(4, '0');

/** Explains what `policy` answers to `q` (pure; the policy is the running or a given one). */
export function explainQuery(policy: Policy, q: ExplainQuery): Explanation {
  const calling = stripWirePadding(q.callingAeTitle);
  const called = stripWirePadding(q.calledAeTitle);
  const decision = policy.admit({
    callingAeTitle: calling,
    calledAeTitle: called,
    remoteAddress: q.remoteAddress,
    activeTotal: 0,
    activeForPeer: () => 0,
  });
  if (!decision.accepted) {
    const r = decision.reject;
    const rule =
      decision.refusal === 'unknown-calling-ae'
        ? `peers (no entry ${JSON.stringify(calling)})`
        : decision.refusal === 'address-not-allowed'
          ? `peers.${calling}.addresses`
          : decision.refusal === 'unknown-called-ae'
            ? `routes[].calledAeTitle (none is ${JSON.stringify(called)})`
            : 'limits';
    return {
      association: {
        accepted: false,
        answer: `A-ASSOCIATE-RJ ${r.result}/${r.source}/${r.reason}`,
        refusal: decision.refusal,
        reason: decision.message,
        rule,
      },
    };
  }
  const peer = decision.peer;
  const config = policy.config;
  const peerLimit = config.peers[peer.aeTitle]?.maxAssociations ?? null;
  const association: AssociationAnswer = {
    accepted: true,
    answer: `A-ASSOCIATE-AC once the archive accepts (upstream ${decision.route.upstream}, called AE ${decision.upstream.aeTitle} at ${decision.upstream.host}:${decision.upstream.port})`,
    refusal: null,
    reason:
      `peer ${peer.aeTitle} is allowed from ${q.remoteAddress} and ${called} is routed; ` +
      `while ${peer.maxAssociations} association(s) of ${peer.aeTitle} or ${config.limits.maxAssociations} in all are open, more are refused 2/3/2`,
    rule: `peers.${peer.aeTitle}.addresses, routes[${called}]${peerLimit !== null ? `, peers.${peer.aeTitle}.maxAssociations` : ', limits.maxAssociationsPerPeer'}`,
  };
  if (!q.service) return { association };

  const { sopClassUid, commandField } = requestOf(q.service);
  const command = commandName(commandField);
  const services = `peers.${peer.aeTitle}.services [${[...peer.services].join(', ')}]`;
  const request = (allowed: boolean, answer: string, reason: string, rule: string): Explanation => ({
    association,
    request: { command, sopClassUid, allowed, answer, reason, rule },
  });
  const context = peer.filterPresentationContexts(
    [{ id: 1, abstractSyntax: sopClassUid, transferSyntaxes: [] }],
    [],
  );
  if (context.allowed.length === 0) {
    return request(
      false,
      'presentation context refused in the A-ASSOCIATE-AC (result 3, abstract syntax not supported, PS3.8 9.3.3.2); ' +
        'if it is the only one proposed: A-ASSOCIATE-RJ 1/1/1',
      `${sopClassUid} is not covered by the services of ${peer.aeTitle}`,
      `${services}, peers.${peer.aeTitle}.sopClasses`,
    );
  }
  const move = commandField === CommandField.CMoveRq;
  const d = new RequestPolicy(peer, () => true).decide(
    {
      commandField,
      commandDataSetType: 0x0101,
      messageId: 1,
      affectedSopClassUid: sopClassUid,
      ...(move ? { moveDestination: q.moveDestination ?? '' } : {}),
    },
    1,
    sopClassUid,
  );
  const moveRule = `peers.${peer.aeTitle}.moveDestinations`;
  if (d.kind === 'forward') {
    return request(
      true,
      'relayed to the archive; the modality gets the archive’s answer',
      move
        ? `${command} allowed and ${q.moveDestination ?? ''} is an allowed move destination`
        : `${command} on ${sopClassUid} is allowed`,
      move ? `${services}, ${moveRule}` : services,
    );
  }
  const status = d.kind === 'refuse' ? d.status : Status.RefusedNotAuthorized;
  const destinationUnknown = status === Status.MoveDestinationUnknown;
  return request(
    false,
    `${command.replace(/-RQ$/, '-RSP')} status 0x${hex4(status)} (${destinationUnknown ? 'Refused: Move Destination unknown' : 'Refused: Not Authorized'}) from the proxy; nothing reaches the archive`,
    d.reason,
    destinationUnknown ? moveRule : services,
  );
}

/** The explanation as an admin reads it. */
export function formatExplanation(q: ExplainQuery, e: Explanation): string {
  const lines = [
    `association ${stripWirePadding(q.callingAeTitle)}@${q.remoteAddress} -> ${stripWirePadding(q.calledAeTitle)}: ${e.association.accepted ? 'ACCEPT' : 'REJECT'}`,
    `  answer: ${e.association.answer}`,
    ...(e.association.refusal ? [`  refusal: ${e.association.refusal}`] : []),
    `  why:    ${e.association.reason}`,
    `  rule:   ${e.association.rule}`,
  ];
  if (e.request) {
    const r = e.request;
    lines.push(
      `${r.command} ${r.sopClassUid}: ${r.allowed ? 'ALLOW' : 'REFUSE'}`,
      `  answer: ${r.answer}`,
      `  why:    ${r.reason}`,
      `  rule:   ${r.rule}`,
    );
  }
  return `${lines.join('\n')}\n`;
}

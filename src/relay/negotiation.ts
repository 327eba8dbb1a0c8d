// A-ASSOCIATE negotiation of the relay, pure: what the proxy forwards to the acceptor and what it answers
// the requestor, computed from decoded PDUs (no sockets, timers, events or logging; the association
// decides what to do with the results). Policy stays in policy/: the caller passes the contexts
// `peer.filterPresentationContexts()` allowed and refused; this module only applies PS3.8.
//
// Roles: the proxy is the acceptor toward the requestor (the modality on the forward listener, the
// archive calling in on the return listener) and the requestor toward the acceptor (the archive, or the
// receiver on the return listener). Names below say "modality" and "archive" for the forward path.
//
// The flow, for the association to integrate:
//   1. checkPresentationContexts(rq)          -> the valid contexts (PS3.8 9.3.2.2); none left:
//                                                A-ASSOCIATE-RJ 1/1/1, never forwarded
//   2. peer.filterPresentationContexts(...)   -> { allowed, refused } (policy); none allowed: 1/1/1 as well
//   3. forwardRequest(rq, { contexts: allowed, ... })        -> the A-ASSOCIATE-RQ sent to the archive
//   4. answerRequestor(rq, ac, { forwarded, refused, ... })  -> the A-ASSOCIATE-AC sent to the modality,
//                                                               the accepted contexts and the AC's problems
//   5. maxLengths(forwarded, ac, ceiling)     -> the P-DATA-TF limit of each direction

import { PresentationContextResult } from '../pdu/constants.js';
import {
  aeTitleField,
  maxLengthOf,
  presentationContextsAc,
  presentationContextsRq,
  uidText,
  withMaxLength,
} from '../pdu/codec.js';
import type {
  AssociateItem,
  AssociatePdu,
  PresentationContextAc,
  PresentationContextRq,
} from '../pdu/types.js';

/** PS3.8 9.3.2.2: presentation context IDs are odd integers 1-255, so an association has at most 128. */
export const MAX_PRESENTATION_CONTEXTS = 128;
const MIN_CONTEXT_ID = 1;
const MAX_CONTEXT_ID = 255;
/** The PDU-length field is 4 bytes (PS3.8 9.3.1), so no maximum length can exceed it. */
const MAX_U32 = 0xffffffff;

/**
 * Why a proposed presentation context was dropped from an A-ASSOCIATE-RQ (PS3.8 9.3.2.2):
 * - out-of-range: the ID is not an integer 1-255 (ID 0 is reported here, not as even-id);
 * - even-id: the ID is even;
 * - duplicate-id: an earlier context of the request already has this ID (the first one is kept);
 * - too-many: 128 contexts were already kept, so every odd ID 1-255 is taken and this one can only repeat
 *   one of them (a requestor numbering more than 128 contexts wraps around the one-byte ID space).
 */
export const CONTEXT_PROBLEMS = ['out-of-range', 'even-id', 'duplicate-id', 'too-many'] as const;
export type ContextProblem = (typeof CONTEXT_PROBLEMS)[number];

export interface DroppedContext {
  id: number;
  problem: ContextProblem;
}

export interface CheckedContexts {
  /** The valid contexts, first occurrence of each ID, in proposal order. */
  contexts: PresentationContextRq[];
  /** The dropped context items, in proposal order. */
  dropped: DroppedContext[];
}

/**
 * The presentation contexts of an A-ASSOCIATE-RQ that PS3.8 allows, and the ones it does not.
 *
 * PS3.8 9.3.2.2 (Table 9-13): "Presentation-context-ID values shall be odd integers between 1 and 255";
 * 7.1.1.13: the requestor assigns an unused identifier to each proposed context, so IDs are unique within
 * the association. So a context is dropped when its ID is out of range, even, or repeats the ID of an
 * earlier context (the first occurrence is kept, whatever it proposes), and at most 128 contexts remain.
 *
 * The function only reports. A request left with no context at all must not be forwarded (the acceptor
 * would have nothing to answer): the caller refuses it with A-ASSOCIATE-RJ 1/1/1 (rejected-permanent,
 * service-user, no-reason-given; PS3.8 9.3.4 Table 9-21), reason 'no-valid-presentation-context'.
 * Dropped contexts are not answered in the A-ASSOCIATE-AC: a duplicate's ID is answered once, for its
 * first occurrence, and an invalid ID cannot be answered at all.
 *
 * Note that decodePdu() already rejects an even ID (0 included) as an invalid PDU parameter value, which
 * PS3.8 Table 9-10 answers with A-ABORT (Evt19, AA-1); here even and out-of-range IDs are only reported
 * for PDUs built in memory. Duplicates and more than 128 contexts decode and are dropped here.
 */
export function checkPresentationContexts(rq: AssociatePdu): CheckedContexts {
  const contexts: PresentationContextRq[] = [];
  const dropped: DroppedContext[] = [];
  const seen = new Set<number>();
  for (const context of presentationContextsRq(rq)) {
    const problem = contextIdProblem(context.id, seen);
    if (problem !== null) {
      dropped.push({ id: context.id, problem });
      continue;
    }
    seen.add(context.id);
    contexts.push(context);
  }
  return { contexts, dropped };
}

function contextIdProblem(id: number, seen: ReadonlySet<number>): ContextProblem | null {
  if (!Number.isInteger(id) || id < MIN_CONTEXT_ID || id > MAX_CONTEXT_ID) return 'out-of-range';
  if (id % 2 === 0) return 'even-id';
  if (seen.size >= MAX_PRESENTATION_CONTEXTS) return 'too-many';
  if (seen.has(id)) return 'duplicate-id';
  return null;
}

/**
 * The maximum length the proxy advertises for `requested` (PS3.8 D.1, Tables D.1-1 and D.1-2): the
 * requested value, lowered to the proxy's `ceiling`. A requested 0 means "no maximum length is specified"
 * and an absent sub-item gives no limit either: both become the ceiling, so the proxy never advertises
 * unlimited. `ceiling` is the proxy's own limit (limits.maxPduLength), an integer 1 to 2^32-1.
 */
export function capMaxLength(requested: number | undefined, ceiling: number): number {
  if (!Number.isInteger(ceiling) || ceiling < 1 || ceiling > MAX_U32) {
    throw new RangeError(`maximum PDU length ceiling ${ceiling} is not an integer 1-${MAX_U32}`);
  }
  if (requested === undefined || requested === 0) return ceiling;
  return Math.min(requested, ceiling);
}

export interface ForwardOptions {
  /** The contexts to forward: the ones policy allowed out of checkPresentationContexts(rq).contexts. */
  contexts: readonly PresentationContextRq[];
  /** The acceptor's AE title, written into the called AE field (unpadded; aeTitleField pads it). */
  calledAeTitle: string;
  /** The calling AE title toward the acceptor, or null to forward the requestor's field as received. */
  callingAeTitle: string | null;
  /** The proxy's maximum PDU length (limits.maxPduLength). */
  ceiling: number;
}

/**
 * The A-ASSOCIATE-RQ the proxy sends to the acceptor (PS3.8 9.3.2), built from the one it received:
 * - presentation context items (9.3.2.2): only those of `contexts`, each at the position of its ID's first
 *   occurrence in `rq`, as given (so a narrowed transfer syntax list is honoured); every dropped, refused
 *   or repeated item is removed, and an ID that is not a valid odd 1-255 is never emitted;
 * - called AE title rewritten to `calledAeTitle`, calling AE title to `callingAeTitle` when given
 *   (9.3.2, Table 9-11: 16 characters, space padded);
 * - maximum length sub-item (D.1, Table D.1-1) set to capMaxLength(requested, ceiling): this bounds what
 *   the acceptor may send, so everything the proxy must frame from it stays under its ceiling;
 * - every other item (application context, user information sub-items, unknown items, 9.3.1: kept for
 *   the acceptor to interpret) and the protocol version and reserved fields intact and in order.
 *
 * Throws (an Error, not a PduError: the caller broke the contract) when no context would remain; such a
 * request is refused 1/1/1 instead (see checkPresentationContexts).
 */
export function forwardRequest(rq: AssociatePdu, options: ForwardOptions): AssociatePdu {
  const allowed = new Map<number, PresentationContextRq>();
  for (const c of options.contexts) if (!allowed.has(c.id)) allowed.set(c.id, c);
  const emitted = new Set<number>();
  const items: AssociateItem[] = [];
  for (const it of rq.items) {
    if (it.kind !== 'presentation-context-rq') {
      items.push(it);
      continue;
    }
    const id = it.context.id;
    const context = allowed.get(id);
    if (context === undefined || emitted.has(id) || contextIdProblem(id, emitted) !== null) continue;
    emitted.add(id);
    items.push({
      kind: 'presentation-context-rq',
      context: { ...context, transferSyntaxes: [...context.transferSyntaxes] },
    });
  }
  if (emitted.size === 0) {
    throw new Error(
      'forwardRequest: no presentation context left to forward (the request is refused 1/1/1 instead)',
    );
  }
  return withMaxLength(
    {
      ...rq,
      calledAeTitle: aeTitleField(options.calledAeTitle),
      callingAeTitle:
        options.callingAeTitle === null ? rq.callingAeTitle : aeTitleField(options.callingAeTitle),
      items,
    },
    capMaxLength(maxLengthOf(rq), options.ceiling),
  );
}

/**
 * What is wrong with an answer in the acceptor's A-ASSOCIATE-AC (PS3.8 9.3.3.2); such an answer is not
 * relayed:
 * - not-forwarded: an answer for a context ID the forwarded request did not propose;
 * - duplicate-answer: a second answer for the same ID (the first is used);
 * - transfer-syntax-not-proposed: an acceptance whose transfer syntax is not one the request proposed for
 *   that context (the acceptor selects one transfer syntax out of those proposed, 7.1.1.14);
 * - not-answered: a forwarded context the AC has no answer for.
 * The requestor gets result 2 (no-reason, provider rejection) for a forwarded context whose answer was
 * missing or not relayed.
 */
export const ANSWER_PROBLEMS = [
  'not-forwarded',
  'duplicate-answer',
  'transfer-syntax-not-proposed',
  'not-answered',
] as const;
export type AnswerProblem = (typeof ANSWER_PROBLEMS)[number];

export interface AnswerIssue {
  id: number;
  problem: AnswerProblem;
  /** One line for the log, naming the ID (and the transfer syntax when that is the problem). */
  message: string;
}

export interface AcceptedContext {
  /** Without wire padding (uidText). */
  abstractSyntax: string;
  /** Without wire padding (uidText). */
  transferSyntax: string;
}

export interface AnswerOptions {
  /** The A-ASSOCIATE-RQ that was sent to the acceptor (forwardRequest's result). */
  forwarded: AssociatePdu;
  /** The contexts policy refused (only their IDs are used): answered 3, abstract-syntax-not-supported. */
  refused: ReadonlyArray<{ readonly id: number }>;
  /** The proxy's maximum PDU length (limits.maxPduLength). */
  ceiling: number;
}

export interface Answer {
  /** The A-ASSOCIATE-AC for the requestor. */
  ac: AssociatePdu;
  /** The accepted contexts by ID: what P-DATA-TF on this association may use. */
  accepted: Map<number, AcceptedContext>;
  /** The answers of the acceptor's AC that were not relayed, and the contexts it did not answer. */
  problems: AnswerIssue[];
}

/**
 * The A-ASSOCIATE-AC the proxy sends to the requestor (PS3.8 9.3.3), built from the acceptor's `ac`:
 * - called and calling AE fields and the 32 reserved bytes back as the requestor sent them in `rq`
 *   (9.3.3, Table 9-17: "sent with a value identical to the value received in the same field of the
 *   A-ASSOCIATE-RQ PDU"), whatever the acceptor echoed for the rewritten request;
 * - one answer per valid context of `rq` (checkPresentationContexts), with its original ID, in the order
 *   the requestor proposed them (7.1.1.13): a forwarded context gets the acceptor's answer as received,
 *   or result 2 no-reason (provider rejection) when the acceptor gave none or an answer that is not
 *   relayed (see ANSWER_PROBLEMS); a refused context gets result 3 abstract-syntax-not-supported (provider
 *   rejection); a context neither forwarded nor refused gets result 2 (Table 9-18 result/reason values).
 *   Rejections written by the proxy omit the transfer syntax sub-item, whose value "shall not be tested"
 *   when the result is not acceptance (Table 9-18), as before;
 * - those answers placed where the acceptor's first presentation context item was (before the user
 *   information item, or last, when it had none); every other item intact and in order;
 * - the maximum length sub-item (D.1, Table D.1-2) set to capMaxLength(acceptor's value, ceiling), which
 *   bounds what the requestor may send.
 * `accepted` holds the contexts answered with result 0 (acceptance) that passed the checks: the abstract
 * syntax the request proposed and the transfer syntax the acceptor selected.
 */
export function answerRequestor(rq: AssociatePdu, ac: AssociatePdu, options: AnswerOptions): Answer {
  const forwarded = new Map<number, PresentationContextRq>();
  for (const c of presentationContextsRq(options.forwarded)) if (!forwarded.has(c.id)) forwarded.set(c.id, c);
  const refused = new Set(options.refused.map((r) => r.id));
  const problems: AnswerIssue[] = [];

  // The acceptor's answers, checked: the first answer per forwarded ID counts (null: not relayed).
  const answers = new Map<number, PresentationContextAc | null>();
  for (const answer of presentationContextsAc(ac)) {
    const id = answer.id;
    const proposed = forwarded.get(id);
    if (proposed === undefined) {
      problems.push({
        id,
        problem: 'not-forwarded',
        message: `presentation context ${id}: answered (result ${answer.result}) but not proposed to the acceptor`,
      });
    } else if (answers.has(id)) {
      problems.push({
        id,
        problem: 'duplicate-answer',
        message: `presentation context ${id}: a second answer (result ${answer.result}) is ignored`,
      });
    } else if (
      answer.result === PresentationContextResult.Acceptance &&
      !proposed.transferSyntaxes.some((ts) => uidText(ts) === uidText(answer.transferSyntax))
    ) {
      problems.push({
        id,
        problem: 'transfer-syntax-not-proposed',
        message: `presentation context ${id}: accepted with transfer syntax ${JSON.stringify(uidText(answer.transferSyntax))}, which was not proposed for it`,
      });
      answers.set(id, null);
    } else {
      answers.set(id, answer);
    }
  }

  const accepted = new Map<number, AcceptedContext>();
  const ordered: AssociateItem[] = [];
  for (const c of checkPresentationContexts(rq).contexts) {
    const proposed = forwarded.get(c.id);
    let answer: PresentationContextAc;
    if (proposed !== undefined) {
      const given = answers.get(c.id);
      if (given === undefined) {
        problems.push({
          id: c.id,
          problem: 'not-answered',
          message: `presentation context ${c.id}: not answered by the acceptor`,
        });
      }
      answer = given ? { ...given } : rejection(c.id, PresentationContextResult.NoReason);
      if (answer.result === PresentationContextResult.Acceptance) {
        accepted.set(c.id, {
          abstractSyntax: uidText(proposed.abstractSyntax),
          transferSyntax: uidText(answer.transferSyntax),
        });
      }
    } else {
      answer = rejection(
        c.id,
        refused.has(c.id)
          ? PresentationContextResult.AbstractSyntaxNotSupported
          : PresentationContextResult.NoReason,
      );
    }
    ordered.push({ kind: 'presentation-context-ac', context: answer });
  }

  const items: AssociateItem[] = [];
  let placed = false;
  for (const it of ac.items) {
    if (it.kind === 'presentation-context-ac') {
      if (!placed) items.push(...ordered);
      placed = true;
      continue;
    }
    if (it.kind === 'user-information' && !placed) {
      items.push(...ordered);
      placed = true;
    }
    items.push(it);
  }
  if (!placed) items.push(...ordered);

  const back = withMaxLength(
    {
      ...ac,
      calledAeTitle: rq.calledAeTitle,
      callingAeTitle: rq.callingAeTitle,
      reserved: rq.reserved,
      items,
    },
    capMaxLength(maxLengthOf(ac), options.ceiling),
  );
  return { ac: back, accepted, problems };
}

function rejection(id: number, result: number): PresentationContextAc {
  return { id, result, transferSyntax: '' };
}

export interface MaxLengths {
  /** The largest PDU-length field value of a P-DATA-TF the modality may send (toward the archive). */
  towardArchive: number;
  /** The largest PDU-length field value of a P-DATA-TF the archive may send (toward the modality). */
  towardModality: number;
}

/**
 * The P-DATA-TF limit of each direction once the association is established. A side may send P-DATA-TF
 * PDUs up to the maximum length the *receiving* side advertised (PS3.8 D.1): the modality receives the
 * AC the proxy sends it, so it may send up to capMaxLength(maxLengthOf(ac), ceiling); the archive receives
 * the forwarded RQ, so it may send up to capMaxLength(maxLengthOf(rq), ceiling). Pass the PDUs either as
 * received or as sent: capMaxLength of a capped value is the same value.
 *
 * The unit is the PDU-length field (PS3.8 9.3.1, Table 9-22: the bytes after the 6-byte PDU header, so
 * the PDV items including their 4-byte item-length fields), not the sum of the PDV values: Tables D.1-1
 * and D.1-2 say the maximum length "shall never be exceeded by the PDU length values used in the
 * PDU-length field of the P-DATA-TF PDUs received". That is what PDataScanner compares
 * (`length > maxPDataLength` on the header's length field), so its limit per direction is this value.
 * A P-DATA-TF over it is a protocol error: A-ABORT 2/6 to the sender and A-ABORT to the other side.
 * On the return listener read "archive" as the receiver (acceptor) and "modality" as the calling archive.
 */
export function maxLengths(rq: AssociatePdu, ac: AssociatePdu, ceiling: number): MaxLengths {
  return {
    towardArchive: capMaxLength(maxLengthOf(ac), ceiling),
    towardModality: capMaxLength(maxLengthOf(rq), ceiling),
  };
}

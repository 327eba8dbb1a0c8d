// DIMSE command sets (PS3.7 section 9.3 / 10.3 and Annex E): always Implicit VR Little Endian, group 0000.
// The proxy decodes command sets to follow each message; it never parses data sets.

export const CommandField = {
  CStoreRq: 0x0001,
  CStoreRsp: 0x8001,
  CGetRq: 0x0010,
  CGetRsp: 0x8010,
  CFindRq: 0x0020,
  CFindRsp: 0x8020,
  CMoveRq: 0x0021,
  CMoveRsp: 0x8021,
  CEchoRq: 0x0030,
  CEchoRsp: 0x8030,
  NEventReportRq: 0x0100,
  NEventReportRsp: 0x8100,
  NGetRq: 0x0110,
  NGetRsp: 0x8110,
  NSetRq: 0x0120,
  NSetRsp: 0x8120,
  NActionRq: 0x0130,
  NActionRsp: 0x8130,
  NCreateRq: 0x0140,
  NCreateRsp: 0x8140,
  NDeleteRq: 0x0150,
  NDeleteRsp: 0x8150,
  CCancelRq: 0x0fff,
} as const;

/** PS3.7 E.1: Command Data Set Type value meaning "no data set". */
export const NO_DATA_SET = 0x0101;

/** Status codes the proxy itself may send (PS3.7 Annex C and C.4.2.1.4 for C-MOVE). Never a success. */
export const Status = {
  Success: 0x0000,
  RefusedNotAuthorized: 0x0124,
  MoveDestinationUnknown: 0xa801,
  ProcessingFailure: 0x0110,
} as const;

const NAMES: Record<number, string> = {
  0x0001: 'C-STORE-RQ',
  0x8001: 'C-STORE-RSP',
  0x0010: 'C-GET-RQ',
  0x8010: 'C-GET-RSP',
  0x0020: 'C-FIND-RQ',
  0x8020: 'C-FIND-RSP',
  0x0021: 'C-MOVE-RQ',
  0x8021: 'C-MOVE-RSP',
  0x0030: 'C-ECHO-RQ',
  0x8030: 'C-ECHO-RSP',
  0x0100: 'N-EVENT-REPORT-RQ',
  0x8100: 'N-EVENT-REPORT-RSP',
  0x0110: 'N-GET-RQ',
  0x8110: 'N-GET-RSP',
  0x0120: 'N-SET-RQ',
  0x8120: 'N-SET-RSP',
  0x0130: 'N-ACTION-RQ',
  0x8130: 'N-ACTION-RSP',
  0x0140: 'N-CREATE-RQ',
  0x8140: 'N-CREATE-RSP',
  0x0150: 'N-DELETE-RQ',
  0x8150: 'N-DELETE-RSP',
  0x0fff: 'C-CANCEL-RQ',
};

export function commandName(field: number): string {
  return NAMES[field] ?? `UNKNOWN(0x${field.toString(16).padStart(4, '0')})`;
}

export function isResponse(field: number): boolean {
  return (field & 0x8000) !== 0;
}

/** Status class per PS3.7 Annex C. */
export type StatusClass = 'success' | 'warning' | 'failure' | 'cancel' | 'pending';
export function statusClass(status: number): StatusClass {
  if (status === 0x0000) return 'success';
  if (status === 0xfe00) return 'cancel';
  if (status === 0xff00 || status === 0xff01) return 'pending';
  if (status === 0x0001 || status === 0x0107 || status === 0x0116 || (status & 0xf000) === 0xb000)
    return 'warning';
  return 'failure';
}

// Tags (element numbers in group 0000), PS3.7 E.1.
const T = {
  GroupLength: 0x0000,
  AffectedSopClassUid: 0x0002,
  RequestedSopClassUid: 0x0003,
  CommandField: 0x0100,
  MessageId: 0x0110,
  MessageIdBeingRespondedTo: 0x0120,
  MoveDestination: 0x0600,
  Priority: 0x0700,
  CommandDataSetType: 0x0800,
  Status: 0x0900,
  ErrorComment: 0x0902,
  AffectedSopInstanceUid: 0x1000,
  RequestedSopInstanceUid: 0x1001,
  EventTypeId: 0x1002,
  ActionTypeId: 0x1008,
  RemainingSubOperations: 0x1020,
  CompletedSubOperations: 0x1021,
  FailedSubOperations: 0x1022,
  WarningSubOperations: 0x1023,
  MoveOriginatorAeTitle: 0x1030,
  MoveOriginatorMessageId: 0x1031,
} as const;

export interface CommandSet {
  commandField: number;
  messageId?: number;
  messageIdBeingRespondedTo?: number;
  affectedSopClassUid?: string;
  requestedSopClassUid?: string;
  affectedSopInstanceUid?: string;
  requestedSopInstanceUid?: string;
  moveDestination?: string;
  priority?: number;
  commandDataSetType: number;
  status?: number;
  errorComment?: string;
  eventTypeId?: number;
  actionTypeId?: number;
  remaining?: number;
  completed?: number;
  failed?: number;
  warning?: number;
  moveOriginatorAeTitle?: string;
  moveOriginatorMessageId?: number;
}

export class CommandError extends Error {
  readonly code = 'INVALID_COMMAND_SET';
  constructor(message: string) {
    super(message);
    this.name = 'CommandError';
  }
}

/** Text value with trailing NUL/space padding removed (UI is NUL padded, AE/LO space padded). */
function text(buf: Buffer, start: number, end: number): string {
  let e = end;
  while (e > start && (buf[e - 1] === 0 || buf[e - 1] === 0x20)) e--;
  let s = start;
  while (s < e && buf[s] === 0x20) s++;
  return buf.toString('latin1', s, e);
}

/** A US element's value; its length must be 2. */
function us(buf: Buffer, element: number, v: number, length: number): number {
  if (length !== 2) throw new CommandError(`element (0000,${hex4(element)}) US length ${length}, expected 2`);
  return buf.readUInt16LE(v);
}

/**
 * Decode a whole command set (all command fragments joined). Throws CommandError naming the element.
 * Runs twice per relayed message (request and response): it reads into locals, with no closure per
 * element, and builds the result once in a fixed property order, so messages of one kind share one
 * object shape (absent elements are simply not set).
 */
export function decodeCommand(buf: Buffer): CommandSet {
  let commandField = -1;
  let dataSetType = -1;
  let messageId: number | undefined;
  let messageIdBeingRespondedTo: number | undefined;
  let affectedSopClassUid: string | undefined;
  let requestedSopClassUid: string | undefined;
  let affectedSopInstanceUid: string | undefined;
  let requestedSopInstanceUid: string | undefined;
  let moveDestination: string | undefined;
  let priority: number | undefined;
  let status: number | undefined;
  let errorComment: string | undefined;
  let eventTypeId: number | undefined;
  let actionTypeId: number | undefined;
  let remaining: number | undefined;
  let completed: number | undefined;
  let failed: number | undefined;
  let warning: number | undefined;
  let moveOriginatorAeTitle: string | undefined;
  let moveOriginatorMessageId: number | undefined;
  const n = buf.length;
  let pos = 0;
  while (pos < n) {
    if (pos + 8 > n) throw new CommandError(`command set truncated in an element header at offset ${pos}`);
    const group = buf.readUInt16LE(pos);
    const element = buf.readUInt16LE(pos + 2);
    const length = buf.readUInt32LE(pos + 4);
    const v = pos + 8;
    if (group !== 0x0000) {
      throw new CommandError(
        `element (${hex4(group)},${hex4(element)}) at offset ${pos} is not in group 0000`,
      );
    }
    if (length > n - v) {
      throw new CommandError(
        `element (0000,${hex4(element)}) length ${length} exceeds the ${n - v} bytes left in the command set`,
      );
    }
    switch (element) {
      case T.AffectedSopClassUid:
        affectedSopClassUid = text(buf, v, v + length);
        break;
      case T.RequestedSopClassUid:
        requestedSopClassUid = text(buf, v, v + length);
        break;
      case T.CommandField:
        commandField = us(buf, element, v, length);
        break;
      case T.MessageId:
        messageId = us(buf, element, v, length);
        break;
      case T.MessageIdBeingRespondedTo:
        messageIdBeingRespondedTo = us(buf, element, v, length);
        break;
      case T.MoveDestination:
        moveDestination = text(buf, v, v + length);
        break;
      case T.Priority:
        priority = us(buf, element, v, length);
        break;
      case T.CommandDataSetType:
        dataSetType = us(buf, element, v, length);
        break;
      case T.Status:
        status = us(buf, element, v, length);
        break;
      case T.ErrorComment:
        errorComment = text(buf, v, v + length);
        break;
      case T.AffectedSopInstanceUid:
        affectedSopInstanceUid = text(buf, v, v + length);
        break;
      case T.RequestedSopInstanceUid:
        requestedSopInstanceUid = text(buf, v, v + length);
        break;
      case T.EventTypeId:
        eventTypeId = us(buf, element, v, length);
        break;
      case T.ActionTypeId:
        actionTypeId = us(buf, element, v, length);
        break;
      case T.RemainingSubOperations:
        remaining = us(buf, element, v, length);
        break;
      case T.CompletedSubOperations:
        completed = us(buf, element, v, length);
        break;
      case T.FailedSubOperations:
        failed = us(buf, element, v, length);
        break;
      case T.WarningSubOperations:
        warning = us(buf, element, v, length);
        break;
      case T.MoveOriginatorAeTitle:
        moveOriginatorAeTitle = text(buf, v, v + length);
        break;
      case T.MoveOriginatorMessageId:
        moveOriginatorMessageId = us(buf, element, v, length);
        break;
      default:
        break; // group length and elements the proxy does not need are skipped, never rewritten
    }
    pos = v + length;
  }
  if (commandField < 0) throw new CommandError('command set has no Command Field (0000,0100)');
  if (dataSetType < 0) throw new CommandError('command set has no Command Data Set Type (0000,0800)');
  const out: CommandSet = { commandField, commandDataSetType: dataSetType };
  if (messageId !== undefined) out.messageId = messageId;
  if (messageIdBeingRespondedTo !== undefined) out.messageIdBeingRespondedTo = messageIdBeingRespondedTo;
  if (affectedSopClassUid !== undefined) out.affectedSopClassUid = affectedSopClassUid;
  if (requestedSopClassUid !== undefined) out.requestedSopClassUid = requestedSopClassUid;
  if (affectedSopInstanceUid !== undefined) out.affectedSopInstanceUid = affectedSopInstanceUid;
  if (requestedSopInstanceUid !== undefined) out.requestedSopInstanceUid = requestedSopInstanceUid;
  if (moveDestination !== undefined) out.moveDestination = moveDestination;
  if (priority !== undefined) out.priority = priority;
  if (status !== undefined) out.status = status;
  if (errorComment !== undefined) out.errorComment = errorComment;
  if (eventTypeId !== undefined) out.eventTypeId = eventTypeId;
  if (actionTypeId !== undefined) out.actionTypeId = actionTypeId;
  if (remaining !== undefined) out.remaining = remaining;
  if (completed !== undefined) out.completed = completed;
  if (failed !== undefined) out.failed = failed;
  if (warning !== undefined) out.warning = warning;
  if (moveOriginatorAeTitle !== undefined) out.moveOriginatorAeTitle = moveOriginatorAeTitle;
  if (moveOriginatorMessageId !== undefined) out.moveOriginatorMessageId = moveOriginatorMessageId;
  return out;
}

export function hasDataSet(cmd: CommandSet): boolean {
  return cmd.commandDataSetType !== NO_DATA_SET;
}

function hex4(n: number): string {
  return n.toString(16).padStart(4, '0');
}

type ElementValue =
  { tag: number; kind: 'UI' | 'AE' | 'LO'; value: string } | { tag: number; kind: 'US'; value: number };

function encodeElements(elements: ElementValue[]): Buffer {
  const parts: Buffer[] = [];
  let total = 0;
  for (const el of elements) {
    let value: Buffer;
    if (el.kind === 'US') {
      value = Buffer.alloc(2);
      value.writeUInt16LE(el.value);
    } else {
      const pad = el.kind === 'UI' ? '\0' : ' ';
      const s = el.value.length % 2 === 1 ? el.value + pad : el.value;
      value = Buffer.from(s, 'latin1');
    }
    const header = Buffer.alloc(8);
    header.writeUInt16LE(0x0000, 0);
    header.writeUInt16LE(el.tag, 2);
    header.writeUInt32LE(value.length, 4);
    parts.push(header, value);
    total += 8 + value.length;
  }
  const groupLength = Buffer.alloc(12);
  groupLength.writeUInt16LE(0x0000, 0);
  groupLength.writeUInt16LE(T.GroupLength, 2);
  groupLength.writeUInt32LE(4, 4);
  groupLength.writeUInt32LE(total, 8);
  return Buffer.concat([groupLength, ...parts]);
}

/**
 * Encode the failure response the proxy sends itself when policy refuses a request (PS3.7 9.3 / 10.3).
 * It carries no data set and never a success status.
 */
export function encodeRefusalResponse(request: CommandSet, status: number, comment: string): Buffer {
  if (status === Status.Success) throw new Error('the proxy never fabricates a success response');
  const elements: ElementValue[] = [];
  const sopClass = request.affectedSopClassUid ?? request.requestedSopClassUid;
  if (sopClass !== undefined) elements.push({ tag: T.AffectedSopClassUid, kind: 'UI', value: sopClass });
  elements.push({ tag: T.CommandField, kind: 'US', value: request.commandField | 0x8000 });
  elements.push({ tag: T.MessageIdBeingRespondedTo, kind: 'US', value: request.messageId ?? 0 });
  elements.push({ tag: T.CommandDataSetType, kind: 'US', value: NO_DATA_SET });
  elements.push({ tag: T.Status, kind: 'US', value: status });
  elements.push({ tag: T.ErrorComment, kind: 'LO', value: comment.slice(0, 64) });
  const sopInstance = request.affectedSopInstanceUid ?? request.requestedSopInstanceUid;
  if (sopInstance !== undefined)
    elements.push({ tag: T.AffectedSopInstanceUid, kind: 'UI', value: sopInstance });
  if (request.commandField === CommandField.CMoveRq || request.commandField === CommandField.CGetRq) {
    elements.push({ tag: T.RemainingSubOperations, kind: 'US', value: 0 });
    elements.push({ tag: T.CompletedSubOperations, kind: 'US', value: 0 });
    elements.push({ tag: T.FailedSubOperations, kind: 'US', value: 0 });
    elements.push({ tag: T.WarningSubOperations, kind: 'US', value: 0 });
  }
  elements.sort((a, b) => a.tag - b.tag);
  return encodeElements(elements);
}

/** Encode a request command set (used by tests and the troubleshooting tools). */
export function encodeCommand(cmd: CommandSet): Buffer {
  const elements: ElementValue[] = [];
  const ui = (tag: number, v: string | undefined): void => {
    if (v !== undefined) elements.push({ tag, kind: 'UI', value: v });
  };
  const us = (tag: number, v: number | undefined): void => {
    if (v !== undefined) elements.push({ tag, kind: 'US', value: v });
  };
  ui(T.AffectedSopClassUid, cmd.affectedSopClassUid);
  ui(T.RequestedSopClassUid, cmd.requestedSopClassUid);
  us(T.CommandField, cmd.commandField);
  us(T.MessageId, cmd.messageId);
  us(T.MessageIdBeingRespondedTo, cmd.messageIdBeingRespondedTo);
  if (cmd.moveDestination !== undefined)
    elements.push({ tag: T.MoveDestination, kind: 'AE', value: cmd.moveDestination });
  us(T.Priority, cmd.priority);
  us(T.CommandDataSetType, cmd.commandDataSetType);
  us(T.Status, cmd.status);
  if (cmd.errorComment !== undefined)
    elements.push({ tag: T.ErrorComment, kind: 'LO', value: cmd.errorComment });
  ui(T.AffectedSopInstanceUid, cmd.affectedSopInstanceUid);
  ui(T.RequestedSopInstanceUid, cmd.requestedSopInstanceUid);
  us(T.EventTypeId, cmd.eventTypeId); // PS3.7 10.3.1 N-EVENT-REPORT
  us(T.ActionTypeId, cmd.actionTypeId); // PS3.7 10.3.4 N-ACTION
  us(T.RemainingSubOperations, cmd.remaining);
  us(T.CompletedSubOperations, cmd.completed);
  us(T.FailedSubOperations, cmd.failed);
  us(T.WarningSubOperations, cmd.warning);
  if (cmd.moveOriginatorAeTitle !== undefined)
    elements.push({ tag: T.MoveOriginatorAeTitle, kind: 'AE', value: cmd.moveOriginatorAeTitle });
  us(T.MoveOriginatorMessageId, cmd.moveOriginatorMessageId);
  elements.sort((a, b) => a.tag - b.tag);
  return encodeElements(elements);
}

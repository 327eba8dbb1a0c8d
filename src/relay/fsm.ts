// The DICOM Upper Layer state machine, PS3.8 9.2: states (Table 9-1... Sta1–Sta13), events (Evt1–Evt19),
// actions (Tables 9-6 to 9-9: AE-, DT-, AR-, AA-) and the state transition table (Table 9-10), as data.
//
// The proxy runs one machine per leg: toward the modality (or, on the return listener, the calling archive)
// it is the association ACCEPTOR; toward the archive (or the receiver) it is the association REQUESTOR.
// What one leg indicates (an A-RELEASE indication, an A-P-ABORT indication...) becomes a request or a
// response primitive on the other leg: that pairing is the relay's job (association.ts). This module is
// pure: no sockets, no timers, no I/O. Nothing else in the relay decides what a PDU means in a state.

/** PS3.8 9.2.1 Table 9-1... the states of one leg. */
export const UL_STATES = [
  'Sta1', // Idle (no transport connection)
  'Sta2', // Transport connection open (awaiting A-ASSOCIATE-RQ PDU)
  'Sta3', // Awaiting local A-ASSOCIATE response primitive (the proxy: awaiting the archive's answer)
  'Sta4', // Awaiting transport connection opening to complete
  'Sta5', // Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU
  'Sta6', // Association established and ready for data transfer
  'Sta7', // Awaiting A-RELEASE-RP PDU
  'Sta8', // Awaiting local A-RELEASE response primitive
  'Sta9', // Release collision requestor side; awaiting A-RELEASE response primitive
  'Sta10', // Release collision acceptor side; awaiting A-RELEASE-RP PDU
  'Sta11', // Release collision requestor side; awaiting A-RELEASE-RP PDU
  'Sta12', // Release collision acceptor side; awaiting A-RELEASE response primitive
  'Sta13', // Awaiting transport connection close indication (association no longer exists)
] as const;
export type UlState = (typeof UL_STATES)[number];

/** PS3.8 9.2.2 Table 9-2: the events, named for what happened. */
export const UL_EVENTS = {
  'associate-request': 'Evt1', // A-ASSOCIATE request (local user)
  'transport-connected': 'Evt2', // Transport connect confirmation
  'associate-ac-pdu': 'Evt3', // A-ASSOCIATE-AC PDU received
  'associate-rj-pdu': 'Evt4', // A-ASSOCIATE-RJ PDU received
  'transport-indication': 'Evt5', // Transport connection indication (an incoming connection)
  'associate-rq-pdu': 'Evt6', // A-ASSOCIATE-RQ PDU received
  'associate-accept': 'Evt7', // A-ASSOCIATE response primitive (accept)
  'associate-reject': 'Evt8', // A-ASSOCIATE response primitive (reject)
  'p-data-request': 'Evt9', // P-DATA request primitive
  'p-data-pdu': 'Evt10', // P-DATA-TF PDU received
  'release-request': 'Evt11', // A-RELEASE request primitive
  'release-rq-pdu': 'Evt12', // A-RELEASE-RQ PDU received
  'release-rp-pdu': 'Evt13', // A-RELEASE-RP PDU received
  'release-response': 'Evt14', // A-RELEASE response primitive
  'abort-request': 'Evt15', // A-ABORT request primitive
  'abort-pdu': 'Evt16', // A-ABORT PDU received
  'transport-closed': 'Evt17', // Transport connection closed indication
  'artim-expired': 'Evt18', // ARTIM timer expired (association reject/release timer)
  'invalid-pdu': 'Evt19', // Unrecognized or invalid PDU received
} as const;
export type UlEvent = keyof typeof UL_EVENTS;

/** The events that are a PDU arriving from the peer of the leg (what the conformance test sends). */
export const PDU_EVENTS = [
  'associate-rq-pdu',
  'associate-ac-pdu',
  'associate-rj-pdu',
  'p-data-pdu',
  'release-rq-pdu',
  'release-rp-pdu',
  'abort-pdu',
  'invalid-pdu',
] as const satisfies readonly UlEvent[];

/** PS3.8 9.2.3 Tables 9-6 to 9-9: the actions, with what each does. */
export const UL_ACTIONS = {
  'AE-1': 'issue TRANSPORT CONNECT request to the local transport service',
  'AE-2': 'send A-ASSOCIATE-RQ PDU',
  'AE-3': 'issue A-ASSOCIATE confirmation (accept) primitive',
  'AE-4': 'issue A-ASSOCIATE confirmation (reject) primitive and close transport connection',
  'AE-5': 'issue transport connection response primitive; start ARTIM timer',
  'AE-6': 'stop ARTIM timer; issue A-ASSOCIATE indication primitive',
  'AE-7': 'send A-ASSOCIATE-AC PDU',
  'AE-8': 'send A-ASSOCIATE-RJ PDU and start ARTIM timer',
  'DT-1': 'send P-DATA-TF PDU',
  'DT-2': 'send P-DATA indication primitive',
  'AR-1': 'send A-RELEASE-RQ PDU',
  'AR-2': 'issue A-RELEASE indication primitive',
  'AR-3': 'issue A-RELEASE confirmation primitive and close transport connection',
  'AR-4': 'issue A-RELEASE-RP PDU and start ARTIM timer',
  'AR-5': 'stop ARTIM timer',
  'AR-6': 'issue P-DATA indication',
  'AR-7': 'issue P-DATA-TF PDU',
  'AR-8': 'issue A-RELEASE indication (release collision)',
  'AR-9': 'send A-RELEASE-RP PDU',
  'AR-10': 'issue A-RELEASE confirmation primitive',
  'AA-1': 'send A-ABORT PDU (service-user source) and start (or restart) ARTIM timer',
  'AA-2': 'stop ARTIM timer if running; close transport connection',
  'AA-3': 'issue A-ABORT (or A-P-ABORT) indication and close transport connection',
  'AA-4': 'issue A-P-ABORT indication primitive',
  'AA-5': 'stop ARTIM timer',
  'AA-6': 'ignore PDU',
  'AA-7': 'send A-ABORT PDU',
  'AA-8': 'send A-ABORT PDU (service-provider source), issue an A-P-ABORT indication and start ARTIM timer',
} as const;
export type UlAction = keyof typeof UL_ACTIONS;

/** Which side of the association the leg's local end is (AR-8 depends on it). */
export type UlRole = 'requestor' | 'acceptor';

/** The next state each action leads to (PS3.8 Tables 9-6 to 9-9); AR-8 is decided by the role. */
const NEXT: Record<Exclude<UlAction, 'AR-8'>, UlState> = {
  'AE-1': 'Sta4',
  'AE-2': 'Sta5',
  'AE-3': 'Sta6',
  'AE-4': 'Sta1',
  'AE-5': 'Sta2',
  'AE-6': 'Sta3', // the "not acceptable" branch of AE-6 is the local user's reject (Evt8 -> AE-8) at once
  'AE-7': 'Sta6',
  'AE-8': 'Sta13',
  'DT-1': 'Sta6',
  'DT-2': 'Sta6',
  'AR-1': 'Sta7',
  'AR-2': 'Sta8',
  'AR-3': 'Sta1',
  'AR-4': 'Sta13',
  'AR-5': 'Sta1',
  'AR-6': 'Sta7',
  'AR-7': 'Sta8',
  'AR-9': 'Sta11',
  'AR-10': 'Sta12',
  'AA-1': 'Sta13',
  'AA-2': 'Sta1',
  'AA-3': 'Sta1',
  'AA-4': 'Sta1',
  'AA-5': 'Sta1',
  'AA-6': 'Sta13',
  'AA-7': 'Sta13',
  'AA-8': 'Sta13',
};

type Row = Partial<Record<UlState, UlAction>>;

/** A row with the same action in states `from`..`to` (inclusive, by number). */
function span(from: number, to: number, action: UlAction): Row {
  const row: Row = {};
  for (let n = from; n <= to; n++) row[`Sta${n}` as UlState] = action;
  return row;
}

/**
 * PS3.8 Table 9-10, DICOM Upper Layer protocol state transition table. An absent cell is an event that
 * cannot happen in that state (no transport yet, or a local primitive the relay never issues there).
 */
export const TRANSITIONS: Readonly<Record<UlEvent, Readonly<Row>>> = {
  'associate-request': { Sta1: 'AE-1' },
  'transport-connected': { Sta4: 'AE-2' },
  'associate-ac-pdu': { Sta2: 'AA-1', ...span(3, 12, 'AA-8'), Sta5: 'AE-3', Sta13: 'AA-6' },
  'associate-rj-pdu': { Sta2: 'AA-1', ...span(3, 12, 'AA-8'), Sta5: 'AE-4', Sta13: 'AA-6' },
  'transport-indication': { Sta1: 'AE-5' },
  'associate-rq-pdu': { Sta2: 'AE-6', ...span(3, 12, 'AA-8'), Sta13: 'AA-7' },
  'associate-accept': { Sta3: 'AE-7' },
  'associate-reject': { Sta3: 'AE-8' },
  'p-data-request': { Sta6: 'DT-1', Sta8: 'AR-7' },
  'p-data-pdu': { Sta2: 'AA-1', ...span(3, 12, 'AA-8'), Sta6: 'DT-2', Sta7: 'AR-6', Sta13: 'AA-6' },
  'release-request': { Sta6: 'AR-1' },
  'release-rq-pdu': { Sta2: 'AA-1', ...span(3, 12, 'AA-8'), Sta6: 'AR-2', Sta7: 'AR-8', Sta13: 'AA-6' },
  'release-rp-pdu': {
    Sta2: 'AA-1',
    ...span(3, 12, 'AA-8'),
    Sta7: 'AR-3',
    Sta10: 'AR-10',
    Sta11: 'AR-3',
    Sta13: 'AA-6',
  },
  'release-response': { Sta8: 'AR-4', Sta9: 'AR-9', Sta12: 'AR-4' },
  'abort-request': { Sta3: 'AA-1', Sta4: 'AA-2', ...span(5, 12, 'AA-1') },
  'abort-pdu': { Sta2: 'AA-2', ...span(3, 12, 'AA-3'), Sta13: 'AA-2' },
  'transport-closed': { Sta2: 'AA-5', ...span(3, 12, 'AA-4'), Sta13: 'AR-5' },
  'artim-expired': { Sta2: 'AA-2', Sta13: 'AA-2' },
  'invalid-pdu': { Sta2: 'AA-1', ...span(3, 12, 'AA-8'), Sta13: 'AA-7' },
};

export interface Step {
  from: UlState;
  event: UlEvent;
  action: UlAction;
  next: UlState;
}

/** The one transition function: what `event` does in `state` (null: the table has no such cell). */
export function transition(role: UlRole, state: UlState, event: UlEvent): Step | null {
  const action = TRANSITIONS[event][state];
  if (action === undefined) return null;
  // PS3.8 Table 9-8 AR-8: the association-requestor goes to Sta9, the acceptor to Sta10.
  const next = action === 'AR-8' ? (role === 'requestor' ? 'Sta9' : 'Sta10') : NEXT[action];
  return { from: state, event, action, next };
}

/** Thrown when the relay issues a local primitive the table does not allow in the leg's state: a bug. */
export class TransitionError extends Error {
  readonly code = 'INVALID_TRANSITION';
  constructor(leg: string, state: UlState, event: UlEvent) {
    super(`${leg} leg: no transition for ${event} (${UL_EVENTS[event]}) in ${state}`);
    this.name = 'TransitionError';
  }
}

/** One leg's machine: its state, role and the steps taken (bounded, for logs and tests). */
export class UlMachine {
  private current: UlState;

  constructor(
    readonly name: string,
    readonly role: UlRole,
    initial: UlState,
  ) {
    this.current = initial;
  }

  get state(): UlState {
    return this.current;
  }

  /** The cell for `event` now, without taking it. */
  peek(event: UlEvent): Step | null {
    return transition(this.role, this.current, event);
  }

  /** Take the transition; throws TransitionError when the table has no cell for it. */
  fire(event: UlEvent): Step {
    const step = transition(this.role, this.current, event);
    if (step === null) throw new TransitionError(this.name, this.current, event);
    this.current = step.next;
    return step;
  }

  /** True in the states where P-DATA-TF may be received (PS3.8 Table 9-10: DT-2 in Sta6, AR-6 in Sta7). */
  get receivesData(): boolean {
    return this.current === 'Sta6' || this.current === 'Sta7';
  }

  /** True in the states where P-DATA-TF may be sent (DT-1 in Sta6, AR-7 in Sta8). */
  get sendsData(): boolean {
    return this.current === 'Sta6' || this.current === 'Sta8';
  }
}

/** The PDU event a PDU type byte stands for (PS3.8 9.3.1); anything else is Evt19. */
export function pduEvent(type: number): UlEvent {
  switch (type) {
    case 0x01:
      return 'associate-rq-pdu';
    case 0x02:
      return 'associate-ac-pdu';
    case 0x03:
      return 'associate-rj-pdu';
    case 0x04:
      return 'p-data-pdu';
    case 0x05:
      return 'release-rq-pdu';
    case 0x06:
      return 'release-rp-pdu';
    case 0x07:
      return 'abort-pdu';
    default:
      return 'invalid-pdu';
  }
}

// Per-message policy on one association: may this request go to the archive? (PS3.4 / PS3.7 statuses)
// Pure decisions over the peer's compiled policy; the association acts on them.

import { CommandField, Status, commandName, type CommandSet } from '../dimse/command.js';
import type { PeerPolicy } from './policy.js';

export type RequestDecision =
  | { kind: 'forward' }
  /** Answered by the proxy with this failure status; nothing of the request reaches the archive. */
  | { kind: 'refuse'; status: number; reason: string }
  /** The association cannot go on (A-ABORT both sides). */
  | { kind: 'abort'; reason: string };

export class RequestPolicy {
  /** The accepted contexts are fixed for the association: each (context, command) answer is kept. */
  private readonly invokeCache = new Map<number, boolean>();

  constructor(
    private readonly peer: PeerPolicy,
    /** False while the ledger cannot record and its failure mode is `abort`. */
    private readonly ledgerAccepts: () => boolean,
  ) {}

  decide(cmd: CommandSet, contextId: number, abstractSyntax: string): RequestDecision {
    if (cmd.commandField === CommandField.CCancelRq) return { kind: 'forward' };
    if (cmd.commandField === CommandField.CStoreRq && !this.ledgerAccepts()) {
      // The ledger cannot record right now: relay no instance that would go unrecorded.
      return { kind: 'abort', reason: 'ledger unavailable' };
    }
    const peer = this.peer;
    const name = commandName(cmd.commandField);
    const key = contextId * 0x10000 + cmd.commandField;
    let mayInvoke = this.invokeCache.get(key);
    if (mayInvoke === undefined) {
      mayInvoke = peer.mayInvoke(abstractSyntax, cmd.commandField);
      this.invokeCache.set(key, mayInvoke);
    }
    if (!mayInvoke) {
      return {
        kind: 'refuse',
        status: Status.RefusedNotAuthorized,
        reason: `${name} on ${abstractSyntax} is not allowed for ${peer.aeTitle}`,
      };
    }
    if (cmd.commandField === CommandField.CMoveRq) {
      const dest = cmd.moveDestination ?? '';
      if (!peer.mayMoveTo(dest)) {
        // PS3.4 C.4.2.1.4 / PS3.7 9.1.4.1.9: A801 Refused: Move Destination unknown.
        return {
          kind: 'refuse',
          status: Status.MoveDestinationUnknown,
          reason: `move destination ${dest} is not allowed for ${peer.aeTitle}`,
        };
      }
    }
    return { kind: 'forward' };
  }
}

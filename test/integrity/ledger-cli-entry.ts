// A minimal command line with only the ledger commands, for tests that need a real process (exit codes).
import { Command } from 'commander';
import { registerLedgerCommands } from '../../src/cli/ledger.js';

const program = new Command().name('dimse-tls-proxy');
registerLedgerCommands(program);
await program.parseAsync(process.argv);

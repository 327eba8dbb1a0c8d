// The bench's "bare Node relay": what a generic TLS wrapper written in Node costs on this runtime, with no
// DICOM awareness at all. Every plaintext connection accepted on 127.0.0.1:<listenPort> is relayed to the
// archive over mutual TLS: a `data` handler writing each chunk to the other socket, pausing the source
// while more than 1 MiB waits to be written (the proxy's default limits.relayBuffer). TCP_NODELAY both ways.
//
// usage: node bench/bare-relay.mjs <listenPort> <archiveHost> <archivePort> <ca> <cert> <key> <serverName>
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { connect } from 'node:tls';

const [listenPort, host, port, ca, cert, key, servername] = process.argv.slice(2);
if (servername === undefined) {
  process.stderr.write('usage: bare-relay.mjs <listenPort> <host> <port> <ca> <cert> <key> <serverName>\n');
  process.exit(2);
}
const tlsOptions = {
  host,
  port: Number(port),
  ca: readFileSync(ca),
  cert: readFileSync(cert),
  key: readFileSync(key),
  servername,
  minVersion: 'TLSv1.2',
};
const HIGH = 1024 * 1024;

function pipeOneWay(from, to) {
  from.on('data', (chunk) => {
    to.write(chunk);
    if (to.writableLength > HIGH) from.pause();
  });
  to.on('drain', () => from.resume());
  from.on('end', () => to.end());
}

const server = createServer((down) => {
  down.setNoDelay(true);
  down.pause();
  const up = connect(tlsOptions, () => {
    up.setNoDelay(true);
    pipeOneWay(down, up);
    pipeOneWay(up, down);
    down.resume();
  });
  const close = () => {
    down.destroy();
    up.destroy();
  };
  down.on('error', close);
  up.on('error', close);
  down.on('close', close);
  up.on('close', close);
});
server.listen(Number(listenPort), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));

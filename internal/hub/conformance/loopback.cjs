'use strict';
// Preloaded into every node process of the suite (NODE_OPTIONS=--require) by
// the Go driver in ./run.
//
// The official SDKs always connect to port 8883 (device MQTT) and 443
// (service REST) of the hub's host name. The device SDK could be pointed
// elsewhere with GatewayHostName=host:port, but the service SDK has no public
// way to name a port. So that parallel runs don't fight over 443 and 8883,
// this maps exactly those two destinations of the hub's host name to the
// emulator's ephemeral loopback ports, below TLS: SNI, certificate checks,
// Host headers, MQTT usernames and SAS tokens stay exactly what the SDKs send
// to a real hub. Any other destination is refused: the suite talks to
// loopback only.
const net = require('node:net');
const tls = require('node:tls');

const hubHost = (process.env.TWINHUB_HOSTNAME || '').toLowerCase();
// twinhub's Device Provisioning Service shares the hub's HTTPS listener
// under its own host name (port 443 only, as the provisioning SDKs dial).
const dpsHost = (process.env.TWINHUB_DPS_HOSTNAME || '').toLowerCase();
const ports = new Map([
  [8883, Number(process.env.TWINHUB_MQTT_PORT)],
  [443, Number(process.env.TWINHUB_HTTPS_PORT)],
]);
const loopback = process.env.TWINHUB_LOOPBACK || '127.0.0.1';

if (hubHost) {
  const connect = tls.connect;
  tls.connect = function twinhubConnect(...args) {
    let opts;
    let rest;
    if (args[0] !== null && typeof args[0] === 'object') {
      opts = { ...args[0] };
      rest = args.slice(1);
    } else {
      // tls.connect(port[, host][, options][, callback])
      const [port, ...more] = args;
      opts = { port };
      if (typeof more[0] === 'string') opts.host = more.shift();
      if (more[0] !== null && typeof more[0] === 'object') opts = { ...more.shift(), ...opts };
      rest = more;
    }
    const name = String(opts.host || opts.hostname || 'localhost');
    const host = name.toLowerCase();
    const port = Number(opts.port);
    const isHub = host === hubHost && ports.get(port);
    const isDPS = dpsHost !== '' && host === dpsHost && port === 443;
    if (!isHub && !isDPS) {
      throw new Error(`conformance: refusing to connect to ${host}:${port}: only the hub (${hubHost}, ports 443 and 8883) and its DPS (${dpsHost || 'none'}, port 443) are reachable`);
    }
    if (opts.servername === undefined && net.isIP(name) === 0) opts.servername = name;
    opts.host = loopback;
    delete opts.hostname;
    opts.port = ports.get(port);
    return connect.call(this, opts, ...rest);
  };
}

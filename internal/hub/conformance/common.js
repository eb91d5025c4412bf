'use strict';
// Shared by the conformance tests: the hub's coordinates from the Go
// driver (./run), the service clients, and small helpers.

const https = require('node:https');
const { Registry, Client: ServiceClient, ConnectionString: ServiceConnectionString, SharedAccessSignature: ServiceSas } = require('azure-iothub');

const hostName = process.env.TWINHUB_HOSTNAME;
const ownerConnectionString = process.env.TWINHUB_CONNECTION_STRING;
if (!hostName || !ownerConnectionString) {
  throw new Error('run this suite through `make conformance` (TWINHUB_HOSTNAME and TWINHUB_CONNECTION_STRING are not set)');
}

const TIMEOUT = 20000;
// run makes device ids and tags unique to this process.
const run = `r${process.pid}x${Date.now().toString(36)}`;

const registry = Registry.fromConnectionString(ownerConnectionString);
const service = ServiceClient.fromConnectionString(ownerConnectionString);

function deviceConnectionString(deviceId, key) {
  return `HostName=${hostName};DeviceId=${deviceId};SharedAccessKey=${key}`;
}

// eventually polls fn until it returns without throwing, or rethrows the
// last failure after ms milliseconds.
async function eventually(fn, ms = 5000, every = 50) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, every));
    }
  }
}

function reportedUpdate(twin, patch) {
  return new Promise((resolve, reject) => {
    twin.properties.reported.update(patch, (err) => (err ? reject(err) : resolve()));
  });
}

// withoutMeta drops $metadata/$version so twin sections compare by value.
function withoutMeta(section) {
  const out = {};
  for (const [k, v] of Object.entries(section || {})) {
    if (k.startsWith('$')) continue;
    out[k] = v !== null && typeof v === 'object' && !Array.isArray(v) ? withoutMeta(v) : v;
  }
  return out;
}

// admin calls twinhub's own API under /_twinhub/ (outside the IoT Hub
// API): the service SDK reads telemetry and sends cloud-to-device messages
// over AMQP, which twinhub does not speak.
function admin(method, path, body) {
  const cs = ServiceConnectionString.parse(ownerConnectionString);
  const expiry = Math.floor(Date.now() / 1000) + 600;
  const sas = ServiceSas.create(cs.HostName, cs.SharedAccessKeyName, cs.SharedAccessKey, expiry).toString();
  const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: hostName,
        port: 443,
        method,
        path,
        headers: { Authorization: sas, 'Content-Type': 'application/json', 'Content-Length': data ? data.length : 0 },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (text += c));
        res.on('end', () => {
          if (res.statusCode >= 300) reject(new Error(`${method} ${path}: ${res.statusCode} ${text}`));
          else resolve(text ? JSON.parse(text) : undefined);
        });
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function statusOf(err) {
  return err && err.response && err.response.statusCode;
}

module.exports = {
  hostName,
  ownerConnectionString,
  TIMEOUT,
  run,
  registry,
  service,
  deviceConnectionString,
  eventually,
  reportedUpdate,
  withoutMeta,
  admin,
  sleep,
  statusOf,
};

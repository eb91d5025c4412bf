'use strict';
// Conformance of twinhub with Microsoft's official Node.js SDKs
// (azure-iot-device + azure-iot-device-mqtt on the device side, azure-iothub
// on the service side). Run through `make conformance`: the Go driver in
// ./run starts a hub on loopback and passes it in the environment:
//
//   TWINHUB_HOSTNAME            the hub's host name (connection strings, TLS)
//   TWINHUB_CONNECTION_STRING   the iothubowner connection string
//   NODE_EXTRA_CA_CERTS         the hub's CA
//
// The tests run in order and build on each other, as a device and a back
// end would: a failed step usually fails the ones that need its outcome.
// A test whose title ends in [hub bug Hn] fails because of that twinhub bug
// (see README.md); it passes once the bug is fixed.

const test = require('node:test');
const assert = require('node:assert/strict');

const { Registry, Client: ServiceClient } = require('azure-iothub');
const { Client: DeviceClient } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

const hostName = process.env.TWINHUB_HOSTNAME;
const ownerConnectionString = process.env.TWINHUB_CONNECTION_STRING;
if (!hostName || !ownerConnectionString) {
  throw new Error('run this suite through `make conformance` (TWINHUB_HOSTNAME and TWINHUB_CONNECTION_STRING are not set)');
}

const TIMEOUT = 20000;
const run = `r${process.pid}x${Date.now().toString(36)}`;
const idA = `conformance-${run}-a`;
const idB = `conformance-${run}-b`;
const keyB = Buffer.from('conformance primary key, 32 bytes').subarray(0, 32).toString('base64');
const keyB2 = Buffer.from('conformance secondary key, 32 byt').subarray(0, 32).toString('base64');

const registry = Registry.fromConnectionString(ownerConnectionString);
const service = ServiceClient.fromConnectionString(ownerConnectionString);

// What the steps learn and pass on.
const st = {
  keyA: undefined,
  device: undefined, // azure-iot-device Client of idA
  twin: undefined, // its device-side Twin
  desiredPatches: [], // desired properties the device saw, in order
  methodCalls: [], // direct method requests the device answered
  reportedVersion: undefined,
  desiredInterval: undefined, // telemetry.interval as the service last set it
};

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

function statusOf(err) {
  return err && err.response && err.response.statusCode;
}

test.after(async () => {
  if (st.device) {
    await st.device.close().catch(() => {});
  }
  for (const id of [idA, idB]) {
    await registry.delete(id).catch(() => {});
  }
});

// ---------------------------------------------------------------- registry

test('registry: create a device, the hub generates its keys', { timeout: TIMEOUT }, async () => {
  const { responseBody: dev, httpResponse } = await registry.create({ deviceId: idA, status: 'enabled' });
  assert.equal(httpResponse.statusCode, 200);
  assert.equal(dev.deviceId, idA);
  assert.equal(dev.status, 'enabled');
  assert.equal(dev.authentication.type, 'sas');
  const { primaryKey, secondaryKey } = dev.authentication.symmetricKey;
  for (const k of [primaryKey, secondaryKey]) {
    assert.match(k, /^[A-Za-z0-9+/]+={0,2}$/, 'keys are base64');
    assert.ok(Buffer.from(k, 'base64').length >= 16, 'keys have at least 16 bytes');
  }
  assert.notEqual(primaryKey, secondaryKey);
  assert.ok(dev.etag, 'an etag');
  assert.ok(dev.generationId, 'a generationId');
  assert.equal(dev.connectionState, 'Disconnected');
  st.keyA = primaryKey;
});

test('registry: create a device with given keys', { timeout: TIMEOUT }, async () => {
  const { responseBody: dev } = await registry.create({
    deviceId: idB,
    authentication: { symmetricKey: { primaryKey: keyB, secondaryKey: keyB2 } },
  });
  assert.equal(dev.deviceId, idB);
  assert.equal(dev.authentication.symmetricKey.primaryKey, keyB);
  assert.equal(dev.authentication.symmetricKey.secondaryKey, keyB2);
  assert.equal(dev.status, 'enabled', 'status defaults to enabled');
});

test('registry: creating an existing device fails with DeviceAlreadyExistsError', { timeout: TIMEOUT }, async () => {
  await assert.rejects(registry.create({ deviceId: idA }), (err) => {
    assert.equal(err.name, 'DeviceAlreadyExistsError');
    assert.equal(statusOf(err), 409);
    return true;
  });
});

test('registry: get a device', { timeout: TIMEOUT }, async () => {
  const { responseBody: dev } = await registry.get(idA);
  assert.equal(dev.deviceId, idA);
  assert.equal(dev.authentication.symmetricKey.primaryKey, st.keyA);
  assert.equal(dev.connectionState, 'Disconnected');
});

test('registry: get an unknown device fails with DeviceNotFoundError', { timeout: TIMEOUT }, async () => {
  await assert.rejects(registry.get(`${idA}-missing`), (err) => {
    assert.equal(err.name, 'DeviceNotFoundError');
    assert.equal(statusOf(err), 404);
    return true;
  });
});

test('registry: update a device (disable, then enable) [hub bug H1]', { timeout: TIMEOUT }, async () => {
  // Registry.update always sends If-Match: "*" (the SDK never sends the
  // device's etag), so this is an unconditional update.
  const { responseBody: before } = await registry.get(idB);
  const { responseBody: disabled } = await registry.update({ deviceId: idB, status: 'disabled', etag: before.etag });
  assert.equal(disabled.status, 'disabled');
  assert.notEqual(disabled.etag, before.etag, 'the etag changes');
  const { responseBody: enabled } = await registry.update({ deviceId: idB, status: 'enabled', etag: disabled.etag });
  assert.equal(enabled.status, 'enabled');
  assert.equal(enabled.authentication.symmetricKey.primaryKey, keyB, 'keys survive an update');
  const { responseBody: got } = await registry.get(idB);
  assert.equal(got.status, 'enabled');
});

// ------------------------------------------------------------------ device

test('device: connect over MQTT with a symmetric key (device connection string)', { timeout: TIMEOUT }, async () => {
  assert.ok(st.keyA, 'needs the key from the create step');
  const client = DeviceClient.fromConnectionString(deviceConnectionString(idA, st.keyA), Mqtt);
  client.on('error', (err) => console.error(`device client error: ${err}`));
  await client.open();
  st.device = client;
  // Subscribe to methods now: the MQTT subscription is on the wire before
  // any later request of this connection.
  client.onDeviceMethod('echo', (request, response) => {
    st.methodCalls.push({ name: request.methodName, payload: request.payload, requestId: request.requestId });
    response.send(200, { echo: request.payload, method: request.methodName }, (err) => {
      if (err) console.error(`method response failed: ${err}`);
    });
  });
  client.onDeviceMethod('fail', (request, response) => {
    response.send(418, { reason: 'teapot' }, () => {});
  });
  client.onDeviceMethod('silent', () => {
    // never answers: the service call times out
  });
  await eventually(async () => {
    const { responseBody: dev } = await registry.get(idA);
    assert.equal(dev.connectionState, 'Connected');
  });
});

test('device: get the twin', { timeout: TIMEOUT }, async () => {
  assert.ok(st.device, 'needs a connected device');
  const twin = await st.device.getTwin();
  assert.equal(typeof twin.properties.desired.$version, 'number', 'desired.$version');
  assert.equal(typeof twin.properties.reported.$version, 'number', 'reported.$version');
  st.twin = twin;
  // Desired updates: the listener subscribes at once, before the reported
  // patches of the next step go out on the same connection.
  twin.on('properties.desired', (delta) => {
    st.desiredPatches.push(JSON.parse(JSON.stringify(delta)));
  });
});

test('device: update reported properties; the service reads them back', { timeout: TIMEOUT }, async () => {
  assert.ok(st.twin, 'needs the device twin');
  const { responseBody: before } = await registry.getTwin(idA);
  const v0 = before.properties.reported.$version;

  await reportedUpdate(st.twin, {
    firmware: { version: '1.2.3', channel: 'stable' },
    uptime: 42,
    ok: true,
    list: [1, 'two'],
    temp: null,
  });
  await reportedUpdate(st.twin, { firmware: { channel: 'beta', build: 7 }, uptime: null });

  const { responseBody: twin } = await registry.getTwin(idA);
  assert.deepEqual(withoutMeta(twin.properties.reported), {
    firmware: { version: '1.2.3', channel: 'beta', build: 7 },
    ok: true,
    list: [1, 'two'],
  });
  assert.equal(twin.properties.reported.$version, v0 + 2, 'reported.$version grew by one per patch');
  st.reportedVersion = twin.properties.reported.$version;

  // The device's own copy merged the same way.
  assert.equal(st.twin.properties.reported.firmware.channel, 'beta');
  assert.equal(st.twin.properties.reported.uptime, undefined);
});

// ----------------------------------------------------------------- service

test('service: patch the twin (tags + desired); the device receives the desired patch', { timeout: TIMEOUT }, async () => {
  assert.ok(st.twin, 'needs the device twin');
  const { responseBody: before } = await registry.getTwin(idA);
  const d0 = before.properties.desired.$version;
  const seen = st.desiredPatches.length;

  const patch = {
    tags: { conformance: { run, role: 'a' }, site: 'lab' },
    properties: { desired: { telemetry: { interval: 30, enabled: true }, mode: 'eco' } },
  };
  const { responseBody: updated } = await registry.updateTwin(idA, patch, before.etag);
  assert.deepEqual(updated.tags, patch.tags);
  assert.deepEqual(withoutMeta(updated.properties.desired), patch.properties.desired);
  assert.equal(updated.properties.desired.$version, d0 + 1);
  assert.notEqual(updated.etag, before.etag, 'the twin etag changes');

  const got = await eventually(() => {
    const p = st.desiredPatches.slice(seen).find((x) => x.mode === 'eco');
    assert.ok(p, `the device got no desired patch with mode=eco (got ${JSON.stringify(st.desiredPatches.slice(seen))})`);
    return p;
  });
  assert.deepEqual(got.telemetry, { interval: 30, enabled: true });
  assert.equal(got.$version, d0 + 1, 'the patch carries the new desired $version');
  assert.equal(st.twin.properties.desired.telemetry.interval, 30, 'merged into the device twin');
  st.desiredInterval = 30;
});

test('service: a second desired patch merges, null deletes, the device sees only the delta [hub bug H1]', { timeout: TIMEOUT }, async () => {
  assert.ok(st.twin, 'needs the device twin');
  const seen = st.desiredPatches.length;
  const { responseBody: updated } = await registry.updateTwin(
    idA,
    { properties: { desired: { telemetry: { interval: 60 }, mode: null } } },
    '*',
  );
  assert.deepEqual(withoutMeta(updated.properties.desired), { telemetry: { interval: 60, enabled: true } });
  st.desiredInterval = 60;

  const got = await eventually(() => {
    const p = st.desiredPatches.slice(seen).find((x) => x.telemetry && x.telemetry.interval === 60);
    assert.ok(p, `no desired patch with interval=60 (got ${JSON.stringify(st.desiredPatches.slice(seen))})`);
    return p;
  });
  assert.deepEqual(withoutMeta(got), { telemetry: { interval: 60 }, mode: null });
  assert.equal(got.$version, updated.properties.desired.$version);
  assert.equal(st.twin.properties.desired.mode, undefined, 'null deleted mode on the device');
});

test('service: a twin patch with a stale etag fails with 412 InvalidEtagError', { timeout: TIMEOUT }, async () => {
  await assert.rejects(registry.updateTwin(idA, { tags: { stale: true } }, '"not-the-etag"'), (err) => {
    assert.equal(err.name, 'InvalidEtagError');
    assert.equal(statusOf(err), 412);
    return true;
  });
  const { responseBody: twin } = await registry.getTwin(idA);
  assert.equal(twin.tags.stale, undefined, 'the failed patch changed nothing');
});

test('service: the Twin object of the service SDK gets and updates (tags)', { timeout: TIMEOUT }, async () => {
  // Twin.update sends the twin's own etag, quoted, in If-Match.
  const { responseBody: twin } = await registry.getTwin(idB);
  assert.equal(twin.deviceId, idB);
  const etag = twin.etag;
  const { result: updated } = await twin.update({ tags: { conformance: { run, role: 'b' } } });
  assert.equal(updated, twin, 'the Twin object updates itself');
  assert.equal(twin.tags.conformance.role, 'b');
  assert.notEqual(twin.etag, etag, 'with the new etag');
  const { result: again } = await (await registry.getTwin(idB)).responseBody.get();
  assert.deepEqual(again.tags, { conformance: { run, role: 'b' } });
  assert.equal(again.etag, twin.etag);
});

test('service: invoke a direct method; the device answers', { timeout: TIMEOUT }, async () => {
  assert.ok(st.device, 'needs a connected device');
  const payload = { n: 42, s: 'hi', nested: { ok: true } };
  const { result } = await service.invokeDeviceMethod(idA, {
    methodName: 'echo',
    payload,
    responseTimeoutInSeconds: 10,
    connectTimeoutInSeconds: 5,
  });
  assert.equal(result.status, 200);
  assert.deepEqual(result.payload, { echo: payload, method: 'echo' });
  const call = st.methodCalls.at(-1);
  assert.equal(call.name, 'echo');
  assert.deepEqual(call.payload, payload);
});

test('service: a device-chosen method status and payload are passed through', { timeout: TIMEOUT }, async () => {
  const { result } = await service.invokeDeviceMethod(idA, { methodName: 'fail', payload: null, responseTimeoutInSeconds: 10 });
  assert.equal(result.status, 418);
  assert.deepEqual(result.payload, { reason: 'teapot' });
});

test('service: a method the device never answers times out with 504 GatewayTimeoutError', { timeout: TIMEOUT }, async () => {
  const started = Date.now();
  await assert.rejects(
    service.invokeDeviceMethod(idA, { methodName: 'silent', payload: {}, responseTimeoutInSeconds: 5 }),
    (err) => {
      assert.equal(statusOf(err), 504);
      assert.equal(err.name, 'GatewayTimeoutError');
      return true;
    },
  );
  assert.ok(Date.now() - started >= 4500, 'waited for the response timeout');
});

test('service: a method on an offline device fails with 404 DeviceNotOnline', { timeout: TIMEOUT }, async () => {
  await assert.rejects(
    service.invokeDeviceMethod(idB, { methodName: 'echo', payload: {}, responseTimeoutInSeconds: 5, connectTimeoutInSeconds: 0 }),
    (err) => {
      assert.equal(statusOf(err), 404);
      assert.match(err.responseBody || '', /DeviceNotOnline/);
      return true;
    },
  );
});

test('service: query twins by tag with paging (pageSize 1)', { timeout: TIMEOUT }, async () => {
  const query = registry.createQuery(`SELECT * FROM devices WHERE tags.conformance.run = '${run}'`, 1);
  const pages = [];
  while (query.hasMoreResults) {
    const { result } = await query.nextAsTwin();
    pages.push(result);
    assert.ok(pages.length <= 10, 'the continuation ends');
  }
  assert.ok(pages.length >= 2, `two devices in pages of one are at least two pages (got ${pages.length})`);
  for (const p of pages) assert.ok(p.length <= 1, `a page holds at most pageSize items (got ${p.length})`);
  const twins = pages.flat();
  assert.deepEqual(twins.map((t) => t.deviceId).sort(), [idA, idB]);
  const a = twins.find((t) => t.deviceId === idA);
  assert.equal(a.tags.conformance.role, 'a');
  assert.equal(a.properties.desired.telemetry.interval, st.desiredInterval);
  assert.equal(a.properties.reported.firmware.version, '1.2.3');
});

test('service: query a projection on reported properties', { timeout: TIMEOUT }, async () => {
  const query = registry.createQuery(
    `SELECT deviceId, properties.reported.firmware.channel AS channel FROM devices ` +
      `WHERE tags.conformance.run = '${run}' AND properties.reported.firmware.build >= 7`,
  );
  const { result } = await query.next();
  assert.deepEqual(result, [{ deviceId: idA, channel: 'beta' }]);
  assert.equal(query.hasMoreResults, false);
});

test('service: query COUNT()', { timeout: TIMEOUT }, async () => {
  const query = registry.createQuery(`SELECT COUNT() AS n FROM devices WHERE tags.conformance.run = '${run}'`);
  const { result } = await query.next();
  assert.deepEqual(result, [{ n: 2 }]);
});

// --------------------------------------------------------------- teardown

test('device: close; the hub sees it disconnected', { timeout: TIMEOUT }, async () => {
  assert.ok(st.device, 'needs a connected device');
  await st.device.close();
  st.device = undefined;
  await eventually(async () => {
    const { responseBody: dev } = await registry.get(idA);
    assert.equal(dev.connectionState, 'Disconnected');
  });
});

test('registry: delete the devices [hub bug H1]', { timeout: TIMEOUT }, async () => {
  await registry.delete(idA);
  await registry.delete(idB);
  for (const id of [idA, idB]) {
    await assert.rejects(registry.get(id), (err) => err.name === 'DeviceNotFoundError');
  }
  const { result } = await registry.createQuery(`SELECT * FROM devices WHERE tags.conformance.run = '${run}'`).next();
  assert.deepEqual(result, []);
});

test('device: a deleted device is refused (UnauthorizedError) [hub bug H1]', { timeout: TIMEOUT }, async () => {
  assert.ok(st.keyA, 'needs the key from the create step');
  const client = DeviceClient.fromConnectionString(deviceConnectionString(idA, st.keyA), Mqtt);
  client.on('error', () => {});
  try {
    await assert.rejects(client.open(), (err) => {
      assert.equal(err.name, 'UnauthorizedError');
      return true;
    });
  } finally {
    await client.close().catch(() => {});
  }
});

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

const {
  Client: DeviceClient,
  ModuleClient,
  Message,
  SharedAccessSignature: DeviceSas,
} = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const {
  hostName,
  TIMEOUT,
  run,
  registry,
  service,
  deviceConnectionString,
  eventually,
  reportedUpdate,
  withoutMeta,
  admin,
  statusOf,
} = require('./common');

const idA = `conformance-${run}-a`;
const idB = `conformance-${run}-b`;
const moduleId = 'twinlet';
const keyB = Buffer.from('conformance primary key, 32 bytes').subarray(0, 32).toString('base64');
const keyB2 = Buffer.from('conformance secondary key, 32 byt').subarray(0, 32).toString('base64');

// What the steps learn and pass on.
const st = {
  keyA: undefined,
  device: undefined, // azure-iot-device Client of idA
  twin: undefined, // its device-side Twin
  desiredPatches: [], // desired properties the device saw, in order
  methodCalls: [], // direct method requests the device answered
  c2d: [], // cloud-to-device messages the device received
  module: undefined, // registry entry of the module identity
  moduleClient: undefined, // azure-iot-device ModuleClient
  moduleTwin: undefined,
  moduleDesired: [],
  reportedVersion: undefined,
  desiredInterval: undefined, // telemetry.interval as the service last set it
};

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

test('registry: list devices (Registry.list)', { timeout: TIMEOUT }, async () => {
  const { responseBody: devices } = await registry.list();
  const ids = devices.map((d) => d.deviceId);
  assert.ok(ids.includes(idA) && ids.includes(idB), `both devices are listed (got ${JSON.stringify(ids)})`);
});

test('registry: bulk create and remove (addDevices, removeDevices)', { timeout: TIMEOUT }, async () => {
  const bulk = [{ deviceId: `${idA}-bulk1` }, { deviceId: `${idA}-bulk2` }];
  const { responseBody: created } = await registry.addDevices(bulk);
  assert.equal(created.isSuccessful, true, JSON.stringify(created));
  const { responseBody: dev } = await registry.get(bulk[0].deviceId);
  assert.ok(dev.authentication.symmetricKey.primaryKey, 'a generated key');
  const { responseBody: removed } = await registry.removeDevices(bulk, true);
  assert.equal(removed.isSuccessful, true, JSON.stringify(removed));
  await assert.rejects(registry.get(bulk[1].deviceId), (err) => err.name === 'DeviceNotFoundError');
});

test('registry: update a device (disable, then enable)', { timeout: TIMEOUT }, async () => {
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
  client.on('message', (msg) => {
    st.c2d.push({ data: msg.data.toString(), messageId: msg.messageId, props: Object.fromEntries(msg.properties.propertyList.map((p) => [p.key, p.value])) });
    client.complete(msg, () => {});
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

test('device: telemetry (sendEvent) reaches the hub with its properties', { timeout: TIMEOUT }, async () => {
  assert.ok(st.device, 'needs a connected device');
  const { last } = await admin('GET', '/_twinhub/events');
  const body = JSON.stringify({ temperature: 21.5, run });
  const msg = new Message(body);
  msg.messageId = `mid-${run}`;
  msg.contentType = 'application/json';
  msg.contentEncoding = 'utf-8';
  msg.properties.add('kind', 'conformance');
  msg.properties.add('with space', 'a b&c');
  await st.device.sendEvent(msg);
  const got = await eventually(async () => {
    const { events } = await admin('GET', `/_twinhub/events?since=${last}`);
    const e = events.find((x) => x.deviceId === idA);
    assert.ok(e, 'the hub kept the event');
    return e;
  });
  assert.equal(Buffer.from(got.body, 'base64').toString(), body);
  assert.equal(got.properties.kind, 'conformance');
  assert.equal(got.properties['with space'], 'a b&c');
  assert.ok(Object.values(got.properties).includes(`mid-${run}`), `the message id is kept (${JSON.stringify(got.properties)})`);
});

test('device: a cloud-to-device message arrives with its properties', { timeout: TIMEOUT }, async () => {
  assert.ok(st.device, 'needs a connected device');
  await admin('POST', `/_twinhub/devices/${encodeURIComponent(idA)}/messages`, {
    payload: 'reboot at 03:00',
    properties: { kind: 'c2d', note: 'a b/c' },
  });
  const got = await eventually(() => {
    assert.equal(st.c2d.length, 1, 'one message received');
    return st.c2d[0];
  });
  assert.equal(got.data, 'reboot at 03:00');
  assert.equal(got.props.kind, 'c2d');
  assert.equal(got.props.note, 'a b/c');
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

test('service: a second desired patch merges, null deletes, the device sees only the delta', { timeout: TIMEOUT }, async () => {
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

test('device: the SDK reconnects after the hub drops it; desired and methods still work', { timeout: 30000 }, async () => {
  assert.ok(st.device, 'needs a connected device');
  const { dropped } = await admin('POST', '/_twinhub/drop', { identities: [idA] });
  assert.equal(dropped, 1, 'the hub dropped the connection');
  // The client reconnects on its own (retry policy); wait until the hub sees it.
  await eventually(async () => {
    const { responseBody: dev } = await registry.get(idA);
    assert.equal(dev.connectionState, 'Connected');
  }, 20000, 200);
  const seen = st.desiredPatches.length;
  const { responseBody: t } = await registry.getTwin(idA);
  await registry.updateTwin(idA, { properties: { desired: { afterDrop: true } } }, t.etag);
  await eventually(() => assert.ok(st.desiredPatches.slice(seen).some((d) => d.afterDrop === true), 'a desired patch after the reconnect'), 10000);
  const { result } = await service.invokeDeviceMethod(idA, { methodName: 'echo', payload: 'again', responseTimeoutInSeconds: 10 });
  assert.equal(result.status, 200);
  assert.deepEqual(result.payload, { echo: 'again', method: 'echo' });
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

// ----------------------------------------------------------------- modules

test('registry: add a module identity to a device', { timeout: TIMEOUT }, async () => {
  const { responseBody: mod } = await registry.addModule({ deviceId: idA, moduleId });
  assert.equal(mod.deviceId, idA);
  assert.equal(mod.moduleId, moduleId);
  assert.ok(mod.authentication.symmetricKey.primaryKey, 'a generated key');
  assert.ok(mod.etag, 'an etag');
  const { responseBody: list } = await registry.getModulesOnDevice(idA);
  assert.deepEqual(list.map((m) => m.moduleId), [moduleId]);
  st.module = mod;
});

test('module: connect (ModuleClient), get its twin, report, next to the device connection', { timeout: TIMEOUT }, async () => {
  assert.ok(st.module, 'needs the module identity');
  assert.ok(st.device, 'the device stays connected');
  const cs = `HostName=${hostName};DeviceId=${idA};ModuleId=${moduleId};SharedAccessKey=${st.module.authentication.symmetricKey.primaryKey}`;
  const client = ModuleClient.fromConnectionString(cs, Mqtt);
  client.on('error', (err) => console.error(`module client error: ${err}`));
  await client.open();
  st.moduleClient = client;
  client.onMethod('whoami', (request, response) => {
    response.send(200, { module: moduleId, payload: request.payload }, () => {});
  });
  const twin = await client.getTwin();
  st.moduleTwin = twin;
  twin.on('properties.desired', (delta) => st.moduleDesired.push(JSON.parse(JSON.stringify(delta))));
  await reportedUpdate(twin, { agent: { version: '0.1.0' } });

  const { responseBody: mt } = await registry.getModuleTwin(idA, moduleId);
  assert.equal(mt.moduleId, moduleId);
  assert.deepEqual(withoutMeta(mt.properties.reported), { agent: { version: '0.1.0' } });
  const { responseBody: dt } = await registry.getTwin(idA);
  assert.equal(dt.properties.reported.agent, undefined, 'the device twin is a different twin');
  const { responseBody: dev } = await registry.get(idA);
  assert.equal(dev.connectionState, 'Connected', 'the device connection was not dropped by the module');
});

test('service: patch the module twin; the module receives desired; invoke a module method', { timeout: TIMEOUT }, async () => {
  assert.ok(st.moduleTwin, 'needs the module twin');
  const { responseBody: before } = await registry.getModuleTwin(idA, moduleId);
  const { responseBody: updated } = await registry.updateModuleTwin(
    idA,
    moduleId,
    { tags: { conformance: { run } }, properties: { desired: { hostname: { name: 'kiosk-17' } } } },
    before.etag,
  );
  assert.equal(updated.properties.desired.hostname.name, 'kiosk-17');
  const got = await eventually(() => {
    const p = st.moduleDesired.find((x) => x.hostname && x.hostname.name === 'kiosk-17');
    assert.ok(p, `the module got no desired patch (got ${JSON.stringify(st.moduleDesired)})`);
    return p;
  });
  assert.equal(got.$version, updated.properties.desired.$version);
  assert.ok(!st.desiredPatches.some((x) => x.hostname), 'the device did not get the module patch');

  const { result } = await service.invokeDeviceMethod(idA, moduleId, { methodName: 'whoami', payload: 7, responseTimeoutInSeconds: 10 });
  assert.equal(result.status, 200);
  assert.deepEqual(result.payload, { module: moduleId, payload: 7 });
});

test('service: query devices.modules', { timeout: TIMEOUT }, async () => {
  const { result } = await registry
    .createQuery(`SELECT * FROM devices.modules WHERE tags.conformance.run = '${run}' AND moduleId = '${moduleId}'`)
    .next();
  assert.equal(result.length, 1);
  assert.equal(result[0].deviceId, idA);
  assert.equal(result[0].moduleId, moduleId);
  assert.equal(result[0].properties.reported.agent.version, '0.1.0');
});

test('registry: remove the module with its etag', { timeout: TIMEOUT }, async () => {
  assert.ok(st.moduleClient, 'needs the module client');
  await st.moduleClient.close();
  st.moduleClient = undefined;
  const { responseBody: mod } = await registry.getModule(idA, moduleId);
  // The promise form of removeModule(module) throws in azure-iothub 1.16.6
  // (it checks for a callback before wrapping), so use the callback form.
  await new Promise((resolve, reject) => registry.removeModule(mod, (err) => (err ? reject(err) : resolve())));
  await assert.rejects(registry.getModule(idA, moduleId), (err) => statusOf(err) === 404);
});

// -------------------------------------------------- more ways to connect

test('device: connect with a SAS token connection string (SharedAccessSignature=…)', { timeout: TIMEOUT }, async () => {
  const sas = DeviceSas.create(hostName, idB, keyB, Math.floor(Date.now() / 1000) + 300).toString();
  const client = DeviceClient.fromSharedAccessSignature(sas, Mqtt);
  client.on('error', () => {});
  try {
    await client.open();
    const twin = await client.getTwin();
    await reportedUpdate(twin, { via: 'sas' });
    const { responseBody: t } = await registry.getTwin(idB);
    assert.equal(t.properties.reported.via, 'sas');
  } finally {
    await client.close().catch(() => {});
  }
});

test('device: a wrong key is refused (UnauthorizedError)', { timeout: TIMEOUT }, async () => {
  const wrong = Buffer.alloc(32, 7).toString('base64');
  const client = DeviceClient.fromConnectionString(deviceConnectionString(idB, wrong), Mqtt);
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

test('registry: delete the devices', { timeout: TIMEOUT }, async () => {
  await registry.delete(idA);
  await registry.delete(idB);
  for (const id of [idA, idB]) {
    await assert.rejects(registry.get(id), (err) => err.name === 'DeviceNotFoundError');
  }
  const { result } = await registry.createQuery(`SELECT * FROM devices WHERE tags.conformance.run = '${run}'`).next();
  assert.deepEqual(result, []);
});

test('device: a deleted device is refused (UnauthorizedError)', { timeout: TIMEOUT }, async () => {
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

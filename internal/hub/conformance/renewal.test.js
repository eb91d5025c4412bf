'use strict';
// SAS token renewal with the official device SDK: tokens valid 6 s, renewed
// 3 s before expiry (the SDK reconnects with a fresh token each time; the
// hub closes connections whose token expired). A file of its own, so that
// node --test runs it next to sdk.test.js.

const test = require('node:test');
const assert = require('node:assert/strict');

const { Client: DeviceClient, SharedAccessKeyAuthenticationProvider } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { run, registry, service, deviceConnectionString, eventually, reportedUpdate, sleep } = require('./common');

const id = `conformance-${run}-renew`;

test.after(async () => {
  await registry.delete(id).catch(() => {});
});

test('device: SAS renewal (tokens valid 6 s) keeps twin and methods working', { timeout: 30000 }, async () => {
  const { responseBody: dev } = await registry.create({ deviceId: id });
  const key = dev.authentication.symmetricKey.primaryKey;
  const provider = SharedAccessKeyAuthenticationProvider.fromConnectionString(deviceConnectionString(id, key), 6, 3);
  const client = DeviceClient.fromAuthenticationProvider(provider, Mqtt);
  client.on('error', (err) => console.error(`renewing client error: ${err}`));
  const desired = [];
  try {
    await client.open();
    client.onDeviceMethod('ping', (req, res) => res.send(200, { pong: req.payload }, () => {}));
    const twin = await client.getTwin();
    twin.on('properties.desired', (d) => desired.push(JSON.parse(JSON.stringify(d))));
    await sleep(8000); // past the first token's expiry: the SDK reconnected with new tokens
    await reportedUpdate(twin, { renewed: true });
    const { responseBody: t } = await registry.getTwin(id);
    assert.equal(t.properties.reported.renewed, true);
    await registry.updateTwin(id, { properties: { desired: { afterRenewal: 1 } } }, t.etag);
    await eventually(() => assert.ok(desired.some((d) => d.afterRenewal === 1), 'desired patch after renewal'));
    const { result } = await service.invokeDeviceMethod(id, { methodName: 'ping', payload: 'x', responseTimeoutInSeconds: 10 });
    assert.deepEqual(result.payload, { pong: 'x' });
  } finally {
    await client.close().catch(() => {});
  }
});

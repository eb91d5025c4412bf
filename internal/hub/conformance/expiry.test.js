'use strict';
// The hub closes a device connection when its SAS token expires, and
// refuses to reconnect it with the same token. A device that connects with
// a fixed token (SharedAccessSignature=… connection string) cannot renew it.
// A file of its own, so that node --test runs it next to sdk.test.js.

const test = require('node:test');
const assert = require('node:assert/strict');

const { Client: DeviceClient, SharedAccessSignature: DeviceSas } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { hostName, run, registry, eventually, reportedUpdate, sleep } = require('./common');

const id = `conformance-${run}-expiry`;

// noRetry is a retry policy (the SDK's RetryPolicy interface) that never
// retries: with the default one, the SDK keeps reconnecting with the
// expired token for minutes.
const noRetry = { shouldRetry: () => false, nextRetryTimeout: () => -1 };

test.after(async () => {
  await registry.delete(id).catch(() => {});
});

test('device: the hub disconnects a device when its SAS token expires', { timeout: 30000 }, async () => {
  const { responseBody: dev } = await registry.create({ deviceId: id });
  const key = dev.authentication.symmetricKey.primaryKey;
  const expiry = Math.floor(Date.now() / 1000) + 4;
  const sas = DeviceSas.create(hostName, id, key, expiry).toString();
  const client = DeviceClient.fromSharedAccessSignature(sas, Mqtt);
  client.setRetryPolicy(noRetry);
  client.on('error', () => {});
  try {
    await client.open();
    const twin = await client.getTwin();
    await reportedUpdate(twin, { before: 'expiry' });
    const { responseBody: connected } = await registry.get(id);
    assert.equal(connected.connectionState, 'Connected');

    await sleep(expiry * 1000 - Date.now() - 1500);
    const { responseBody: still } = await registry.get(id);
    assert.equal(still.connectionState, 'Connected', 'connected until shortly before expiry');

    await eventually(async () => {
      const { responseBody: d } = await registry.get(id);
      assert.equal(d.connectionState, 'Disconnected', 'disconnected once the token expired');
    }, 5000, 100);
    assert.ok(Date.now() >= expiry * 1000 - 1000, 'not long before the expiry');

    await assert.rejects(reportedUpdate(twin, { after: 'expiry' }), (err) => {
      // CONNACK 5: the SDK names it UnauthorizedError on open, and
      // NotConnectedError "Connection refused: Not authorized" here.
      assert.match(`${err.name}: ${err.message}`, /Unauthorized|Not authorized/, `the reconnect with the expired token is refused (${err})`);
      return true;
    });
    const { responseBody: t } = await registry.getTwin(id);
    assert.equal(t.properties.reported.after, undefined);
  } finally {
    await client.close().catch(() => {});
  }
});

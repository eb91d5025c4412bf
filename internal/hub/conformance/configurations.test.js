'use strict';
// IoT Hub configurations (automatic device management) driven by the
// service SDK's Registry: addConfiguration, getConfiguration(s),
// updateConfiguration, removeConfiguration and
// applyConfigurationContentOnDevice, with a real device (azure-iot-device
// over MQTT) that receives the content as desired properties. Every
// configuration targets tags unique to this run, so the other files of the
// suite, which share the hub, are not affected.

const test = require('node:test');
const assert = require('node:assert/strict');

const { Client: DeviceClient } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { TIMEOUT, run, registry, deviceConnectionString, eventually, reportedUpdate, statusOf } = require('./common');

const ids = [`cfg-${run}-1`, `cfg-${run}-2`];
const base = `base-${run}`.toLowerCase();
const canary = `canary-${run}`.toLowerCase();

const st = { device: undefined, twin: undefined, desired: [] };

test.after(async () => {
  if (st.device) await st.device.close().catch(() => {});
  for (const id of [base, canary]) await registry.removeConfiguration(id).catch(() => {});
  for (const id of ids) await registry.delete(id).catch(() => {});
});

async function desiredOf(id) {
  const { responseBody: twin } = await registry.getTwin(id);
  return twin;
}

test('configurations: devices with tags, one connected over MQTT', { timeout: TIMEOUT }, async () => {
  for (const [i, id] of ids.entries()) {
    const { responseBody: dev } = await registry.create({ deviceId: id });
    const { responseBody: twin } = await registry.getTwin(id);
    await registry.updateTwin(id, { tags: { fleet: run, ring: i === 0 ? 'canary' : 'main' } }, twin.etag);
    if (i === 0) {
      st.device = DeviceClient.fromConnectionString(deviceConnectionString(id, dev.authentication.symmetricKey.primaryKey), Mqtt);
      await st.device.open();
      st.twin = await st.device.getTwin();
      st.twin.on('properties.desired', (patch) => st.desired.push(JSON.parse(JSON.stringify(patch))));
    }
  }
});

test('configurations: addConfiguration, its content reaches the device as a desired patch', { timeout: TIMEOUT }, async () => {
  const { httpResponse } = await registry.addConfiguration({
    id: base,
    content: { deviceContent: { 'properties.desired.ntp': { server: 'base.example' }, 'properties.desired.motd': 'hi' } },
    targetCondition: `tags.fleet = '${run}'`,
    priority: 1,
    labels: { managedBy: 'conformance' },
    metrics: { queries: { ready: `SELECT deviceId FROM devices WHERE configurations.[[${base}]].status = 'Applied' AND properties.reported.ntp.ok = true` } },
  });
  assert.equal(httpResponse.statusCode, 200);
  await eventually(() => {
    const p = st.desired.find((d) => d.ntp && d.ntp.server === 'base.example');
    assert.ok(p, `the device got no ntp patch (got ${JSON.stringify(st.desired)})`);
  });
  for (const id of ids) {
    await eventually(async () => {
      const twin = await desiredOf(id);
      assert.equal(twin.properties.desired.ntp.server, 'base.example');
      assert.equal(twin.configurations[base].status, 'Applied');
    });
  }
});

test('configurations: getConfiguration has the metrics, kept current from reported properties', { timeout: TIMEOUT }, async () => {
  await reportedUpdate(st.twin, { ntp: { ok: true } });
  await eventually(async () => {
    const { responseBody: cfg } = await registry.getConfiguration(base);
    assert.equal(cfg.id, base);
    assert.equal(cfg.priority, 1);
    assert.equal(cfg.labels.managedBy, 'conformance');
    assert.ok(cfg.etag);
    assert.equal(cfg.systemMetrics.results.targetedCount, 2);
    assert.equal(cfg.systemMetrics.results.appliedCount, 2);
    assert.equal(cfg.metrics.results.ready, 1);
  });
});

test('configurations: a higher priority wins per path; the other paths stay', { timeout: TIMEOUT }, async () => {
  await registry.addConfiguration({
    id: canary,
    content: { deviceContent: { 'properties.desired.ntp': { server: 'canary.example' } } },
    targetCondition: `tags.fleet = '${run}' AND tags.ring = 'canary'`,
    priority: 10,
  });
  await eventually(async () => {
    const twin = await desiredOf(ids[0]);
    assert.equal(twin.properties.desired.ntp.server, 'canary.example');
    assert.equal(twin.properties.desired.motd, 'hi');
    assert.equal(twin.configurations[canary].status, 'Applied');
  });
  const other = await desiredOf(ids[1]);
  assert.equal(other.properties.desired.ntp.server, 'base.example');
  assert.equal(other.configurations[canary], undefined);
});

test('configurations: twins are queryable by configurations.[[id]].status', { timeout: TIMEOUT }, async () => {
  const query = registry.createQuery(
    `SELECT deviceId FROM devices WHERE tags.fleet = '${run}' AND configurations.[[${canary}]].status = 'Applied'`,
  );
  const { result } = await query.next();
  assert.deepEqual(result, [{ deviceId: ids[0] }]);
  const targeted = registry.createQuery(
    `SELECT COUNT() AS n FROM devices WHERE tags.fleet = '${run}' AND configurations.[[${base}]].status = 'Applied'`,
  );
  assert.deepEqual((await targeted.next()).result, [{ n: 2 }], 'base still applies (motd) where canary holds ntp');
});

test('configurations: getConfigurations lists both', { timeout: TIMEOUT }, async () => {
  const { responseBody: list } = await registry.getConfigurations();
  const mine = list.map((c) => c.id).filter((id) => id === base || id === canary);
  assert.deepEqual(mine.sort(), [base, canary].sort());
});

test('configurations: updateConfiguration changes the target; a stale etag fails with 412', { timeout: TIMEOUT }, async () => {
  const { responseBody: cfg } = await registry.getConfiguration(canary);
  cfg.targetCondition = `tags.fleet = '${run}' AND tags.ring = 'main'`;
  const { responseBody: updated } = await registry.updateConfiguration(cfg);
  assert.notEqual(updated.etag, cfg.etag);
  await eventually(async () => {
    assert.equal((await desiredOf(ids[0])).properties.desired.ntp.server, 'base.example');
    assert.equal((await desiredOf(ids[1])).properties.desired.ntp.server, 'canary.example');
  });
  cfg.priority = 11;
  await assert.rejects(registry.updateConfiguration(cfg), (err) => {
    assert.equal(statusOf(err), 412);
    return true;
  });
  const { responseBody: forced } = await registry.updateConfiguration(cfg, true);
  assert.equal(forced.priority, 11);
});

test('configurations: removeConfiguration falls back to the next; the last removes its settings', { timeout: TIMEOUT }, async () => {
  await registry.removeConfiguration(canary);
  await eventually(async () => assert.equal((await desiredOf(ids[1])).properties.desired.ntp.server, 'base.example'));
  await assert.rejects(registry.getConfiguration(canary), (err) => {
    assert.equal(statusOf(err), 404);
    return true;
  });
  await registry.removeConfiguration(base);
  await eventually(() => {
    const p = st.desired.find((d) => d.ntp === null);
    assert.ok(p, `the device was not told to remove ntp (got ${JSON.stringify(st.desired)})`);
  });
  for (const id of ids) {
    await eventually(async () => {
      const twin = await desiredOf(id);
      assert.equal(twin.properties.desired.ntp, undefined);
      assert.equal(twin.properties.desired.motd, undefined);
    });
  }
});

test('configurations: applyConfigurationContentOnDevice writes deviceContent at once', { timeout: TIMEOUT }, async () => {
  const seen = st.desired.length;
  await registry.applyConfigurationContentOnDevice(ids[0], { deviceContent: { 'properties.desired.direct': { x: 1 } } });
  assert.deepEqual((await desiredOf(ids[0])).properties.desired.direct, { x: 1 });
  await eventually(() => assert.ok(st.desired.slice(seen).some((d) => d.direct && d.direct.x === 1)));
});

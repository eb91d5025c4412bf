'use strict';
// Conformance of twinhub's Device Provisioning Service with Microsoft's
// official Node.js SDKs: azure-iot-provisioning-service (enrollments,
// groups, registration records) and azure-iot-provisioning-device with
// the HTTP transport and azure-iot-security-symmetric-key (a device
// registering), then azure-iot-device connecting to the hub the DPS chose
// with the key it was given. The Go driver (./run) passes:
//
//   TWINHUB_DPS_HOSTNAME            the DPS host name (on the hub's HTTPS listener)
//   TWINHUB_ID_SCOPE                the DPS ID scope
//   TWINHUB_DPS_CONNECTION_STRING   the provisioningserviceowner connection string

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const https = require('node:https');

const { ProvisioningServiceClient } = require('azure-iot-provisioning-service');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Http: ProvisioningHttp } = require('azure-iot-provisioning-device-http');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
const { Client: DeviceClient } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const { ConnectionString: ServiceConnectionString, SharedAccessSignature: ServiceSas } = require('azure-iothub');
const { TIMEOUT, run, registry, withoutMeta, statusOf } = require('./common');

const dpsHost = process.env.TWINHUB_DPS_HOSTNAME;
const idScope = process.env.TWINHUB_ID_SCOPE;
const dpsConnectionString = process.env.TWINHUB_DPS_CONNECTION_STRING;
if (!dpsHost || !idScope || !dpsConnectionString) {
  throw new Error('run this suite through `make conformance` (TWINHUB_DPS_* are not set)');
}
const service = ProvisioningServiceClient.fromConnectionString(dpsConnectionString);

const regA = `dps-${run}-a`;
const groupId = `dps-${run}-group`;
const st = {};

function register(registrationId, key) {
  const client = ProvisioningDeviceClient.create(dpsHost, idScope, new ProvisioningHttp(), new SymmetricKeySecurityClient(registrationId, key));
  return client.register();
}

// runBulk calls runBulkEnrollmentOperation with a callback: its promise
// overload never settles (it answers only when a callback was given).
function runBulk(op) {
  return new Promise((resolve, reject) => {
    service.runBulkEnrollmentOperation(op, (err, result) => (err ? reject(err) : resolve(result)));
  });
}

function deriveKey(groupKey, registrationId) {
  return crypto.createHmac('sha256', Buffer.from(groupKey, 'base64')).update(registrationId, 'utf8').digest('base64');
}

// dpsStats reads twinhub's DPS request counters (GET /_twinhub/stats on
// the DPS host, outside the DPS API).
function dpsStats() {
  const cs = ServiceConnectionString.parse(dpsConnectionString);
  const sas = ServiceSas.create(cs.HostName, cs.SharedAccessKeyName, cs.SharedAccessKey, Math.floor(Date.now() / 1000) + 600).toString();
  return new Promise((resolve, reject) => {
    const req = https.request({ host: dpsHost, port: 443, method: 'GET', path: '/_twinhub/stats?api-version=2021-10-01', headers: { Authorization: sas } }, (res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(text)) : reject(new Error(`${res.statusCode} ${text}`))));
    });
    req.on('error', reject);
    req.end();
  });
}

async function connectAndGetTwin(hub, deviceId, key) {
  const client = DeviceClient.fromConnectionString(`HostName=${hub};DeviceId=${deviceId};SharedAccessKey=${key}`, Mqtt);
  await client.open();
  try {
    return await client.getTwin();
  } finally {
    await client.close();
  }
}

test('service: createOrUpdateIndividualEnrollment generates keys and keeps the initial twin', { timeout: TIMEOUT }, async () => {
  const { responseBody: result } = await service.createOrUpdateIndividualEnrollment({
    registrationId: regA,
    deviceId: `${regA}-device`,
    attestation: { type: 'symmetricKey' },
    initialTwin: { tags: { site: 'lab' }, properties: { desired: { telemetry: { interval: 5 } } } },
  });
  assert.equal(result.registrationId, regA);
  assert.ok(result.etag);
  assert.equal(result.provisioningStatus, 'enabled');
  assert.equal(Buffer.from(result.attestation.symmetricKey.primaryKey, 'base64').length, 64);
  st.keyA = result.attestation.symmetricKey.primaryKey;
  st.enrollmentA = result;
  const { responseBody: got } = await service.getIndividualEnrollment(regA);
  assert.equal(got.etag, result.etag);
  const { responseBody: att } = await service.getIndividualEnrollmentAttestationMechanism(regA);
  assert.equal(att.type, 'symmetricKey');
});

test('service: an update with a stale etag is refused with 412', { timeout: TIMEOUT }, async () => {
  const stale = { ...st.enrollmentA, etag: '"stale"', provisioningStatus: 'disabled' };
  await assert.rejects(service.createOrUpdateIndividualEnrollment(stale), (err) => statusOf(err) === 412);
  const { responseBody: result } = await service.getIndividualEnrollment(regA);
  assert.equal(result.provisioningStatus, 'enabled');
});

test('device: registers with the enrollment key over HTTPS and connects to the assigned hub', { timeout: TIMEOUT }, async () => {
  const res = await register(regA, st.keyA);
  assert.equal(res.status, 'assigned');
  assert.equal(res.deviceId, `${regA}-device`);
  assert.ok(res.assignedHub);
  const twin = await connectAndGetTwin(res.assignedHub, res.deviceId, st.keyA);
  assert.deepEqual(withoutMeta(twin.properties.desired), { telemetry: { interval: 5 } });
  const { responseBody: tw } = await registry.getTwin(res.deviceId);
  assert.equal(tw.tags.site, 'lab');
});

test('service: the registration record is readable and deletable', { timeout: TIMEOUT }, async () => {
  const { responseBody: result } = await service.getDeviceRegistrationState(regA);
  assert.equal(result.status, 'assigned');
  assert.equal(result.deviceId, `${regA}-device`);
  await service.deleteDeviceRegistrationState(regA);
  await assert.rejects(service.getDeviceRegistrationState(regA));
});

test('device: a wrong key is refused once, with no retries', { timeout: TIMEOUT }, async () => {
  const regBad = `${regA}-wrong`;
  const before = (await dpsStats()).byRegistration[regBad.toLowerCase()] || 0;
  await assert.rejects(register(regA, Buffer.alloc(32, 7).toString('base64')));
  await assert.rejects(register(regBad, Buffer.alloc(32, 7).toString('base64')));
  const after = (await dpsStats()).byRegistration[regBad.toLowerCase()] || 0;
  assert.equal(after - before, 1, 'the SDK retried a 401');
});

test('service and device: an enrollment group with a derived key', { timeout: TIMEOUT }, async () => {
  const { responseBody: g } = await service.createOrUpdateEnrollmentGroup({
    enrollmentGroupId: groupId,
    attestation: { type: 'symmetricKey' },
    initialTwin: { tags: { fleet: 'sensors' } },
  });
  assert.ok(g.attestation.symmetricKey.primaryKey);
  const { responseBody: got } = await service.getEnrollmentGroup(groupId);
  assert.equal(got.enrollmentGroupId, groupId);
  const ids = [`${groupId}-1`, `${groupId}-2`, `${groupId}-3`];
  for (const id of ids) {
    const res = await register(id, deriveKey(g.attestation.symmetricKey.primaryKey, id));
    assert.equal(res.status, 'assigned');
    assert.equal(res.deviceId, id);
  }
  const twin = await connectAndGetTwin((await service.getDeviceRegistrationState(ids[0])).responseBody.assignedHub, ids[0], deriveKey(g.attestation.symmetricKey.primaryKey, ids[0]));
  assert.ok(twin);
  // Query#next() without arguments forgets the continuation token (the
  // SDK's promise overload), so the token is passed on explicitly.
  const q = service.createEnrollmentGroupDeviceRegistrationStateQuery({ query: '*' }, groupId, 2);
  const seen = [];
  do {
    const { responseBody: result } = await q.next(q.continuationToken);
    seen.push(...result.map((r) => r.registrationId));
  } while (q.hasMoreResults);
  assert.deepEqual(seen.sort(), ids);
  const { responseBody: att } = await service.getEnrollmentGroupAttestationMechanism(groupId);
  assert.equal(att.type, 'symmetricKey');
});

test('service: bulk create, paged query and delete of individual enrollments', { timeout: TIMEOUT }, async () => {
  const batch = [1, 2, 3].map((i) => ({ registrationId: `${regA}-bulk-${i}`, attestation: { type: 'symmetricKey' } }));
  const result = await runBulk({ mode: 'create', enrollments: batch });
  assert.equal(result.isSuccessful, true);
  const q = service.createIndividualEnrollmentQuery({ query: '*' }, 2);
  const seen = [];
  let pages = 0;
  do {
    const { responseBody: page } = await q.next(q.continuationToken);
    seen.push(...page.map((e) => e.registrationId));
    pages++;
  } while (q.hasMoreResults);
  for (const e of batch) assert.ok(seen.includes(e.registrationId), `query lacks ${e.registrationId}`);
  assert.ok(pages >= 2, 'no continuation');
  const del = await runBulk({ mode: 'delete', enrollments: batch });
  assert.equal(del.isSuccessful, true);
  await assert.rejects(service.getIndividualEnrollment(batch[0].registrationId));
});

test('service: a disabled enrollment provisions nothing', { timeout: TIMEOUT }, async () => {
  const { responseBody: result } = await service.getIndividualEnrollment(regA);
  await service.createOrUpdateIndividualEnrollment({ ...result, provisioningStatus: 'disabled' });
  await assert.rejects(register(regA, st.keyA), /disabled/i);
  await service.deleteIndividualEnrollment(regA);
  await service.deleteEnrollmentGroup(groupId);
  await assert.rejects(service.getEnrollmentGroup(groupId));
});

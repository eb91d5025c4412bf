// A node:test reporter for the conformance suite: one line per test, the
// reason of every failure, and the closing line "N passed, N failed".
import { inspect } from 'node:util';

function reason(error) {
  let e = error;
  // node:test wraps what the test threw in ERR_TEST_FAILURE.
  if (e && e.code === 'ERR_TEST_FAILURE' && e.cause) e = e.cause;
  if (e instanceof Error) {
    const lines = [`${e.name}: ${e.message}`];
    if (e.responseBody) lines.push(`response body: ${e.responseBody}`);
    if (e.response && e.response.statusCode) lines.push(`HTTP status: ${e.response.statusCode}`);
    return lines.join('\n');
  }
  return inspect(e, { depth: 4 });
}

function indent(s, pad) {
  return String(s).split('\n').map((l) => pad + l).join('\n');
}

export default async function* reporter(source) {
  let passed = 0;
  let failed = 0;
  let skipped = 0;
  for await (const { type, data } of source) {
    switch (type) {
      case 'test:pass': {
        if (data.details && data.details.type === 'suite') break;
        const ms = Math.round((data.details && data.details.duration_ms) || 0);
        if (data.skip || data.todo) {
          skipped++;
          yield `- ${data.name} (skipped${typeof data.skip === 'string' ? ': ' + data.skip : ''})\n`;
        } else {
          passed++;
          yield `ok   ${data.name} (${ms} ms)\n`;
        }
        break;
      }
      case 'test:fail': {
        if (data.details && data.details.type === 'suite') break;
        failed++;
        const ms = Math.round((data.details && data.details.duration_ms) || 0);
        yield `FAIL ${data.name} (${ms} ms)\n${indent(reason(data.details && data.details.error), '     ')}\n`;
        break;
      }
      case 'test:stdout':
      case 'test:stderr':
        yield data.message;
        break;
      case 'test:diagnostic':
        // node's own totals (tests, pass, fail, duration) are replaced by the closing line.
        if (!/^(tests|suites|pass|fail|cancelled|skipped|todo|duration_ms) /.test(data.message)) {
          yield `# ${data.message}\n`;
        }
        break;
      default:
        break;
    }
  }
  yield `${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`;
}

// A Node.js client of samplerd, run by tests/node/test_node_client.py against a real server.
//
// 1. Loads proto/samplerd/v1/sampler.proto at run time with @grpc/proto-loader, builds FP32
//    logits in JavaScript, calls Sample and checks the answer.
// 2. With NO proto file: asks the server's reflection service (grpc.reflection.v1alpha) for
//    the file that defines samplerd.v1.Sampler, turns the returned FileDescriptorProtos into
//    a service definition with proto-loader's loadFileDescriptorSetFromBuffer, and calls
//    ListStrategies and Sample through it. The reflection client is our own, minimal, built on
//    @grpc/grpc-js: the two reflection messages it needs are encoded and decoded by hand
//    below (a few protobuf wire-format primitives), so not even reflection.proto is read.
//
// Environment: SAMPLERD_TARGET (host:port), SAMPLERD_EXPECTED (JSON: the token ids the Python
// sampler library draws for the seeded request below, computed by the pytest driver).

'use strict';

const assert = require('node:assert/strict');
const path = require('node:path');
const test = require('node:test');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const TARGET = process.env.SAMPLERD_TARGET || '127.0.0.1:50051';
const EXPECTED = JSON.parse(process.env.SAMPLERD_EXPECTED || 'null');
const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const LOADER_OPTIONS = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };

// The logits: B rows, V columns, value ((131 i + 71 j) mod 97) / 10 stored as float32. The
// pytest driver builds the same array in NumPy (both round the same double to float32).
const ROWS = 3;
const VOCAB = 256;

function makeLogits() {
  const values = new Float32Array(ROWS * VOCAB);
  for (let i = 0; i < ROWS; i++) {
    for (let j = 0; j < VOCAB; j++) values[i * VOCAB + j] = ((131 * i + 71 * j) % 97) / 10;
  }
  return values;
}

function tensor(values) {
  // Float32Array is little-endian on every platform Node runs on (x86, ARM).
  return { dtype: 'FP32', shape: [ROWS, VOCAB], data: Buffer.from(values.buffer, values.byteOffset, values.byteLength) };
}

// Shannon entropy (nats) of softmax(row), in double precision.
function entropy(row) {
  return -softmax(row).reduce((acc, q) => acc + (q > 0 ? q * Math.log(q) : 0), 0);
}

function softmax(row) {
  const max = Math.max(...row);
  const weights = Array.from(row, (x) => Math.exp(x - max));
  const total = weights.reduce((a, b) => a + b, 0);
  return weights.map((w) => w / total);
}

// The probability of the least probable token in the top-p nucleus.
function nucleusThreshold(probs, p) {
  const sorted = [...probs].sort((a, b) => b - a);
  let mass = 0;
  for (const q of sorted) {
    mass += q;
    if (mass >= p - 1e-9) return q;
  }
  return sorted[sorted.length - 1];
}

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 60_000 }, (error, reply) => (error ? reject(error) : resolve(reply)));
  });
}

async function checkSample(Sampler) {
  const client = new Sampler(TARGET, grpc.credentials.createInsecure());
  try {
    const logits = makeLogits();
    const reply = await call(client, 'Sample', {
      logits: tensor(logits), params: { top_p: 0.9, seed: 7 }, request_id: 'node-1',
    });
    assert.equal(reply.request_id, 'node-1');
    assert.equal(reply.rows.length, ROWS);
    reply.rows.forEach((row, i) => {
      const values = logits.subarray(i * VOCAB, (i + 1) * VOCAB);
      assert.equal(row.strategy, 'top_p');
      assert.equal(row.token_ids.length, 1);
      const token = row.token_ids[0];
      assert.ok(token >= 0 && token < VOCAB);
      // Top-p 0.9 keeps the smallest most-probable set reaching mass 0.9: the drawn token is
      // at least as probable as the least probable token of that set.
      const probs = softmax(values);
      assert.ok(probs[token] >= nucleusThreshold(probs, 0.9) * (1 - 1e-6), `row ${i}: token ${token}`);
      assert.ok(row.logprobs[0] <= 0);
      assert.ok(Math.abs(row.stats.entropy - entropy(values)) < 1e-3, `row ${i} entropy ${row.stats.entropy}`);
      assert.ok(row.stats.kept_mass >= 0.9 - 1e-6 && row.stats.kept_mass <= 1 + 1e-6);
      assert.ok(row.stats.kept_tokens >= 1 && row.stats.kept_tokens < VOCAB);
    });
    if (EXPECTED !== null) assert.deepEqual(reply.rows.map((r) => r.token_ids), EXPECTED);

    // Greedy: the first maximal logit of each row.
    const greedy = await call(client, 'Sample', { logits: tensor(logits), params: { temperature: 0 } });
    greedy.rows.forEach((row, i) => {
      const values = Array.from(logits.subarray(i * VOCAB, (i + 1) * VOCAB));
      assert.deepEqual(row.token_ids, [values.indexOf(Math.max(...values))]);
      assert.equal(row.strategy, 'greedy');
    });

    // A bad parameter: INVALID_ARGUMENT naming the field.
    await assert.rejects(
      call(client, 'Sample', { logits: tensor(logits), params: { top_p: 1.5 } }),
      (error) => error.code === grpc.status.INVALID_ARGUMENT && error.details.startsWith('params.top_p'),
    );
    return reply;
  } finally {
    client.close();
  }
}

test('Sample with proto/ loaded by @grpc/proto-loader', async () => {
  const definition = protoLoader.loadSync('samplerd/v1/sampler.proto', { ...LOADER_OPTIONS, includeDirs: [PROTO_ROOT] });
  const { Sampler } = grpc.loadPackageDefinition(definition).samplerd.v1;
  await checkSample(Sampler);
});

// ---- a minimal reflection client ---------------------------------------------------------------

function varint(value) {
  const bytes = [];
  while (value > 0x7f) {
    bytes.push((value & 0x7f) | 0x80);
    value = Math.floor(value / 128);
  }
  bytes.push(value);
  return Buffer.from(bytes);
}

// A length-delimited field (strings, bytes, embedded messages).
function lengthDelimited(field, payload) {
  return Buffer.concat([varint((field << 3) | 2), varint(payload.length), payload]);
}

// The length-delimited fields of one message: [{field, value: Buffer}] (other wire types skipped).
function fields(buffer) {
  const out = [];
  let offset = 0;
  const readVarint = () => {
    let result = 0;
    let shift = 1;
    for (;;) {
      const byte = buffer[offset++];
      result += (byte & 0x7f) * shift;
      if (byte < 0x80) return result;
      shift *= 128;
    }
  };
  while (offset < buffer.length) {
    const key = readVarint();
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (wire === 0) readVarint();
    else if (wire === 1) offset += 8;
    else if (wire === 5) offset += 4;
    else if (wire === 2) {
      const length = readVarint();
      out.push({ field, value: buffer.subarray(offset, offset + length) });
      offset += length;
    } else throw new Error(`unsupported wire type ${wire}`);
  }
  return out;
}

const REFLECTION_METHOD = '/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo';

// ServerReflectionRequest: list_services = 7, file_containing_symbol = 4 (both strings).
// ServerReflectionResponse: file_descriptor_response = 4 { repeated bytes file_descriptor_proto = 1 },
// list_services_response = 6 { repeated ServiceResponse service = 1 { string name = 1 } },
// error_response = 7 { int32 error_code = 1; string error_message = 2 }.
async function reflect(target, requestField, text) {
  const client = new grpc.Client(target, grpc.credentials.createInsecure());
  try {
    const stream = client.makeBidiStreamRequest(REFLECTION_METHOD, (b) => b, (b) => b);
    const reply = new Promise((resolve, reject) => {
      stream.on('data', resolve);
      stream.on('error', reject);
    });
    stream.write(lengthDelimited(requestField, Buffer.from(text)));
    stream.end();
    const message = await reply;
    const byField = (n) => fields(message).filter((f) => f.field === n).map((f) => f.value);
    const failure = byField(7)[0];
    if (failure) throw new Error(`reflection error: ${fields(failure).map((f) => f.value.toString())}`);
    return byField;
  } finally {
    client.close();
  }
}

async function listServices(target) {
  const byField = await reflect(target, 7, '');
  return fields(byField(6)[0]).map((service) => fields(service.value)[0].value.toString());
}

// The FileDescriptorProtos that define `symbol` (and their imports, which the server includes),
// as one serialized FileDescriptorSet (repeated FileDescriptorProto file = 1).
async function descriptorSetFor(target, symbol) {
  const byField = await reflect(target, 4, symbol);
  const files = fields(byField(4)[0]).filter((f) => f.field === 1).map((f) => f.value);
  return Buffer.concat(files.map((file) => lengthDelimited(1, file)));
}

test('Sample and ListStrategies via server reflection, with no proto file', async () => {
  const services = await listServices(TARGET);
  assert.ok(services.includes('samplerd.v1.Sampler'), services.join(','));
  assert.ok(services.includes('inference.GRPCInferenceService'), services.join(','));
  const definition = protoLoader.loadFileDescriptorSetFromBuffer(
    await descriptorSetFor(TARGET, 'samplerd.v1.Sampler'), LOADER_OPTIONS);
  const { Sampler } = grpc.loadPackageDefinition(definition).samplerd.v1;
  const client = new Sampler(TARGET, grpc.credentials.createInsecure());
  try {
    const strategies = await call(client, 'ListStrategies', {});
    const names = strategies.strategies.map((s) => s.name);
    assert.ok(names.includes('top_p') && names.includes('mirostat_v2'), names.join(','));
    const topP = strategies.strategies.find((s) => s.name === 'top_p');
    assert.equal(topP.parameters[0].name, 'top_p');
    assert.equal(topP.parameters[0].range, '(0, 1]');
  } finally {
    client.close();
  }
  await checkSample(Sampler);
});

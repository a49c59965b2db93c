// Sample one row of logits from samplerd with @grpc/grpc-js and @grpc/proto-loader.
// Run from any directory: node path/to/examples/node/sample.js
// (npm install @grpc/grpc-js @grpc/proto-loader first; SAMPLERD_TARGET overrides localhost:50051.)
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// The proto directory relative to this file, not to the working directory.
const PROTO_DIR = process.env.SAMPLERD_PROTO_DIR || path.join(__dirname, '..', '..', 'proto');
const definition = protoLoader.loadSync('samplerd/v1/sampler.proto', {
  includeDirs: [PROTO_DIR], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
});
const { Sampler } = grpc.loadPackageDefinition(definition).samplerd.v1;
const client = new Sampler(process.env.SAMPLERD_TARGET || 'localhost:50051', grpc.credentials.createInsecure());

const logits = new Float32Array([1.0, 2.0, 3.0, 4.0]);             // B = 1, V = 4
client.Sample({
  logits: { dtype: 'FP32', shape: [1, 4], data: Buffer.from(logits.buffer) },
  params: { top_p: 0.9, seed: 7 },
}, { deadline: Date.now() + 30000 }, (error, reply) => {
  if (error) {                                                         // error.code, error.details
    console.error(`samplerd: ${error.code} ${error.details}`);
    process.exit(1);
  }
  const row = reply.rows[0];
  console.log(JSON.stringify({ token_ids: row.token_ids, logprobs: row.logprobs, strategy: row.strategy,
                               entropy: row.stats.entropy }));
  client.close();
});

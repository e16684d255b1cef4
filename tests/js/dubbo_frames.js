// Dubbo frames made by real peers' code, as JSON {name: hex}: requests by dubbo2.js's own
// encoder, heartbeats by dubbo2.js, responses by hessian.js with a hand-written 16-byte header.
// Used as conformance samples in tests/codecs/test_dubbo.py.
'use strict';
const hessian = require('hessian.js');
const java = require('js-to-java');
const DubboEncoder = require('dubbo2.js/es7/encode').default;
const HeartBeat = require('dubbo2.js/es7/heartbeat').default;
const Context = require('dubbo2.js/es7/context').default;

const frames = {};

function request(name, fields) {
  const ctx = Context.create();
  ctx.requestId = fields.requestId;
  ctx.methodName = fields.method;
  ctx.methodArgs = fields.args;
  ctx.dubboVersion = fields.dubboVersion || '2.0.2';
  ctx.dubboInterface = fields.interface;
  ctx.path = fields.interface;
  ctx.group = fields.group;
  ctx.timeout = fields.timeout;
  ctx.version = fields.version;
  if (fields.attachments) ctx.attachments = fields.attachments;
  frames[name] = new DubboEncoder(ctx).encode().toString('hex');
}

function response(name, requestId, status, writeBody) {
  const enc = new hessian.EncoderV2();
  writeBody(enc);
  const body = enc.get();
  const head = Buffer.alloc(16);
  head.writeUInt16BE(0xdabb, 0);
  head[2] = 0x02;
  head[3] = status;
  head.writeBigUInt64BE(BigInt(requestId), 4);
  head.writeUInt32BE(body.length, 12);
  frames[name] = Buffer.concat([head, body]).toString('hex');
}

request('sayHello', {requestId: 1, interface: 'org.apache.dubbo.demo.DemoService', method: 'sayHello',
  version: '1.0.0', group: 'g1', timeout: 3000, args: [java.String('world')]});
request('all argument types', {requestId: 77, interface: 'org.example.Kitchen', method: 'sink',
  version: '2.1', attachments: {'x-user': 'test-7', tenant: 'acme'},
  args: [java.String('s'), java.int(42), java.long(1234567890123), java.array.int([1, 2, 3]),
    {$class: 'java.util.HashMap', $: {k: 'v'}},
    {$class: 'org.example.User', $: {id: java.int(1), name: java.String('ann')}},
    java.double(2.5), java.boolean(true), {$class: 'java.util.Date', $: new Date(1700000000000)},
    java.array.String(['q'.repeat(40000)])]});
request('no arguments', {requestId: 2 ** 40, interface: 'org.example.Clock', method: 'now', args: []});
frames['heartbeat'] = HeartBeat.encode().toString('hex');
response('value', 1, 20, (enc) => { enc.write(java.int(1)); enc.write('hello world'); });
response('null value', 5, 20, (enc) => { enc.write(java.int(2)); });
response('value with attachments', 9, 20, (enc) => {
  enc.write(java.int(4));
  enc.write({$class: 'org.example.User', $: {id: java.int(1), name: java.String('ann')}});
  enc.write({$class: 'java.util.HashMap', $: {'x-served-by': 'p1', dubbo: '2.0.2'}});
});
response('null with attachments', 10, 20, (enc) => {
  enc.write(java.int(5));
  enc.write({$class: 'java.util.HashMap', $: {k: 'v'}});
});
response('exception', 11, 20, (enc) => {
  enc.write(java.int(0));
  enc.write({$class: 'java.lang.RuntimeException', $: {detailMessage: java.String('boom')}});
});
response('exception with attachments', 12, 20, (enc) => {
  enc.write(java.int(3));
  enc.write({$class: 'java.lang.RuntimeException', $: {detailMessage: java.String('boom')}});
  enc.write({$class: 'java.util.HashMap', $: {k: 'v'}});
});
response('service not found', 13, 60, (enc) => { enc.write('no provider for org.example.Missing'); });
process.stdout.write(JSON.stringify(frames));

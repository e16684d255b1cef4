// Print the hex of one request frame made by dubbo2.js's own encoder.
// stdin: {"requestId", "interface", "method", "version", "group", "args", "attachments", "dubboVersion"}
'use strict';
const DubboEncoder = require('dubbo2.js/es7/encode').default;
const Context = require('dubbo2.js/es7/context').default;

let raw = '';
process.stdin.on('data', (chunk) => { raw += chunk; });
process.stdin.on('end', () => {
  const call = JSON.parse(raw);
  const ctx = Context.create();
  ctx.requestId = call.requestId || 1;
  ctx.methodName = call.method;
  ctx.methodArgs = call.args || [];
  ctx.dubboVersion = call.dubboVersion || '2.0.2';
  ctx.dubboInterface = call.interface;
  ctx.path = call.interface;
  ctx.group = call.group;
  ctx.version = call.version;
  if (call.attachments) ctx.attachments = call.attachments;
  process.stdout.write(new DubboEncoder(ctx).encode().toString('hex'));
});

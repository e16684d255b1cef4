// Make Dubbo calls with dubbo2.js (DirectlyDubbo) and print their outcomes as JSON.
// stdin: {"address": "127.0.0.1:PORT", "parallel": false, "calls": [{"interface", "version", "group", "method",
//         "args": [hessian.js values such as {"$class": "int", "$": 1}], "attachments": {...}}]}
// stdout: [{"res": ..., "err": null | {"name", "message"}}] in call order.
'use strict';
const {DirectlyDubbo, Context} = require('dubbo2.js');

// DirectlyDubbo has no per-call attachment option: give each new call context the pending ones.
let pendingAttachments = {};
const originalCreate = Context.create;
Context.create = function create() {
  const ctx = originalCreate.call(Context);
  ctx.attachments = pendingAttachments;
  return ctx;
};

async function main(input) {
  const dubbo = DirectlyDubbo.from({dubboAddress: input.address, dubboVersion: input.dubboVersion || '2.0.2',
    dubboInvokeTimeout: input.timeout || 5});
  const invoke = (call) => {
    const service = dubbo.proxyService({dubboInterface: call.interface, version: call.version,
      group: call.group, methods: {[call.method]: (...args) => args}});
    pendingAttachments = call.attachments || {};
    return service[call.method](...(call.args || [])).then(({res, err}) => ({
      res: res === undefined ? null : res,
      err: err ? {name: err.constructor.name, message: String(err.message)} : null,
    }));
  };
  if (input.parallel) {
    // all calls in flight at once on dubbo2.js's connection: answers are matched by request id
    return Promise.all(input.calls.map(invoke));
  }
  const results = [];
  for (const call of input.calls) results.push(await invoke(call));
  return results;
}

let raw = '';
process.stdin.on('data', (chunk) => { raw += chunk; });
process.stdin.on('end', () => {
  main(JSON.parse(raw)).then((results) => {
    process.stdout.write(JSON.stringify(results));
    process.exit(0);
  }, (error) => {
    process.stderr.write(String(error && error.stack || error));
    process.exit(1);
  });
});

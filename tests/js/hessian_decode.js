// Decode Hessian2 values with hessian.js: stdin is JSON {hex, count}; stdout is a JSON array.
// Cross-checks what our writer (codecs/dubbo/hessian2.py) produces.
'use strict';
const hessian = require('hessian.js');

let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const {hex, count} = JSON.parse(input);
  const decoder = new hessian.DecoderV2(Buffer.from(hex, 'hex'));
  const values = [];
  for (let i = 0; i < count; i++) values.push(decoder.read());
  process.stdout.write(JSON.stringify(values));
});

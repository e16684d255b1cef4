// Dump Hessian2 values encoded by hessian.js, as JSON {name: {hex, count}}, for the
// skipper cross-check in tests/codecs/test_dubbo_hessian2.py. `count` is how many
// top-level values the bytes hold (a class definition counts with its value).
'use strict';
const hessian = require('hessian.js');
const java = require('js-to-java');

const samples = {};

function encode(name, values, build) {
  const enc = new hessian.EncoderV2();
  if (build) {
    build(enc);
  } else {
    for (const v of values) enc.write(v);
  }
  samples[name] = {hex: enc.get().toString('hex'), count: values.length};
}

const long = (s) => ({$class: 'long', $: s});
const ints = [0, 1, -16, 47, 48, -17, 2047, -2048, 2048, 262143, -262144, 262144, 2147483647, -2147483648];
encode('null', [null]);
encode('booleans', [true, false]);
encode('ints', ints.map((v) => java.int(v)));
encode('longs', ['0', '-8', '15', '16', '-2048', '2047', '2048', '-262144', '262143', '262144',
  '2147483647', '-2147483648', '2147483648', '9223372036854775807', '-9223372036854775808'].map(long));
encode('doubles', [0.0, 1.0, 2.0, -128.0, 127.0, 32767.0, -32768.0, 12.25, 0.001, 3.141592653589793,
  1e300].map((v) => java.double(v)));
encode('strings', ['', 'a', 'hello', 'x'.repeat(31), 'y'.repeat(32), 'z'.repeat(1023), 'w'.repeat(1024),
  'héllo wörld', '中文字符串', 'emoji \u{1F600} end']);
encode('chunked string', ['q'.repeat(70000)]);
encode('chunked non-ascii string', ['é'.repeat(40000)]);
encode('binary', [Buffer.alloc(0), Buffer.from('abc'), Buffer.alloc(15, 1), Buffer.alloc(16, 2),
  Buffer.alloc(1023, 3), Buffer.alloc(1024, 4)]);
encode('chunked binary', [Buffer.alloc(10000, 5)]);
encode('dates', [new Date(0), new Date(1700000000000), new Date(1700000000123)]);
encode('typed short list', [java.array.int([1, 2, 3])]);
encode('typed long list', [java.array.String(['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i'])]);
encode('untyped short list', [[1, 'two', 3.5]]);
encode('untyped long list', [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]);
encode('java.util.ArrayList', [{$class: 'java.util.ArrayList', $: [java.int(1), java.String('x')]}]);
encode('variable typed list', [0], (enc) => {
  enc._writeListBegin(-1, '[int');
  enc.write(java.int(1));
  enc.write(java.int(2));
  enc.byteBuffer.putChar('Z');
});
encode('variable untyped list', [0], (enc) => {
  enc._writeListBegin(-1);
  enc.write('a');
  enc.byteBuffer.putChar('Z');
});
encode('untyped map', [{a: 1, b: 'two', c: [1, 2]}]);
encode('java.util.HashMap', [{$class: 'java.util.HashMap', $: {k: 'v', n: java.int(3)}}]);
encode('typed map', [0], (enc) => {
  enc._writeHashMap({x: java.int(1)}, 'com.example.Props');
});
encode('es6 map', [new Map([[java.int(1), 'one'], ['two', java.long(2)]])]);
const user = (id) => ({$class: 'com.example.User', $: {id: java.int(id), name: java.String('u' + id),
  tags: java.array.String(['a', 'b'])}});
encode('object', [user(1)]);
encode('objects sharing a class', [user(1), user(2)]);
encode('many classes', Array.from({length: 20}, (_, i) => ({$class: 'com.example.C' + i, $: {v: java.int(i)}})));
encode('nested object', [{$class: 'com.example.Order', $: {owner: user(7), items: [user(8), user(9)],
  meta: {$class: 'java.util.HashMap', $: {k: java.long(5)}}}}]);
const shared = {$class: 'com.example.Node', $: {v: java.int(1)}};
encode('reference', [[shared, shared]]);
const sharedMap = {$class: 'java.util.HashMap', $: {a: java.int(1)}};
encode('map reference', [[sharedMap, sharedMap, sharedMap]]);
encode('enum', [java.enum('com.example.Color', 'RED')]);
encode('null inside', [[null, true, false]]);
process.stdout.write(JSON.stringify(samples));

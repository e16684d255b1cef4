/*
 * dump_headers: writes every request header-map pair it sees into one
 * request Mutation key and into the log, so a test can compare what a WASM
 * filter sees with what Python and Lua filters see for the same request.
 *
 * Configuration: {"key": "x-wasm-dump", "log": 1}
 * The dump is "k1=v1\nk2=v2\n..." in the host's order, read with ONE bulk
 * proxy_get_header_map_pairs call (the cheap way to read many keys).
 * Pairs whose key starts with the dump key itself are skipped.
 */
#include "proxy_wasm.h"

static char key[128] = "x-wasm-dump";
static long log_it = 0;

WASM_EXPORT("proxy_on_configure") u32 proxy_on_configure(u32 root, u32 size) {
    static char config[1024];
    pw_begin_callback();
    size_t n = pw_read_buffer(PW_PLUGIN_CONFIGURATION, size, config, sizeof config);
    if (n) {
        pw_json_string(config, n, "key", key, sizeof key);
        log_it = pw_json_int(config, n, "log", 0);
    }
    return 1;
}

WASM_EXPORT("proxy_on_request_headers") u32 proxy_on_request_headers(u32 id, u32 n, u32 eos) {
    pw_begin_callback();
    const char *data = 0;
    size_t size = 0;
    if (proxy_get_header_map_pairs(PW_REQUEST_HEADERS, &data, &size) != PW_OK || !data) return PW_CONTINUE;
    u32 count = pw_map_count(data, size);
    pw_pair *pairs = pw_alloc(sizeof(pw_pair) * (count + 1));
    char *out = pw_alloc(size + 2 * count + 16);
    if (!pairs || !out) return PW_CONTINUE;
    count = pw_map_pairs(data, size, pairs, count);
    size_t klen = pw_strlen(key), len = 0;
    for (u32 i = 0; i < count; i++) {
        if (pairs[i].key_size >= klen && pw_eq(pairs[i].key, klen, key, klen)) continue;
        memcpy(out + len, pairs[i].key, pairs[i].key_size);
        len += pairs[i].key_size;
        out[len++] = '=';
        memcpy(out + len, pairs[i].value, pairs[i].value_size);
        len += pairs[i].value_size;
        out[len++] = '\n';
    }
    pw_set(PW_REQUEST_HEADERS, key, out, len);
    if (log_it) proxy_log(PW_INFO, out, len);
    return PW_CONTINUE;
}

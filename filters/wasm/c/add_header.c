/*
 * add_header: a C Proxy-Wasm filter that reads its JSON configuration and writes
 * request and response header-map entries (metaproxy: Mutation keys).
 *
 * Configuration (all keys optional):
 *   {"header": "x-wasm-c", "value": "added-by-c", "response_header": "x-wasm-c-response",
 *    "copy_from": "method"}
 * - `header: value` is set on every request;
 * - when `copy_from` names a request key, its value is also copied to `header`-from;
 * - `response_header` is set on every response to the request's method.
 * The filter keeps no per-request state, so it exports no proxy_on_context_create nor
 * proxy_on_done/log/delete: all callbacks are optional, and the host skips those a
 * module does not export (two guest calls per request instead of six).
 */
#include "proxy_wasm.h"

static char header[128] = "x-wasm-c";
static char value[256] = "added-by-c";
static char response_header[128] = "x-wasm-c-response";
static char copy_from[128] = "";
static char copy_to[160] = "";

WASM_EXPORT("proxy_on_vm_start") u32 proxy_on_vm_start(u32 root, u32 size) { return 1; }

WASM_EXPORT("proxy_on_configure") u32 proxy_on_configure(u32 root, u32 size) {
    static char config[2048];
    pw_begin_callback();
    size_t n = pw_read_buffer(PW_PLUGIN_CONFIGURATION, size, config, sizeof config);
    if (n == 0) return 1;
    if (config[0] != '{') {
        pw_log(PW_ERROR, "add_header: configuration must be a JSON object");
        return 0;
    }
    pw_json_string(config, n, "header", header, sizeof header);
    pw_json_string(config, n, "value", value, sizeof value);
    pw_json_string(config, n, "response_header", response_header, sizeof response_header);
    if (pw_json_string(config, n, "copy_from", copy_from, sizeof copy_from) > 0) {
        size_t h = pw_strlen(header);
        memcpy(copy_to, header, h);
        memcpy(copy_to + h, "-from", 6);
    }
    pw_log(PW_INFO, "add_header: configured");
    return 1;
}

WASM_EXPORT("proxy_on_request_headers") u32 proxy_on_request_headers(u32 id, u32 n, u32 eos) {
    pw_begin_callback();
    pw_set(PW_REQUEST_HEADERS, header, value, pw_strlen(value));
    if (copy_from[0]) {
        const char *v = 0;
        size_t vn = 0;
        if (proxy_get_header_map_value(PW_REQUEST_HEADERS, copy_from, pw_strlen(copy_from), &v, &vn) == PW_OK)
            pw_set(PW_REQUEST_HEADERS, copy_to, v, vn);
    }
    return PW_CONTINUE;
}

WASM_EXPORT("proxy_on_response_headers") u32 proxy_on_response_headers(u32 id, u32 n, u32 eos) {
    pw_begin_callback();
    const char *v = 0;
    size_t vn = 0;
    if (proxy_get_header_map_value(PW_REQUEST_HEADERS, "method", 6, &v, &vn) != PW_OK) {
        v = "unknown";
        vn = 7;
    }
    pw_set(PW_RESPONSE_HEADERS, response_header, v, vn);
    return PW_CONTINUE;
}

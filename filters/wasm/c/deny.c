/*
 * deny: a C Proxy-Wasm filter that refuses requests by metadata with
 * proxy_send_local_response (metaproxy turns it into the codec's error reply).
 *
 * Configuration: {"key": "x-user", "value": "mallory", "status": 403, "message": "user is blocked"}
 * A request whose `key` equals `value` is answered locally with `status`; the
 * status code picks the error kind (403 -> permission_denied, 429 -> over_limit, ...).
 * Refusals are counted in the metric `denied` (counter).
 */
#include "proxy_wasm.h"

static char key[128] = "x-deny";
static char value[256] = "true";
static char message[256] = "denied by wasm filter";
static u32 status = 403;
static u32 denied_metric;

WASM_EXPORT("proxy_on_configure") u32 proxy_on_configure(u32 root, u32 size) {
    static char config[2048];
    pw_begin_callback();
    size_t n = pw_read_buffer(PW_PLUGIN_CONFIGURATION, size, config, sizeof config);
    if (n) {
        pw_json_string(config, n, "key", key, sizeof key);
        pw_json_string(config, n, "value", value, sizeof value);
        pw_json_string(config, n, "message", message, sizeof message);
        status = (u32)pw_json_int(config, n, "status", 403);
    }
    proxy_define_metric(0, "denied", 6, &denied_metric);
    return 1;
}

WASM_EXPORT("proxy_on_request_headers") u32 proxy_on_request_headers(u32 id, u32 n, u32 eos) {
    pw_begin_callback();
    const char *v = 0;
    size_t vn = 0;
    if (proxy_get_header_map_value(PW_REQUEST_HEADERS, key, pw_strlen(key), &v, &vn) == PW_OK &&
        pw_eq(v, vn, value, pw_strlen(value))) {
        proxy_increment_metric(denied_metric, 1);
        proxy_send_local_response(status, message, pw_strlen(message), 0, 0, 0, 0, (u32)-1);
        return PW_PAUSE;
    }
    return PW_CONTINUE;
}

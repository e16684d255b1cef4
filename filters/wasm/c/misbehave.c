/*
 * misbehave: a test fixture (tests/wasm) that fails on purpose, chosen by the
 * request's `method`, to prove one bad request does not hurt the others:
 *   loop    - spins forever (stopped by epoch interruption or fuel)
 *   bomb    - grows memory until the store's limit refuses, then traps
 *   trap    - executes `unreachable`
 *   badptr  - loads from an address far outside linear memory (a trap)
 *   badhost - passes an out-of-bounds pointer to a host call (gets status 6, no trap)
 *   count   - returns how many requests this instance has seen in x-count (shows rebuilds)
 * Any other method continues.
 */
#include "proxy_wasm.h"

static u32 seen;

WASM_EXPORT("proxy_on_context_create") void proxy_on_context_create(u32 id, u32 parent) {}

static int is(const char *v, size_t n, const char *s) { return pw_eq(v, n, s, pw_strlen(s)); }

WASM_EXPORT("proxy_on_request_headers") u32 proxy_on_request_headers(u32 id, u32 n, u32 eos) {
    pw_begin_callback();
    seen++;
    const char *v = 0;
    size_t vn = 0;
    if (proxy_get_header_map_value(PW_REQUEST_HEADERS, "method", 6, &v, &vn) != PW_OK) return PW_CONTINUE;
    if (is(v, vn, "loop")) {
        volatile u32 x = 0;
        for (;;) x++;
    }
    if (is(v, vn, "bomb")) {
        for (;;) {
            u8 *p = pw_alloc(1 << 20);
            if (!p) __builtin_trap();
            p[0] = 1;
        }
    }
    if (is(v, vn, "trap")) __builtin_trap();
    if (is(v, vn, "badptr")) {
        volatile u32 *p = (u32 *)0xFFFFFFF0u;
        return *p;
    }
    if (is(v, vn, "badhost")) {
        u32 rc = proxy_replace_header_map_value(PW_REQUEST_HEADERS, (const char *)0xFFFFFF00u, 64, "x", 1);
        char digit = (char)('0' + rc % 10);
        pw_set(PW_REQUEST_HEADERS, "x-badhost-status", &digit, 1);
        return PW_CONTINUE;
    }
    if (is(v, vn, "count")) {
        char buf[12];
        int len = 0;
        u32 s = seen;
        char tmp[12];
        do { tmp[len++] = (char)('0' + s % 10); s /= 10; } while (s);
        for (int i = 0; i < len; i++) buf[i] = tmp[len - 1 - i];
        pw_set(PW_REQUEST_HEADERS, "x-count", buf, (size_t)len);
    }
    return PW_CONTINUE;
}

/*
 * proxy_wasm.h: the little a freestanding C filter needs to speak Proxy-Wasm ABI 0.2.1.
 *
 * Built with `clang --target=wasm32 -nostdlib`: there is no libc, so this header
 * brings its own memcpy/memset, a per-callback arena allocator and a very small
 * reader for flat JSON objects (enough for filter configs such as
 * {"header": "x-mesh", "value": "v1", "status": 403}).
 *
 * Memory contract: every buffer the host hands back (header pairs, values,
 * configuration) comes from proxy_on_memory_allocate, i.e. from the arena. The
 * arena is reset at the start of each callback (pw_begin_callback), so a filter
 * copies what it wants to keep (its configuration) into static storage.
 */
#ifndef METAPROXY_PROXY_WASM_H
#define METAPROXY_PROXY_WASM_H

typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned long size_t;
typedef unsigned char u8;

#define WASM_IMPORT(name) __attribute__((import_module("env"), import_name(name)))
#define WASM_EXPORT(name) __attribute__((export_name(name)))
/* Helpers are static and may go unused by a given filter. */
#define PW_HELPER static __attribute__((unused))

/* proxy_status_t */
enum { PW_OK = 0, PW_NOT_FOUND = 1, PW_BAD_ARGUMENT = 2, PW_INVALID_MEMORY_ACCESS = 6, PW_UNIMPLEMENTED = 12 };
/* proxy_log_level_t */
enum { PW_TRACE = 0, PW_DEBUG = 1, PW_INFO = 2, PW_WARN = 3, PW_ERROR = 4, PW_CRITICAL = 5 };
/* proxy_map_type_t */
enum { PW_REQUEST_HEADERS = 0, PW_RESPONSE_HEADERS = 2 };
/* proxy_buffer_type_t */
enum { PW_VM_CONFIGURATION = 6, PW_PLUGIN_CONFIGURATION = 7 };
/* proxy_action_t */
enum { PW_CONTINUE = 0, PW_PAUSE = 1 };

WASM_IMPORT("proxy_log") u32 proxy_log(u32 level, const char *msg, size_t size);
WASM_IMPORT("proxy_get_buffer_bytes")
u32 proxy_get_buffer_bytes(u32 type, u32 start, u32 max_size, const char **data, size_t *size);
WASM_IMPORT("proxy_get_header_map_pairs") u32 proxy_get_header_map_pairs(u32 map, const char **data, size_t *size);
WASM_IMPORT("proxy_get_header_map_value")
u32 proxy_get_header_map_value(u32 map, const char *key, size_t key_size, const char **value, size_t *value_size);
WASM_IMPORT("proxy_replace_header_map_value")
u32 proxy_replace_header_map_value(u32 map, const char *key, size_t key_size, const char *value, size_t value_size);
WASM_IMPORT("proxy_add_header_map_value")
u32 proxy_add_header_map_value(u32 map, const char *key, size_t key_size, const char *value, size_t value_size);
WASM_IMPORT("proxy_send_local_response")
u32 proxy_send_local_response(u32 status, const char *details, size_t details_size, const char *body, size_t body_size,
                              const char *headers, size_t headers_size, u32 grpc_status);
WASM_IMPORT("proxy_get_property")
u32 proxy_get_property(const char *path, size_t path_size, const char **value, size_t *value_size);
WASM_IMPORT("proxy_define_metric") u32 proxy_define_metric(u32 type, const char *name, size_t name_size, u32 *id);
WASM_IMPORT("proxy_increment_metric") u32 proxy_increment_metric(u32 id, long long delta);

/* ---- libc bits the compiler may call ------------------------------------------------ */
void *memcpy(void *dst, const void *src, size_t n) {
    u8 *d = dst;
    const u8 *s = src;
    while (n--) *d++ = *s++;
    return dst;
}

void *memset(void *dst, int c, size_t n) {
    u8 *d = dst;
    while (n--) *d++ = (u8)c;
    return dst;
}

PW_HELPER size_t pw_strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

PW_HELPER int pw_eq(const char *a, size_t an, const char *b, size_t bn) {
    if (an != bn) return 0;
    for (size_t i = 0; i < an; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* ---- arena allocator ----------------------------------------------------------------- */
extern u8 __heap_base;
static u8 *pw_arena_top;

PW_HELPER void pw_begin_callback(void) { pw_arena_top = &__heap_base; }

PW_HELPER void *pw_alloc(size_t size) {
    if (!pw_arena_top) pw_arena_top = &__heap_base;
    size_t start = ((size_t)pw_arena_top + 7) & ~(size_t)7;
    size_t end = start + size;
    size_t have = __builtin_wasm_memory_size(0) * 65536UL;
    if (end > have) {
        size_t pages = (end - have + 65535) / 65536;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return 0;
    }
    pw_arena_top = (u8 *)end;
    return (void *)start;
}

WASM_EXPORT("proxy_on_memory_allocate") void *proxy_on_memory_allocate(size_t size) { return pw_alloc(size); }

/* Every Proxy-Wasm module advertises the ABI it speaks with this (never called) export. */
WASM_EXPORT("proxy_abi_version_0_2_1") void proxy_abi_version_0_2_1(void) {}

/* ---- small helpers ------------------------------------------------------------------- */
PW_HELPER void pw_log(u32 level, const char *msg) { proxy_log(level, msg, pw_strlen(msg)); }

PW_HELPER void pw_set(u32 map, const char *key, const char *value, size_t value_size) {
    proxy_replace_header_map_value(map, key, pw_strlen(key), value, value_size);
}

/* Read a configuration buffer (VM or plugin) into `out`; returns its length (truncated to cap-1). */
PW_HELPER size_t pw_read_buffer(u32 type, size_t size, char *out, size_t cap) {
    const char *data = 0;
    size_t got = 0;
    out[0] = 0;
    if (size == 0 || proxy_get_buffer_bytes(type, 0, size, &data, &got) != PW_OK || !data) return 0;
    if (got > cap - 1) got = cap - 1;
    memcpy(out, data, got);
    out[got] = 0;
    return got;
}

/* Serialized map walker: u32 count, count x (u32 key_len, u32 value_len), then NUL-terminated keys/values. */
typedef struct {
    const char *key;
    u32 key_size;
    const char *value;
    u32 value_size;
} pw_pair;

PW_HELPER u32 pw_map_count(const char *data, size_t size) {
    if (size < 4) return 0;
    return *(const u32 *)data;
}

/* Fill pairs[0..n) from a serialized map; returns how many were read. */
PW_HELPER u32 pw_map_pairs(const char *data, size_t size, pw_pair *pairs, u32 cap) {
    u32 count = pw_map_count(data, size);
    if (count > cap) count = cap;
    const u32 *sizes = (const u32 *)(data + 4);
    const char *p = data + 4 + 8 * pw_map_count(data, size);
    for (u32 i = 0; i < count; i++) {
        pairs[i].key = p;
        pairs[i].key_size = sizes[2 * i];
        p += sizes[2 * i] + 1;
        pairs[i].value = p;
        pairs[i].value_size = sizes[2 * i + 1];
        p += sizes[2 * i + 1] + 1;
    }
    return count;
}

/* ---- flat JSON object reader --------------------------------------------------------- */
PW_HELPER const char *pw_skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')) p++;
    return p;
}

/* Find the value of top-level `key` in a flat JSON object; returns a pointer to it or 0. */
PW_HELPER const char *pw_json_find(const char *json, size_t len, const char *key) {
    const char *p = json, *end = json + len;
    size_t klen = pw_strlen(key);
    int depth = 0;
    while (p < end) {
        char c = *p;
        if (c == '{' || c == '[') { depth++; p++; continue; }
        if (c == '}' || c == ']') { depth--; p++; continue; }
        if (c != '"') { p++; continue; }
        const char *s = ++p;
        while (p < end && *p != '"') p += (*p == '\\') ? 2 : 1;
        const char *e = p++;
        const char *q = pw_skip_ws(p, end);
        if (depth == 1 && q < end && *q == ':' && pw_eq(s, (size_t)(e - s), key, klen))
            return pw_skip_ws(q + 1, end);
    }
    return 0;
}

/* Copy the string value of `key` (simple escapes \" \\ \n \t) into out; returns its length or -1. */
PW_HELPER int pw_json_string(const char *json, size_t len, const char *key, char *out, size_t cap) {
    const char *p = pw_json_find(json, len, key), *end = json + len;
    if (!p || *p != '"') return -1;
    size_t n = 0;
    for (p++; p < end && *p != '"' && n + 1 < cap; p++) {
        char c = *p;
        if (c == '\\' && p + 1 < end) {
            c = *++p;
            if (c == 'n') c = '\n';
            else if (c == 't') c = '\t';
        }
        out[n++] = c;
    }
    out[n] = 0;
    return (int)n;
}

PW_HELPER long pw_json_int(const char *json, size_t len, const char *key, long fallback) {
    const char *p = pw_json_find(json, len, key), *end = json + len;
    if (!p || p >= end) return fallback;
    int neg = 0;
    if (*p == '-') { neg = 1; p++; }
    if (p >= end || *p < '0' || *p > '9') return fallback;
    long v = 0;
    while (p < end && *p >= '0' && *p <= '9') v = v * 10 + (*p++ - '0');
    return neg ? -v : v;
}

#endif

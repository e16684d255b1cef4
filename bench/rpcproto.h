/*
 * rpcproto.h: the few facts about each benchmarked RPC protocol that the C
 * load generator (rpc_load.c) and upstream server (rpc_server.c) need:
 * how long a frame is, where its request id lives, how to build a small
 * request, whether a response is a success, and how to answer a request.
 *
 * Written from the protocols' specifications, for benchmarking only: a
 * request with a fixed shape, an answer with a fixed shape.
 *   tinyrpc  codecs/tinyrpc/codec.py: u32 length, u8 version, u8 type,
 *            u8 status, u8 reserved, u64 request id, str service, str method,
 *            u16 header count + headers, body (big-endian, str = u16 + bytes).
 *   thrift   framed transport (u32 length) + binary protocol, strict
 *            message header: i32 0x8001000T, string name, i32 seqid, struct.
 *   dubbo    16-byte header: u16 magic 0xdabb, u8 flag, u8 status, u64 id,
 *            u32 body length; Hessian2 body.
 */
#ifndef RPCPROTO_H
#define RPCPROTO_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FRAME (4u << 20)

typedef struct {
    unsigned char *data;
    size_t len, cap;
} buf_t;

static void buf_reserve(buf_t *b, size_t extra) {
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    b->data = realloc(b->data, cap);
    if (!b->data) { perror("realloc"); exit(1); }
    b->cap = cap;
}

static uint32_t rd32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static uint16_t rd16(const unsigned char *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static uint64_t rd64(const unsigned char *p) { return ((uint64_t)rd32(p) << 32) | rd32(p + 4); }
static void wr32(unsigned char *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static void wr16(unsigned char *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
static void wr64(unsigned char *p, uint64_t v) { wr32(p, (uint32_t)(v >> 32)); wr32(p + 4, (uint32_t)v); }

static void put(buf_t *b, const void *data, size_t n) {
    buf_reserve(b, n);
    memcpy(b->data + b->len, data, n);
    b->len += n;
}
static void put8(buf_t *b, unsigned v) { unsigned char c = (unsigned char)v; put(b, &c, 1); }
static void put16(buf_t *b, uint16_t v) { unsigned char c[2]; wr16(c, v); put(b, c, 2); }
static void put32(buf_t *b, uint32_t v) { unsigned char c[4]; wr32(c, v); put(b, c, 4); }
static void put64(buf_t *b, uint64_t v) { unsigned char c[8]; wr64(c, v); put(b, c, 8); }
static void fill(buf_t *b, int byte, size_t n) { buf_reserve(b, n); memset(b->data + b->len, byte, n); b->len += n; }

typedef struct {
    const char *name;
    const char *default_service;
    int id_bits;  /* room for the request id: 64 or 32 */
    /* Whole frame size once enough bytes are there; 0: need more; -1: not this protocol. */
    long (*frame_size)(const unsigned char *p, size_t avail);
    void (*build_request)(buf_t *out, const char *service, const char *method, size_t body);
    uint64_t (*get_id)(const unsigned char *frame, size_t len);
    void (*set_id)(unsigned char *frame, uint64_t id);
    int (*response_ok)(const unsigned char *frame, size_t len);
    /* Append the answer to one request frame; 0 ok (maybe nothing to send), -1 malformed. */
    int (*answer)(const unsigned char *frame, size_t len, buf_t *out, size_t body);
} proto_t;

/* ---------------------------------------------------------------- tinyrpc */
static long tiny_frame_size(const unsigned char *p, size_t avail) {
    if (avail < 4) return 0;
    uint32_t n = rd32(p);
    return n > MAX_FRAME ? -1 : (long)n + 4;
}

static void tiny_build_request(buf_t *out, const char *service, const char *method, size_t body) {
    size_t start = out->len, sl = strlen(service), ml = strlen(method);
    put32(out, 0);
    put8(out, 1); put8(out, 1); put8(out, 0); put8(out, 0);  /* version, request, status, reserved */
    put64(out, 0);
    put16(out, (uint16_t)sl); put(out, service, sl);
    put16(out, (uint16_t)ml); put(out, method, ml);
    put16(out, 0);  /* no headers */
    fill(out, 'q', body);
    wr32(out->data + start, (uint32_t)(out->len - start - 4));
}

static uint64_t tiny_get_id(const unsigned char *f, size_t len) { return len >= 16 ? rd64(f + 8) : ~0ull; }
static void tiny_set_id(unsigned char *f, uint64_t id) { wr64(f + 8, id); }
static int tiny_response_ok(const unsigned char *f, size_t len) {
    return len >= 16 && f[4] == 1 && f[5] == 3 && f[6] == 0;
}

static int tiny_answer(const unsigned char *f, size_t len, buf_t *out, size_t body) {
    if (len < 16 + 6 || f[4] != 1) return -1;
    int type = f[5];
    if (type == 2) return 0;                   /* oneway */
    if (type != 1 && type != 5) return -1;     /* request or heartbeat */
    size_t pos = 16;
    uint16_t sl = rd16(f + pos);
    if (pos + 2 + sl + 2 > len) return -1;
    uint16_t ml = rd16(f + pos + 2 + sl);
    size_t names_end = pos + 2 + sl + 2 + ml;
    if (names_end > len) return -1;
    size_t blen = type == 1 ? body : 0, start = out->len;
    put32(out, 0);
    put8(out, 1); put8(out, type == 1 ? 3 : 6); put8(out, 0); put8(out, 0);
    put(out, f + 8, 8);                        /* request id */
    put(out, f + 16, names_end - 16);          /* service + method */
    put16(out, 0);
    fill(out, 'x', blen);
    wr32(out->data + start, (uint32_t)(out->len - start - 4));
    return 0;
}

/* ------------------------------------------------ thrift framed + binary */
static size_t thrift_seqid_offset(const unsigned char *f, size_t len) {
    if (len < 12) return 0;
    uint32_t nl = rd32(f + 8);
    return (size_t)nl + 12 + 4 <= len ? 12 + nl : 0;
}

static void thrift_build_request(buf_t *out, const char *service, const char *method, size_t body) {
    (void)service;
    (void)body;  /* ping() takes no arguments */
    size_t start = out->len, ml = strlen(method);
    put32(out, 0);
    put32(out, 0x80010001u);                   /* VERSION_1 | CALL */
    put32(out, (uint32_t)ml); put(out, method, ml);
    put32(out, 0);                             /* seqid */
    put8(out, 0);                              /* args struct: STOP */
    wr32(out->data + start, (uint32_t)(out->len - start - 4));
}

static uint64_t thrift_get_id(const unsigned char *f, size_t len) {
    size_t off = thrift_seqid_offset(f, len);
    return off ? rd32(f + off) : ~0ull;
}
static void thrift_set_id(unsigned char *f, uint64_t id) { wr32(f + 12 + rd32(f + 8), (uint32_t)id); }
static int thrift_response_ok(const unsigned char *f, size_t len) {
    return len >= 8 && f[4] == 0x80 && f[5] == 0x01 && f[7] == 2;  /* REPLY, not EXCEPTION */
}

static int thrift_answer(const unsigned char *f, size_t len, buf_t *out, size_t body) {
    (void)body;
    if (len < 8 || f[4] != 0x80 || f[5] != 0x01) return -1;
    if (f[7] == 4) return 0;                   /* ONEWAY */
    if (f[7] != 1) return -1;
    size_t off = thrift_seqid_offset(f, len);
    if (!off) return -1;
    size_t start = out->len;
    put32(out, 0);
    put32(out, 0x80010002u);                   /* REPLY */
    put(out, f + 8, off + 4 - 8);              /* name and seqid as they came */
    put8(out, 0);                              /* void result: STOP */
    wr32(out->data + start, (uint32_t)(out->len - start - 4));
    return 0;
}

/* --------------------------------------------------------- dubbo hessian2 */
static void hessian_string(buf_t *out, const char *s, size_t n) {
    if (n < 32) {
        put8(out, (unsigned)n);
    } else if (n < 1024) {
        put8(out, 0x30 + (unsigned)(n >> 8)); put8(out, n & 0xff);
    } else {
        put8(out, 'S'); put16(out, (uint16_t)n);  /* final chunk; n < 65536 */
    }
    put(out, s, n);
}
static void hessian_cstr(buf_t *out, const char *s) { hessian_string(out, s, strlen(s)); }

static long dubbo_frame_size(const unsigned char *p, size_t avail) {
    if (avail < 2) return 0;
    if (p[0] != 0xda || p[1] != 0xbb) return -1;
    if (avail < 16) return 0;
    uint32_t n = rd32(p + 12);
    return n > MAX_FRAME ? -1 : (long)n + 16;
}

static void dubbo_build_request(buf_t *out, const char *service, const char *method, size_t body) {
    size_t start = out->len;
    put16(out, 0xdabb); put8(out, 0x80 | 0x40 | 2); put8(out, 0); put64(out, 0); put32(out, 0);
    hessian_cstr(out, "2.0.2");
    hessian_cstr(out, service);
    hessian_cstr(out, "0.0.0");
    hessian_cstr(out, method);
    if (body > 65535) body = 65535;
    if (body) {
        hessian_cstr(out, "Ljava/lang/String;");
        char *arg = malloc(body);
        memset(arg, 'q', body);
        hessian_string(out, arg, body);
        free(arg);
    } else {
        hessian_cstr(out, "");
    }
    put8(out, 'H');                            /* attachments */
    hessian_cstr(out, "path"); hessian_cstr(out, service);
    hessian_cstr(out, "interface"); hessian_cstr(out, service);
    put8(out, 'Z');
    wr32(out->data + start + 12, (uint32_t)(out->len - start - 16));
}

static uint64_t dubbo_get_id(const unsigned char *f, size_t len) { return len >= 16 ? rd64(f + 4) : ~0ull; }
static void dubbo_set_id(unsigned char *f, uint64_t id) { wr64(f + 4, id); }
static int dubbo_response_ok(const unsigned char *f, size_t len) {
    return len >= 16 && !(f[2] & 0x80) && f[3] == 20;
}

static int dubbo_answer(const unsigned char *f, size_t len, buf_t *out, size_t body) {
    if (len < 16 || !(f[2] & 0x80)) return -1;
    int event = f[2] & 0x20, twoway = f[2] & 0x40;
    if (!twoway && !event) return 0;           /* oneway */
    size_t start = out->len;
    put16(out, 0xdabb); put8(out, 2 | (event ? 0x20 : 0)); put8(out, 20); put(out, f + 4, 8); put32(out, 0);
    if (event) {
        put8(out, 'N');                        /* heartbeat reply: null */
    } else {
        put8(out, 0x91);                       /* RESPONSE_VALUE (int 1) */
        char *value = malloc(body + 1);
        memset(value, 'x', body);
        hessian_string(out, value, body);
        free(value);
    }
    wr32(out->data + start + 12, (uint32_t)(out->len - start - 16));
    return 0;
}

static const proto_t PROTOCOLS[] = {
    {"tinyrpc", "bench", 64, tiny_frame_size, tiny_build_request, tiny_get_id, tiny_set_id,
     tiny_response_ok, tiny_answer},
    {"thrift", "", 32, tiny_frame_size, thrift_build_request, thrift_get_id, thrift_set_id,
     thrift_response_ok, thrift_answer},
    {"dubbo", "bench.EchoService", 64, dubbo_frame_size, dubbo_build_request, dubbo_get_id, dubbo_set_id,
     dubbo_response_ok, dubbo_answer},
};

static const proto_t *find_proto(const char *name) {
    for (size_t i = 0; i < sizeof PROTOCOLS / sizeof PROTOCOLS[0]; i++)
        if (strcmp(PROTOCOLS[i].name, name) == 0) return &PROTOCOLS[i];
    fprintf(stderr, "unknown protocol %s (tinyrpc, thrift, dubbo)\n", name);
    exit(2);
}

#endif

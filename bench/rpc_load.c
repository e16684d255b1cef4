/*
 * rpc_load: a closed-loop load generator for RPC protocols (tinyrpc, Thrift, Dubbo).
 *
 * One thread drives many non-blocking connections through one epoll set.
 * Each connection keeps `depth` requests in flight (1 = no pipelining): when
 * a response arrives, the next request goes out on the same connection in
 * the same write as any others made from that read. Request ids encode the
 * connection, the in-flight slot and a generation counter, so responses may
 * come back in any order (a multiplexing proxy reorders them) and a response
 * with a wrong or stale id is counted as an error, never as a success.
 *
 * Latency is measured from the write that sent a request to the read that
 * brought its response, into a log-linear histogram (~1.5% precision), so
 * memory stays fixed however long the run.
 *
 * The protocol facts (framing, where the id lives, a request's shape,
 * what a success looks like) are in rpcproto.h.
 *
 * Usage: rpc_load -p port [-P tinyrpc|thrift|dubbo] [-H host] [-c conns] [-d depth]
 *                 [-t seconds] [-n requests] [-w warmup_seconds] [-b body_bytes]
 *                 [-s service] [-m method] [-j]
 * -t: measure for this long after the warm-up (default 3; with -n, a limit).
 * -n: stop after this many measured requests instead.
 * -j: print one JSON object instead of the human summary.
 * Exit status 1 if any request failed or a connection was lost.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "rpcproto.h"

#define READ_CHUNK 65536
#define SUB_BITS 6
#define SUB (1 << SUB_BITS)
#define HIST_SIZE (SUB * 64)
#define MAX_DEPTH 256

typedef struct {
    int fd, idx, connected, want_out, dead;
    buf_t in, out;
    uint64_t sent_at[MAX_DEPTH]; /* 0 = slot free */
    uint32_t gen[MAX_DEPTH];
} conn_t;

/* Run-wide state: options, the request template and the counters. */
static struct {
    const proto_t *proto;
    const char *host, *service, *method;
    int port, conns, depth, json;
    double seconds, warmup;
    uint64_t limit; /* -n; 0 = by time */
    size_t body;
    unsigned char *tmpl;
    size_t tmpl_len;
    int ep;
    int measuring, sending;
    uint64_t hist[HIST_SIZE];
    uint64_t ok, errors, total, lost_conns, measured_issued;
    uint64_t t_start, t_measure, t_end;
    double lat_sum_ns;
    uint64_t lat_max_ns;
} g;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* --- latency histogram: values < 64 ns exact, then 64 sub-buckets per power of two --- */
static int hist_index(uint64_t v) {
    if (v < SUB) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - SUB_BITS;
    return (shift + 1) * SUB + (int)((v >> shift) - SUB);
}

static double hist_value(int idx) {
    if (idx < SUB) return idx;
    int shift = idx / SUB - 1;
    uint64_t low = ((uint64_t)(idx % SUB) + SUB) << shift;
    return (double)low + (double)(1ull << shift) / 2.0;
}

static double percentile_us(double p) {
    uint64_t n = 0;
    for (int i = 0; i < HIST_SIZE; i++) n += g.hist[i];
    if (n == 0) return 0;
    uint64_t want = (uint64_t)ceil(p * (double)n), seen = 0;
    if (want == 0) want = 1;
    for (int i = 0; i < HIST_SIZE; i++) {
        seen += g.hist[i];
        if (seen >= want) return hist_value(i) / 1000.0;
    }
    return 0;
}

/* --- requests --- */
static void build_template(void) {
    buf_t t = {0};
    g.proto->build_request(&t, g.service, g.method, g.body);
    g.tmpl = t.data;
    g.tmpl_len = t.len;
}

/* Request ids: connection, then a generation counter, then the in-flight slot (low 8 bits). */
static int gen_bits(void) { return g.proto->id_bits == 64 ? 24 : 8; }
static int conn_shift(void) { return g.proto->id_bits == 64 ? 32 : 16; }

static uint64_t make_id(conn_t *c, int slot) {
    uint32_t gen = c->gen[slot] & ((1u << gen_bits()) - 1);
    return ((uint64_t)c->idx << conn_shift()) | ((uint64_t)gen << 8) | (uint64_t)slot;
}

static int may_issue(void) {
    if (!g.sending) return 0;
    if (g.limit && g.measuring && g.measured_issued >= g.limit) return 0;
    return 1;
}

static void queue_request(conn_t *c, int slot, uint64_t t) {
    buf_reserve(&c->out, g.tmpl_len);
    unsigned char *p = c->out.data + c->out.len;
    memcpy(p, g.tmpl, g.tmpl_len);
    c->gen[slot]++;
    g.proto->set_id(p, make_id(c, slot));
    c->out.len += g.tmpl_len;
    c->sent_at[slot] = t;
    if (g.measuring) g.measured_issued++;
}

static void set_events(conn_t *c, int want_out) {
    if (want_out == c->want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

static void kill_conn(conn_t *c, const char *why) {
    if (c->dead) return;
    if (g.sending) {
        fprintf(stderr, "rpc_load: connection %d lost: %s\n", c->idx, why);
        g.lost_conns++;
    }
    c->dead = 1;
    epoll_ctl(g.ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
}

static void flush_out(conn_t *c) {
    size_t off = 0;
    while (off < c->out.len) {
        ssize_t n = write(c->fd, c->out.data + off, c->out.len - off);
        if (n > 0) { off += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        kill_conn(c, strerror(errno));
        return;
    }
    memmove(c->out.data, c->out.data + off, c->out.len - off);
    c->out.len -= off;
    set_events(c, c->out.len > 0);
}

static void on_response(conn_t *c, const unsigned char *f, uint32_t total, uint64_t t) {
    uint64_t id = g.proto->get_id(f, total);
    int slot = (int)(id & 0xFF);
    uint32_t mask = (1u << gen_bits()) - 1, gen = (uint32_t)((id >> 8) & mask);
    if ((id >> conn_shift()) != (uint64_t)c->idx || slot >= g.depth || c->sent_at[slot] == 0 ||
        (c->gen[slot] & mask) != gen) {
        g.errors++;
        return; /* unknown id: nothing to re-issue */
    }
    uint64_t lat = t - c->sent_at[slot];
    c->sent_at[slot] = 0;
    g.total++;
    if (!g.proto->response_ok(f, total)) {
        g.errors++;
    } else if (g.measuring) {
        g.ok++;
        g.hist[hist_index(lat)]++;
        g.lat_sum_ns += (double)lat;
        if (lat > g.lat_max_ns) g.lat_max_ns = lat;
    }
    if (may_issue()) queue_request(c, slot, t);
}

static void on_readable(conn_t *c) {
    for (;;) {
        buf_reserve(&c->in, READ_CHUNK);
        size_t room = c->in.cap - c->in.len;
        ssize_t n = read(c->fd, c->in.data + c->in.len, room);
        if (n == 0) { kill_conn(c, "closed by peer"); return; }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            kill_conn(c, strerror(errno));
            return;
        }
        uint64_t t = now_ns();
        c->in.len += (size_t)n;
        size_t pos = 0;
        for (;;) {
            long size = g.proto->frame_size(c->in.data + pos, c->in.len - pos);
            if (size < 0) { kill_conn(c, "bad or oversized frame"); return; }
            if (size == 0 || c->in.len - pos < (size_t)size) break;
            on_response(c, c->in.data + pos, (uint32_t)size, t);
            pos += (size_t)size;
        }
        memmove(c->in.data, c->in.data + pos, c->in.len - pos);
        c->in.len -= pos;
        if ((size_t)n < room) break;
    }
    if (c->out.len) flush_out(c);
}

static void on_connected(conn_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        fprintf(stderr, "rpc_load: connect to %s:%d: %s\n", g.host, g.port, strerror(err));
        exit(1);
    }
    c->connected = 1;
    uint64_t t = now_ns();
    for (int s = 0; s < g.depth && may_issue(); s++) queue_request(c, s, t);
    flush_out(c);
}

static conn_t *open_conn(int idx, struct sockaddr_in *addr) {
    conn_t *c = calloc(1, sizeof *c);
    c->idx = idx;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)addr, sizeof *addr) < 0 && errno != EINPROGRESS) {
        fprintf(stderr, "rpc_load: connect to %s:%d: %s\n", g.host, g.port, strerror(errno));
        exit(1);
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(g.ep, EPOLL_CTL_ADD, c->fd, &ev);
    c->want_out = 1;
    return c;
}

static void report(void) {
    double secs = (double)(g.t_end - g.t_measure) / 1e9;
    double rps = secs > 0 ? (double)g.ok / secs : 0;
    double mean = g.ok ? g.lat_sum_ns / (double)g.ok / 1000.0 : 0;
    if (g.json) {
        printf("{\"protocol\": \"%s\", \"connections\": %d, \"depth\": %d, \"seconds\": %.3f, \"requests\": %llu, "
               "\"total_requests\": %llu, \"errors\": %llu, \"lost_connections\": %llu, \"rps\": %.1f, "
               "\"mean_us\": %.1f, \"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, "
               "\"p999_us\": %.1f, \"max_us\": %.1f}\n",
               g.proto->name, g.conns, g.depth, secs, (unsigned long long)g.ok, (unsigned long long)g.total,
               (unsigned long long)g.errors, (unsigned long long)g.lost_conns, rps, mean,
               percentile_us(0.50), percentile_us(0.90), percentile_us(0.99), percentile_us(0.999),
               (double)g.lat_max_ns / 1000.0);
    } else {
        printf("%s: %d connections, depth %d, %.2f s: %llu requests, %llu errors, %llu lost connections\n",
               g.proto->name, g.conns, g.depth, secs, (unsigned long long)g.ok, (unsigned long long)g.errors,
               (unsigned long long)g.lost_conns);
        printf("%.0f req/s   latency us: mean %.1f  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f\n",
               rps, mean, percentile_us(0.50), percentile_us(0.90), percentile_us(0.99),
               percentile_us(0.999), (double)g.lat_max_ns / 1000.0);
    }
}

static int in_flight(conn_t **cs) {
    for (int i = 0; i < g.conns; i++) {
        if (cs[i]->dead) continue;
        for (int s = 0; s < g.depth; s++)
            if (cs[i]->sent_at[s]) return 1;
    }
    return 0;
}

static void usage(const char *argv0) {
    fprintf(stderr, "usage: %s -p port [-P tinyrpc|thrift|dubbo] [-H host] [-c conns] [-d depth] "
                    "[-t seconds] [-n requests] [-w warmup_seconds] [-b body_bytes] [-s service] "
                    "[-m method] [-j]\n", argv0);
    exit(2);
}

int main(int argc, char **argv) {
    g.host = "127.0.0.1"; g.method = "ping";
    g.proto = find_proto("tinyrpc");
    g.conns = 1; g.depth = 1; g.seconds = 3; g.body = 16;
    int opt, have_t = 0;
    while ((opt = getopt(argc, argv, "P:H:p:c:d:t:n:w:b:s:m:j")) != -1) {
        switch (opt) {
        case 'P': g.proto = find_proto(optarg); break;
        case 'H': g.host = optarg; break;
        case 'p': g.port = atoi(optarg); break;
        case 'c': g.conns = atoi(optarg); break;
        case 'd': g.depth = atoi(optarg); break;
        case 't': g.seconds = atof(optarg); have_t = 1; break;
        case 'n': g.limit = strtoull(optarg, NULL, 10); break;
        case 'w': g.warmup = atof(optarg); break;
        case 'b': g.body = (size_t)atol(optarg); break;
        case 's': g.service = optarg; break;
        case 'm': g.method = optarg; break;
        case 'j': g.json = 1; break;
        default: usage(argv[0]);
        }
    }
    if (g.port <= 0 || g.conns <= 0 || g.depth <= 0 || g.depth > MAX_DEPTH || g.seconds <= 0) usage(argv[0]);
    if (g.proto->id_bits == 32 && g.conns > 65535) usage(argv[0]);
    if (!g.service) g.service = g.proto->default_service;
    if (g.limit && !have_t) g.seconds = 600;
    signal(SIGPIPE, SIG_IGN);
    build_template();

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g.port)};
    if (inet_pton(AF_INET, g.host, &addr.sin_addr) != 1) { fprintf(stderr, "bad host %s\n", g.host); return 2; }
    g.ep = epoll_create1(0);
    conn_t **cs = calloc((size_t)g.conns, sizeof *cs);
    g.sending = 1;
    g.t_start = now_ns();
    g.measuring = g.warmup <= 0;
    g.t_measure = g.t_start;
    for (int i = 0; i < g.conns; i++) cs[i] = open_conn(i, &addr);

    uint64_t warm_end = g.t_start + (uint64_t)(g.warmup * 1e9);
    uint64_t deadline = warm_end + (uint64_t)(g.seconds * 1e9);
    uint64_t drain_deadline = 0;
    struct epoll_event events[512];
    for (;;) {
        int n = epoll_wait(g.ep, events, 512, 50);
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (c->dead) continue;
            if (!c->connected) {
                if (events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c);
                continue;
            }
            if (events[i].events & EPOLLIN) on_readable(c);
            else if (events[i].events & (EPOLLERR | EPOLLHUP)) kill_conn(c, "socket error");
            if (!c->dead && (events[i].events & EPOLLOUT)) flush_out(c);
        }
        uint64_t t = now_ns();
        if (!g.measuring && t >= warm_end) {
            g.measuring = 1;
            g.t_measure = t;
            g.errors = 0;
        }
        int done = g.measuring && ((g.limit && g.ok + g.errors >= g.limit) || t >= deadline);
        if (g.sending && done) {
            g.sending = 0;
            g.t_end = t;
            drain_deadline = t + 2000000000ull;
        }
        /* After the measurement, let requests in flight finish (not counted) so the
         * peer sees clean closes, bounded by the drain deadline. */
        if (!g.sending && (!in_flight(cs) || t >= drain_deadline)) break;
        if (g.lost_conns == (uint64_t)g.conns) {
            if (g.sending) g.t_end = t;
            break;
        }
    }
    for (int i = 0; i < g.conns; i++) if (!cs[i]->dead) kill_conn(cs[i], "done");
    report();
    return (g.errors || g.lost_conns || g.ok == 0) ? 1 : 0;
}

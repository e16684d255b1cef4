/*
 * tinyrpc_server: a deliberately cheap tinyrpc upstream for benchmarks.
 *
 * One thread, one epoll set, non-blocking sockets. Every request frame is
 * answered with a response frame that carries the same request id, echoes
 * service and method, status 0, no headers and a small body; oneway frames
 * get no answer and heartbeats get a heartbeat reply. All the responses made
 * from one read() go out in one write(), so pipelined and multiplexed
 * traffic costs one syscall pair per batch. The point is that the server is
 * never the bottleneck of a proxy benchmark.
 *
 * Wire format: see codecs/tinyrpc/codec.py (u32 length, u8 version, u8 type,
 * u8 status, u8 reserved, u64 request id, str service, str method, u16 header
 * count + headers, body; big-endian, str = u16 length + bytes).
 *
 * Usage: tinyrpc_server [-H host] [-p port] [-b body_bytes]
 * Prints "READY <port>" on stdout once it accepts connections (port 0 picks
 * a free one), then runs until SIGTERM/SIGINT.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FRAME (4u << 20)
#define READ_CHUNK 65536
#define MAX_EVENTS 256

enum { T_REQUEST = 1, T_ONEWAY = 2, T_RESPONSE = 3, T_HEARTBEAT = 5, T_HEARTBEAT_REPLY = 6 };

typedef struct {
    unsigned char *data;
    size_t len, cap;
} buf_t;

typedef struct {
    int fd;
    buf_t in;   /* bytes read, not yet a whole frame */
    buf_t out;  /* bytes to write that the socket did not take yet */
    int want_out;
} conn_t;

static volatile sig_atomic_t stop_flag;
static size_t body_len = 8;
static unsigned long long served;

static void on_signal(int sig) { (void)sig; stop_flag = 1; }

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
static void wr32(unsigned char *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static void wr16(unsigned char *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void close_conn(int ep, conn_t *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in.data);
    free(c->out.data);
    free(c);
}

/* Append the reply to one frame; return -1 if the frame is malformed. */
static int answer(const unsigned char *f, uint32_t total, buf_t *out) {
    if (total < 16 + 6 || f[4] != 1) return -1;
    int type = f[5];
    if (type == T_ONEWAY) return 0;
    if (type != T_REQUEST && type != T_HEARTBEAT) return -1;
    uint32_t pos = 16;
    uint16_t slen = rd16(f + pos);
    if (pos + 2 + slen + 2 > total) return -1;
    uint32_t svc = pos; pos += 2 + slen;
    uint16_t mlen = rd16(f + pos);
    if (pos + 2 + mlen > total) return -1;
    uint32_t names_end = pos + 2 + mlen;
    size_t blen = type == T_REQUEST ? body_len : 0;
    size_t reply = (size_t)(names_end - svc) + 16 + 2 + blen;
    buf_reserve(out, reply);
    unsigned char *r = out->data + out->len;
    wr32(r, (uint32_t)(reply - 4));
    r[4] = 1;
    r[5] = type == T_REQUEST ? T_RESPONSE : T_HEARTBEAT_REPLY;
    r[6] = 0;
    r[7] = 0;
    memcpy(r + 8, f + 8, 8);                       /* request id */
    memcpy(r + 16, f + svc, names_end - svc);      /* service + method */
    unsigned char *p = r + 16 + (names_end - svc);
    wr16(p, 0);                                    /* no headers */
    memset(p + 2, 'x', blen);
    out->len += reply;
    served++;
    return 0;
}

static int flush_out(int ep, conn_t *c) {
    size_t off = 0;
    while (off < c->out.len) {
        ssize_t n = write(c->fd, c->out.data + off, c->out.len - off);
        if (n > 0) { off += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        return -1;
    }
    memmove(c->out.data, c->out.data + off, c->out.len - off);
    c->out.len -= off;
    int want = c->out.len > 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
    return 0;
}

/* Read everything available, answer every whole frame, write the answers once. */
static int on_readable(int ep, conn_t *c) {
    for (;;) {
        buf_reserve(&c->in, READ_CHUNK);
        size_t room = c->in.cap - c->in.len;
        ssize_t n = read(c->fd, c->in.data + c->in.len, room);
        if (n == 0) return -1;
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            return -1;
        }
        c->in.len += (size_t)n;
        size_t pos = 0;
        while (c->in.len - pos >= 4) {
            uint32_t len = rd32(c->in.data + pos);
            if (len > MAX_FRAME) return -1;
            if (c->in.len - pos < (size_t)len + 4) break;
            if (answer(c->in.data + pos, len + 4, &c->out) < 0) return -1;
            pos += len + 4;
        }
        memmove(c->in.data, c->in.data + pos, c->in.len - pos);
        c->in.len -= pos;
        if ((size_t)n < room) break;
    }
    return flush_out(ep, c);
}

static int listen_on(const char *host, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) { fprintf(stderr, "bad host %s\n", host); exit(2); }
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); exit(1); }
    if (listen(fd, 1024) < 0) { perror("listen"); exit(1); }
    set_nonblock(fd);
    return fd;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, opt;
    while ((opt = getopt(argc, argv, "H:p:b:")) != -1) {
        switch (opt) {
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'b': body_len = (size_t)atol(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-H host] [-p port] [-b body_bytes]\n", argv[0]);
            return 2;
        }
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int lfd = listen_on(host, port);
    struct sockaddr_in bound;
    socklen_t blen = sizeof bound;
    getsockname(lfd, (struct sockaddr *)&bound, &blen);
    int ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    printf("READY %d\n", ntohs(bound.sin_port));
    fflush(stdout);

    struct epoll_event events[MAX_EVENTS];
    while (!stop_flag) {
        int n = epoll_wait(ep, events, MAX_EVENTS, 200);
        for (int i = 0; i < n; i++) {
            conn_t *c = events[i].data.ptr;
            if (c == NULL) {
                int fd;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            int bad = 0;
            if (events[i].events & (EPOLLERR | EPOLLHUP)) bad = 1;
            if (!bad && (events[i].events & EPOLLOUT)) bad = flush_out(ep, c) < 0;
            if (!bad && (events[i].events & EPOLLIN)) bad = on_readable(ep, c) < 0;
            if (bad) close_conn(ep, c);
        }
    }
    fprintf(stderr, "tinyrpc_server: served %llu requests\n", served);
    return 0;
}

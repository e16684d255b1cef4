/*
 * rpc_server: a deliberately cheap RPC upstream for benchmarks (tinyrpc, Thrift, Dubbo).
 *
 * One thread, one epoll set, non-blocking sockets. Every request frame is
 * answered with a success response carrying the same request id and a small
 * body (the protocol facts are in rpcproto.h); oneway frames get no answer.
 * All the responses made from one read() go out in one write(), so
 * pipelined and multiplexed traffic costs one syscall pair per batch. The
 * point is that the server is never the bottleneck of a proxy benchmark.
 *
 * Usage: rpc_server [-P tinyrpc|thrift|dubbo] [-H host] [-p port] [-b body_bytes]
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

#include "rpcproto.h"

#define READ_CHUNK 65536
#define MAX_EVENTS 256

typedef struct {
    int fd;
    buf_t in;   /* bytes read, not yet a whole frame */
    buf_t out;  /* bytes to write that the socket did not take yet */
    int want_out;
} conn_t;

static volatile sig_atomic_t stop_flag;
static size_t body_len = 8;
static unsigned long long served;
static const proto_t *proto;

static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static void set_nonblock(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

static void close_conn(int ep, conn_t *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in.data);
    free(c->out.data);
    free(c);
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
        for (;;) {
            long size = proto->frame_size(c->in.data + pos, c->in.len - pos);
            if (size < 0) return -1;
            if (size == 0 || c->in.len - pos < (size_t)size) break;
            if (proto->answer(c->in.data + pos, (size_t)size, &c->out, body_len) < 0) return -1;
            served++;
            pos += (size_t)size;
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
    proto = find_proto("tinyrpc");
    while ((opt = getopt(argc, argv, "P:H:p:b:")) != -1) {
        switch (opt) {
        case 'P': proto = find_proto(optarg); break;
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'b': body_len = (size_t)atol(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-P tinyrpc|thrift|dubbo] [-H host] [-p port] [-b body_bytes]\n", argv[0]);
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
    fprintf(stderr, "rpc_server (%s): served %llu requests\n", proto->name, served);
    return 0;
}

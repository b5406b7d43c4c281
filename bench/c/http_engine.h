/*
 * http_engine.h: the HTTP/1.1 server loop every C contender of the benchmark
 * serves with (bench/README.md), so the C rows differ only in where their
 * connections come from: an rcluster listener (rcluster_server.c) or a
 * listening socket shared after fork() (prefork.c).
 *
 * One poll(2) loop serves many keep-alive, pipelined connections; every
 * response is `worker <id> pid <pid>\n` (the example contract,
 * examples/README.md). Asked to drain, it answers every request already
 * received with `Connection: close`, closes idle keep-alive connections after
 * a grace, and returns.
 *
 * Also here, since both contenders take the same command line: the options.
 */
#ifndef BENCH_HTTP_ENGINE_H
#define BENCH_HTTP_ENGINE_H

#include <stddef.h>
#include <stdint.h>

/* What the source's control() says. */
#define HTTP_KEEP_SERVING 0
#define HTTP_DRAIN 1 /* asked to leave: finish what is held */
#define HTTP_GONE 2  /* the primary is gone: finish quickly */

/* Where connections come from, and when to stop. */
struct http_source {
    void *ctx;
    int accept_fd;  /* readable when take() may have connections */
    int control_fd; /* readable when control() has news; -1: never */
    /* Takes up to `cap` connected sockets into `fds` (the engine owns them):
     * how many, 0 if none now, -1 when no more will come. */
    int (*take)(void *ctx, int *fds, size_t cap);
    /* Reads what arrived on control_fd: HTTP_KEEP_SERVING, _DRAIN or _GONE. */
    int (*control)(void *ctx);
    /* A connection was closed (NULL: nobody to tell). */
    void (*closed)(void *ctx);
};

/* Serves until the source gives no more connections and every one is done
 * (or the drain deadline passed). Returns 0, 1 if poll failed. */
int http_serve(const struct http_source *source, uint32_t worker_id);

/* The command line both contenders take (the C example's). */
struct bench_options {
    unsigned workers;
    unsigned port;
    const char *host;
    const char *policy; /* rr, shared, reuseport or least */
};

/* Parses it; on a bad argument prints one line and exits 2. */
struct bench_options bench_parse_args(int argc, char **argv);

/* Small helpers both the engine and the rcluster contender's primary use. */
int64_t bench_now_ms(void);               /* CLOCK_MONOTONIC, in ms */
int bench_ms_until(int64_t deadline);     /* ms left until `deadline` (0 if past), for poll(2) */
void *bench_xrealloc(void *p, size_t size); /* realloc, or exit(1) with a message */

#endif

/*
 * bench_server.c: the C contenders of the benchmark, all serving with the
 * worker code of examples/c/hello_server.c, so every C row runs the same
 * handler (same poll loop, same parser, same response bytes).
 *
 * Built two ways (see bench/MAKEFILE_SNIPPET.mk):
 *
 *   -DBENCH_RCLUSTER  bench/tmp/bench_rcluster: the example program itself,
 *                     linked against librcluster.so, with one addition: an
 *                     optional busy loop per request (below), off unless
 *                     asked for. Same command line as the example
 *                     (--policy rr|least|shared|reuseport).
 *
 *   -DBENCH_PREFORK   bench/tmp/prefork: a plain prefork server, no
 *                     rcluster at all. The parent binds and listens, forks N
 *                     children, and each child runs the example's worker
 *                     loop, whose few rcluster calls are replaced here by
 *                     accept4(2) on the one shared, non-blocking listening
 *                     socket (the nginx/gunicorn model: the kernel picks
 *                     which sleeping child wakes up). SIGTERM stops it.
 *
 * The uneven test's knob (both builds): each request takes BENCH_WORK_US
 * microseconds more, and BENCH_SLOW_WORK_US on the worker whose id is
 * BENCH_SLOW_WORKER. By default the worker's loop sleeps that long
 * (BENCH_WORK_KIND=sleep: like a handler waiting on synchronous I/O; the
 * worker is slower whatever else the machine runs, and leaves the CPU to the
 * others); BENCH_WORK_KIND=spin burns that much CPU instead (a busy loop on
 * the thread's CPU clock), which on a 2-core machine also takes the CPU from
 * the client and the primary. The delay comes when the worker reads a
 * request's bytes (the example's recv() call, wrapped below), so it still
 * accepts, and acknowledges, new connections at once between requests, like
 * an event-loop app whose handler is slow; one small request arrives in one
 * read.
 */

#define _GNU_SOURCE /* accept4, SOCK_CLOEXEC */

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h> /* declared before `recv` is renamed below */
#include <sys/types.h>
#include <time.h>

/* ------------------------------------------------------------------------ */
/* The per-connection work knob                                             */

static int64_t bench_work_ns = -1; /* -1: not read from the environment yet */
static int bench_work_spin;        /* 1: burn CPU, 0: sleep */

static uint32_t bench_worker_id(void); /* each build's own */

static int64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void bench_init_work(void)
{
    const char *work = getenv("BENCH_WORK_US");
    const char *slow = getenv("BENCH_SLOW_WORK_US");
    const char *slow_id = getenv("BENCH_SLOW_WORKER");
    int64_t us = work ? strtoll(work, NULL, 10) : 0;
    if (slow && slow_id && strtoul(slow_id, NULL, 10) == bench_worker_id())
        us = strtoll(slow, NULL, 10);
    bench_work_ns = us > 0 ? us * 1000 : 0;
    const char *kind = getenv("BENCH_WORK_KIND");
    bench_work_spin = kind != NULL && strcmp(kind, "spin") == 0;
    if (!bench_work_spin)
        prctl(PR_SET_TIMERSLACK, 1000UL); /* sleeps end within 1 us of when asked, not 50 */
}

/* recv(2), then the request's work when bytes came. */
static ssize_t bench_recv(int fd, void *buf, size_t len, int flags)
{
    ssize_t n = recv(fd, buf, len, flags);
    if (n > 0 && bench_work_ns != 0) {
        if (bench_work_ns < 0)
            bench_init_work();
        if (bench_work_spin) {
            int64_t until = thread_cpu_ns() + bench_work_ns;
            while (thread_cpu_ns() < until) {
            }
        } else {
            struct timespec ts = {.tv_sec = bench_work_ns / 1000000000, .tv_nsec = bench_work_ns % 1000000000};
            while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR) {
            }
        }
    }
    return n;
}
#define recv bench_recv

#ifdef BENCH_RCLUSTER
/* ------------------------------------------------------------------------ */
/* rcluster build: the example as it is (with the work knob in its recv)   */

#include "../../examples/c/hello_server.c"

static uint32_t bench_worker_id(void)
{
    uint32_t id = 0;
    rcluster_worker_id(&id);
    return id;
}

#elif defined(BENCH_PREFORK)
/* ------------------------------------------------------------------------ */
/* prefork build: the example's worker loop over a shared listening socket  */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/*
 * The rcluster calls the example makes, renamed to the functions below. The
 * header still declares them (under the new names), so the signatures are
 * checked against the real API.
 */
#define rcluster_event_release pf_event_release
#define rcluster_is_worker pf_is_worker
#define rcluster_last_errno pf_last_errno
#define rcluster_last_error pf_last_error
#define rcluster_strerror pf_strerror
#define rcluster_listener_accept pf_listener_accept
#define rcluster_listener_accept_many pf_listener_accept_many
#define rcluster_listener_close pf_listener_close
#define rcluster_listener_fd pf_listener_fd
#define rcluster_worker_close pf_worker_close
#define rcluster_worker_done pf_worker_done
#define rcluster_worker_fd pf_worker_fd
#define rcluster_worker_id pf_worker_id
#define rcluster_worker_listen pf_worker_listen
#define rcluster_worker_next_event pf_worker_next_event
#define rcluster_worker_open pf_worker_open
#define rcluster_primary_fork pf_primary_fork
#define rcluster_primary_free pf_primary_free
#define rcluster_primary_listen pf_primary_listen
#define rcluster_primary_new2 pf_primary_new
#define rcluster_primary_options_init2 pf_primary_options_init
#define rcluster_primary_shutdown pf_primary_shutdown
#define rcluster_primary_wait_event pf_primary_wait_event
#define main example_main

#include "../../examples/c/hello_server.c"

#undef main

static uint32_t pf_id;        /* this child's number, 1..N */
static uint32_t bench_worker_id(void) { return pf_id; }
static int pf_listen_fd = -1; /* the shared listening socket (non-blocking) */
static int pf_quiet_fd = -1;  /* stands in for the worker's channel: never readable */

/* Worker side: what the example's run_worker needs. */
int pf_is_worker(void) { return pf_id != 0; }
int pf_last_errno(void) { return errno; }
const char *pf_last_error(void) { return strerror(errno); }
const char *pf_strerror(int code) { return code == RCLUSTER_E_AGAIN ? "again" : "error"; }
int pf_worker_id(uint32_t *id) { *id = pf_id; return RCLUSTER_OK; }
int pf_worker_open(rcluster_worker **out) { *out = (rcluster_worker *)&pf_id; return RCLUSTER_OK; }
int pf_worker_fd(rcluster_worker *w, int *fd) { (void)w; *fd = pf_quiet_fd; return RCLUSTER_OK; }
int pf_worker_next_event(rcluster_worker *w, rcluster_event *ev) { (void)w; (void)ev; return RCLUSTER_E_AGAIN; }
int pf_worker_done(rcluster_worker *w, uint32_t n) { (void)w; (void)n; return RCLUSTER_OK; }
int pf_worker_close(rcluster_worker *w) { (void)w; return RCLUSTER_OK; }
int pf_event_release(rcluster_event *ev) { (void)ev; return RCLUSTER_OK; }
int pf_listener_fd(rcluster_listener *l, int *fd) { (void)l; *fd = pf_listen_fd; return RCLUSTER_OK; }
int pf_listener_close(rcluster_listener *l) { (void)l; return RCLUSTER_OK; }

int pf_worker_listen(rcluster_worker *w, const char *host, uint16_t port, int timeout_ms, rcluster_listener **out)
{
    (void)w; (void)host; (void)port; (void)timeout_ms;
    *out = (rcluster_listener *)&pf_listen_fd;
    return RCLUSTER_OK;
}

/* accept4 on the shared socket; the example polls it and calls this with timeout 0. */
int pf_listener_accept(rcluster_listener *l, int timeout_ms, int *fd)
{
    (void)l; (void)timeout_ms;
    for (;;) {
        int c = accept4(pf_listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0) {
            *fd = c;
            return RCLUSTER_OK;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        return errno == EAGAIN || errno == EWOULDBLOCK ? RCLUSTER_E_AGAIN : RCLUSTER_E_OS;
    }
}

/* Up to `capacity` accept4s: the example takes batches the same way from both. */
int pf_listener_accept_many(rcluster_listener *l, int timeout_ms, int *fds, size_t capacity, size_t *count)
{
    *count = 0;
    while (*count < capacity) {
        int rc = pf_listener_accept(l, timeout_ms, &fds[*count]);
        if (rc != RCLUSTER_OK)
            return *count > 0 ? RCLUSTER_OK : rc;
        (*count)++;
    }
    return RCLUSTER_OK;
}

/* Primary side: never used (main below is the primary), refused if it were. */
int pf_primary_options_init(rcluster_primary_options *o, size_t n) { (void)o; (void)n; return RCLUSTER_E_STATE; }
int pf_primary_new(const rcluster_primary_options *o, rcluster_primary **p) { (void)o; (void)p; return RCLUSTER_E_STATE; }
int pf_primary_listen(rcluster_primary *p, const char *h, uint16_t port, uint16_t *b) { (void)p; (void)h; (void)port; (void)b; return RCLUSTER_E_STATE; }
int pf_primary_fork(rcluster_primary *p, const char *const *e, uint32_t *id, int32_t *pid) { (void)p; (void)e; (void)id; (void)pid; return RCLUSTER_E_STATE; }
int pf_primary_wait_event(rcluster_primary *p, rcluster_event *ev, int t) { (void)p; (void)ev; (void)t; return RCLUSTER_E_STATE; }
int pf_primary_shutdown(rcluster_primary *p, uint32_t g) { (void)p; (void)g; return RCLUSTER_E_STATE; }
int pf_primary_free(rcluster_primary *p) { (void)p; return RCLUSTER_E_STATE; }

int main(int argc, char **argv)
{
    struct options opts = parse_args(argc, argv); /* the example's parser: same flags */

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opts.port)};
    if (inet_pton(AF_INET, opts.host, &addr.sin_addr) != 1) {
        fprintf(stderr, "prefork: --host must be an IPv4 address\n");
        return 2;
    }
    pf_listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(pf_listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (pf_listen_fd < 0 || bind(pf_listen_fd, (struct sockaddr *)&addr, sizeof addr) < 0
        || listen(pf_listen_fd, 511) < 0) { /* 511: rcluster's (and Node's) default backlog */
        perror("prefork: listen");
        return 1;
    }
    socklen_t len = sizeof addr;
    getsockname(pf_listen_fd, (struct sockaddr *)&addr, &len);
    int quiet[2];
    if (pipe(quiet) < 0) {
        perror("prefork: pipe");
        return 1;
    }
    pf_quiet_fd = quiet[0];

    /* The parent waits for SIGTERM/SIGINT with sigwait; children get the default actions back. */
    sigset_t stop, old;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigprocmask(SIG_BLOCK, &stop, &old);

    pid_t *children = calloc(opts.workers, sizeof *children);
    for (unsigned i = 0; i < opts.workers; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("prefork: fork");
            break;
        }
        if (pid == 0) {
            sigprocmask(SIG_SETMASK, &old, NULL);
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            pf_id = i + 1;
            opts.policy_name = "prefork";
            exit(run_worker(&opts));
        }
        children[i] = pid;
    }
    printf("ready http://%s:%u workers=%u policy=prefork\n", opts.host, (unsigned)ntohs(addr.sin_port), opts.workers);
    fflush(stdout);

    int sig = 0;
    sigwait(&stop, &sig);
    for (unsigned i = 0; i < opts.workers; i++)
        if (children[i] > 0)
            kill(children[i], SIGTERM);
    for (unsigned i = 0; i < opts.workers; i++)
        if (children[i] > 0)
            waitpid(children[i], NULL, 0);
    free(children);
    return 0;
}

#else
#error "build with -DBENCH_RCLUSTER or -DBENCH_PREFORK"
#endif

/*
 * rcluster_server.c: the benchmark's rcluster contender (bench/tmp/bench_rcluster):
 * a primary that binds HOST:PORT, starts N workers of this program and
 * prints the example's ready line; each worker serves with the HTTP engine
 * (http_engine.c) the prefork contender serves with too, its connections
 * taken from an rcluster listener in batches (rcluster_listener_accept_many).
 * Same command line and ready line as the C example (examples/README.md);
 * SIGTERM/SIGINT stop it gracefully, SIGHUP reloads (handle_signals).
 */

#define _POSIX_C_SOURCE 200809L

#include "http_engine.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <rcluster.h>

/* The primary tells its workers the port it bound (the real one when 0 was asked). */
#define PORT_ENV "HELLO_SERVER_PORT"
/* How long workers have to start listening before the primary gives up. */
#define STARTUP_TIMEOUT_MS 30000

static void report(const char *what, int rc)
{
    fprintf(stderr, "bench_rcluster: %s failed: %s: %s\n", what, rcluster_strerror(rc), rcluster_last_error());
}

static int policy_number(const char *name)
{
    if (strcmp(name, "shared") == 0)
        return RCLUSTER_POLICY_SHARED;
    if (strcmp(name, "reuseport") == 0)
        return RCLUSTER_POLICY_REUSEPORT;
    if (strcmp(name, "least") == 0)
        return RCLUSTER_POLICY_LEAST;
    if (strcmp(name, "hybrid") == 0)
        return RCLUSTER_POLICY_HYBRID;
    return RCLUSTER_POLICY_RR;
}

/* ------------------------------------------------------------------------ */
/* Primary                                                                  */

struct primary_state {
    const struct bench_options *opts;
    rcluster_primary *primary;
    uint16_t port;
    /* Ids of the workers that are listening and have not exited. */
    uint32_t *listening;
    size_t nlistening, cap;
    bool ready;
    bool failing; /* shutting down because something went wrong: exit 1 */
};

static void fail(struct primary_state *s, const char *why)
{
    if (!s->failing)
        fprintf(stderr, "bench_rcluster: %s; shutting down\n", why);
    s->failing = true;
    rcluster_primary_shutdown(s->primary, 2000);
}

static void print_ready(const struct primary_state *s)
{
    const char *host = s->opts->host[0] ? s->opts->host : "0.0.0.0";
    bool bracket = strchr(host, ':') != NULL && host[0] != '[';
    printf("ready http://%s%s%s:%u workers=%u policy=%s\n", bracket ? "[" : "", host,
           bracket ? "]" : "", (unsigned)s->port, s->opts->workers, s->opts->policy);
    fflush(stdout);
}

static void on_listening(struct primary_state *s, const rcluster_event *ev)
{
    for (size_t i = 0; i < s->nlistening; i++)
        if (s->listening[i] == ev->worker_id)
            return;
    if (s->nlistening == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 16;
        s->listening = bench_xrealloc(s->listening, s->cap * sizeof *s->listening);
    }
    s->listening[s->nlistening++] = ev->worker_id;
    if (!s->ready && !s->failing && s->nlistening >= s->opts->workers) {
        s->ready = true;
        print_ready(s);
    }
}

static void on_exit_event(struct primary_state *s, const rcluster_event *ev)
{
    if (ev->signal != 0)
        fprintf(stderr, "bench_rcluster: worker %u (pid %d) was killed by signal %d\n", (unsigned)ev->worker_id,
                (int)ev->pid, ev->signal);
    else
        fprintf(stderr, "bench_rcluster: worker %u (pid %d) exited with code %d\n", (unsigned)ev->worker_id,
                (int)ev->pid, ev->exit_code);
    for (size_t i = 0; i < s->nlistening; i++) {
        if (s->listening[i] == ev->worker_id) {
            s->listening[i] = s->listening[--s->nlistening];
            break;
        }
    }
    /* Before ready, only a worker leaving cleanly on request is expected
     * (a SIGTERM during startup); anything else means workers cannot start. */
    bool asked = (ev->flags & RCLUSTER_EXIT_AFTER_DISCONNECT) != 0;
    if (!s->ready && !(asked && ev->exit_code == 0))
        fail(s, "a worker exited before every worker was listening");
}

static void on_event(struct primary_state *s, const rcluster_event *ev)
{
    const char *data = ev->data ? (const char *)ev->data : "";
    switch (ev->kind) {
    case RCLUSTER_EVENT_FORK:
        if (s->ready) /* a restart, a reload or a scale */
            fprintf(stderr, "bench_rcluster: worker %u (pid %d) started\n", (unsigned)ev->worker_id, (int)ev->pid);
        break;
    case RCLUSTER_EVENT_LISTENING:
        on_listening(s, ev);
        break;
    case RCLUSTER_EVENT_EXIT:
        on_exit_event(s, ev);
        break;
    case RCLUSTER_EVENT_WORKER_ERROR:
        fprintf(stderr, "bench_rcluster: worker %u broke the protocol: %.*s\n", (unsigned)ev->worker_id, (int)ev->len, data);
        break;
    case RCLUSTER_EVENT_CRASH_LOOP:
        fprintf(stderr, "bench_rcluster: slot %d keeps crashing; it is not restarted until a reload (SIGHUP)\n",
                (int)ev->slot);
        break;
    case RCLUSTER_EVENT_UNRESPONSIVE:
        fprintf(stderr, "bench_rcluster: worker %u (pid %d) stopped answering; it is replaced\n", (unsigned)ev->worker_id,
                (int)ev->pid);
        break;
    case RCLUSTER_EVENT_RELOAD_DONE:
        fprintf(stderr, "bench_rcluster: reload done: every worker is of generation %u\n", (unsigned)ev->generation);
        break;
    case RCLUSTER_EVENT_RELOAD_FAILED:
        fprintf(stderr, "bench_rcluster: reload to generation %u stopped: %.*s\n", (unsigned)ev->generation, (int)ev->len,
                data);
        break;
    default:
        break; /* ONLINE, DISCONNECT, MESSAGE, SHUTDOWN: nothing to say */
    }
}

static int run_primary(const struct bench_options *opts)
{
    struct primary_state s = {.opts = opts};

    rcluster_primary_options po;
    rcluster_primary_options_init2(&po, sizeof po);
    po.policy = policy_number(opts->policy);
    po.handle_signals = 1; /* SIGTERM/SIGINT: shutdown, SIGHUP: reload, SIGTTIN/SIGTTOU: scale */
    po.argv = NULL;        /* workers run this program with these arguments */
    int rc = rcluster_primary_new2(&po, &s.primary);
    if (rc != RCLUSTER_OK) {
        report("rcluster_primary_new2", rc);
        return 1;
    }

    /* Bind first: with --port 0 the workers must ask for the port the OS picked. */
    rc = rcluster_primary_listen(s.primary, opts->host, (uint16_t)opts->port, &s.port);
    if (rc != RCLUSTER_OK) {
        fprintf(stderr, "bench_rcluster: cannot listen on %s:%u: %s\n", opts->host, opts->port, rcluster_last_error());
        rcluster_primary_free(s.primary);
        return 1;
    }
    char env_port[32];
    snprintf(env_port, sizeof env_port, PORT_ENV "=%u", (unsigned)s.port);
    const char *env[] = {env_port, NULL};

    for (unsigned i = 0; i < opts->workers; i++) {
        rc = rcluster_primary_fork(s.primary, env, NULL, NULL);
        if (rc == RCLUSTER_E_STATE)
            break; /* a SIGTERM already started the shutdown */
        if (rc != RCLUSTER_OK) {
            report("rcluster_primary_fork", rc);
            fail(&s, "cannot start the workers");
            break;
        }
    }

    int64_t startup_deadline = bench_now_ms() + STARTUP_TIMEOUT_MS;
    for (;;) {
        rcluster_event ev;
        memset(&ev, 0, sizeof ev);
        int timeout = s.ready || s.failing ? -1 : bench_ms_until(startup_deadline);
        rc = rcluster_primary_wait_event(s.primary, &ev, timeout);
        if (rc == RCLUSTER_E_TIMEOUT || rc == RCLUSTER_E_AGAIN) {
            if (!s.ready && !s.failing && bench_now_ms() >= startup_deadline)
                fail(&s, "the workers did not start listening in time");
            continue;
        }
        if (rc != RCLUSTER_OK) {
            report("rcluster_primary_wait_event", rc);
            s.failing = true;
            break;
        }
        int kind = ev.kind;
        on_event(&s, &ev);
        rcluster_event_release(&ev);
        if (kind == RCLUSTER_EVENT_SHUTDOWN)
            break;
    }
    if (!s.ready && !s.failing)
        fprintf(stderr, "bench_rcluster: stopped before every worker was listening\n");
    rcluster_primary_free(s.primary);
    free(s.listening);
    return s.failing ? 1 : 0;
}

/* ------------------------------------------------------------------------ */
/* Worker: the engine's source is this worker's listener and channel        */

struct rcluster_source {
    rcluster_worker *worker;
    rcluster_listener *listener;
};

static int take(void *ctx, int *fds, size_t cap)
{
    struct rcluster_source *s = ctx;
    size_t count = 0;
    int rc = rcluster_listener_accept_many(s->listener, 0, fds, cap, &count);
    if (rc == RCLUSTER_OK)
        return (int)count;
    if (rc == RCLUSTER_E_AGAIN)
        return 0;
    /* LEAVING: asked to leave and what was queued is taken; CLOSED: the primary is gone. */
    if (rc != RCLUSTER_E_LEAVING && rc != RCLUSTER_E_CLOSED)
        report("rcluster_listener_accept_many", rc);
    return -1;
}

static int control(void *ctx)
{
    struct rcluster_source *s = ctx;
    int news = HTTP_KEEP_SERVING, rc;
    rcluster_event ev;
    memset(&ev, 0, sizeof ev);
    while ((rc = rcluster_worker_next_event(s->worker, &ev)) == RCLUSTER_OK) {
        if (ev.kind == RCLUSTER_EVENT_DISCONNECT && news == HTTP_KEEP_SERVING)
            news = HTTP_DRAIN;
        else if (ev.kind == RCLUSTER_EVENT_PRIMARY_GONE)
            news = HTTP_GONE;
        rcluster_event_release(&ev);
    }
    if (rc != RCLUSTER_E_AGAIN) {
        if (rc != RCLUSTER_E_CLOSED) /* CLOSED after PRIMARY_GONE; anything else is as bad */
            report("rcluster_worker_next_event", rc);
        news = HTTP_GONE;
    }
    return news;
}

static void closed(void *ctx)
{
    struct rcluster_source *s = ctx;
    rcluster_worker_done(s->worker, 1); /* for the load-aware policy */
}

static int run_worker(const struct bench_options *opts)
{
    uint32_t id = 0;
    struct rcluster_source s = {0};
    int rc = rcluster_worker_id(&id);
    if (rc == RCLUSTER_OK)
        rc = rcluster_worker_open(&s.worker);
    if (rc != RCLUSTER_OK) {
        report("rcluster_worker_open", rc);
        return 1;
    }
    const char *env_port = getenv(PORT_ENV);
    unsigned port = env_port != NULL ? (unsigned)strtoul(env_port, NULL, 10) : opts->port;
    rc = rcluster_worker_listen(s.worker, opts->host, (uint16_t)port, 10000, &s.listener);
    if (rc != RCLUSTER_OK) {
        bool leaving = rc == RCLUSTER_E_LEAVING || rc == RCLUSTER_E_CLOSED;
        if (!leaving)
            report("rcluster_worker_listen", rc);
        rcluster_worker_close(s.worker);
        return leaving ? 0 : 1;
    }
    struct http_source source = {.ctx = &s, .take = take, .control = control, .closed = closed};
    rcluster_worker_fd(s.worker, &source.control_fd);
    rcluster_listener_fd(s.listener, &source.accept_fd);
    int status = http_serve(&source, id);
    rcluster_listener_close(s.listener);
    rcluster_worker_close(s.worker);
    return status;
}

int main(int argc, char **argv)
{
    struct bench_options opts = bench_parse_args(argc, argv);
    return rcluster_is_worker() ? run_worker(&opts) : run_primary(&opts);
}

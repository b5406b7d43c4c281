/*
 * hello_server.c: rcluster's example HTTP server in C (the contract every
 * example keeps: examples/README.md).
 *
 *   hello_server_c [--workers N] [--port P] [--host H] [--policy rr|shared|reuseport|least|hybrid]
 *
 * One program is both the primary and its workers: the primary starts N
 * copies of itself, and rcluster_is_worker() tells a copy which it is. The
 * primary binds HOST:PORT, starts the workers, prints `ready ...` once all
 * listen, and leaves the rest to the library (handle_signals: SIGTERM/SIGINT
 * stop gracefully, SIGHUP reloads worker by worker, a crashed worker is
 * restarted). A worker accepts with rcluster_listener_accept and serves each
 * connection on a thread of its own (keep-alive, pipelining) until the
 * primary asks it to leave: accept then says RCLUSTER_E_LEAVING, requests
 * already received are answered with `Connection: close`, idle connections
 * closed, and the worker exits 0. (The benchmark's engine, one poll(2) loop
 * for many connections, is bench/c/http_engine.c.)
 *
 * Build: make examples (target/release/examples/hello_server_c).
 */
#define _GNU_SOURCE /* memmem, strcasestr */
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <rcluster.h>

#define USAGE "usage: hello_server [--workers N] [--port P] [--host H] [--policy rr|shared|reuseport|least|hybrid]"
#define PORT_ENV "HELLO_SERVER_PORT" /* the port the primary bound, for its workers */
#define IDLE_GRACE_MS 1000           /* a leaving worker keeps an idle keep-alive connection this long */
#define DRAIN_MS 5000                /* and everything else at most this long */

static const struct { const char *name; int value; } POLICIES[] = {
    {"rr", RCLUSTER_POLICY_RR}, {"shared", RCLUSTER_POLICY_SHARED},
    {"reuseport", RCLUSTER_POLICY_REUSEPORT}, {"least", RCLUSTER_POLICY_LEAST},
    {"hybrid", RCLUSTER_POLICY_HYBRID}};

struct options { unsigned workers, port; const char *host; int policy; const char *policy_name; };

static void bad_usage(const char *what, const char *arg)
{
    fprintf(stderr, "hello_server: %s \"%s\" (" USAGE ")\n", what, arg);
    exit(2);
}

static unsigned number(const char *text, unsigned min, unsigned max)
{
    char *end;
    unsigned long n = strtoul(text, &end, 10);
    if (text[0] < '0' || text[0] > '9' || *end != '\0' || n < min || n > max)
        bad_usage("not a number in range:", text);
    return (unsigned)n;
}

static struct options parse_args(int argc, char **argv)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    struct options o = {cpus > 0 ? (unsigned)cpus : 1, 8080, "127.0.0.1", RCLUSTER_POLICY_RR, "rr"};
    for (int i = 1; i < argc; i++) {
        char flag[16] = "";
        const char *value = strchr(argv[i], '=');
        if (value != NULL && (size_t)(value - argv[i]) < sizeof flag) /* --flag=value */
            memcpy(flag, argv[i], (size_t)(value++ - argv[i]));
        else if (strlen(argv[i]) < sizeof flag && i + 1 < argc) /* --flag value */
            strcpy(flag, argv[i]), value = argv[++i];
        else
            bad_usage("unknown argument or missing value:", argv[i]);
        unsigned char addr[16];
        if (strcmp(flag, "--workers") == 0) {
            o.workers = number(value, 1, 1024);
        } else if (strcmp(flag, "--port") == 0) {
            o.port = number(value, 0, 65535);
        } else if (strcmp(flag, "--host") == 0) {
            if (*value && strcmp(value, "localhost") && inet_pton(AF_INET, value, addr) != 1
                && inet_pton(AF_INET6, value, addr) != 1)
                bad_usage("--host wants an IP address, \"localhost\" or \"\", not", value);
            o.host = value;
        } else if (strcmp(flag, "--policy") == 0) {
            o.policy = -1;
            for (size_t p = 0; p < sizeof POLICIES / sizeof POLICIES[0]; p++)
                if (strcmp(value, POLICIES[p].name) == 0)
                    o.policy = POLICIES[p].value, o.policy_name = POLICIES[p].name;
            if (o.policy < 0)
                bad_usage("--policy wants rr, shared, reuseport, least or hybrid, not", value);
        } else {
            bad_usage("unknown argument", argv[i]);
        }
    }
    return o;
}

/* ----- the primary ------------------------------------------------------- */

static int run_primary(const struct options *o)
{
    rcluster_primary_options po;
    rcluster_primary *p;
    rcluster_primary_options_init2(&po, sizeof po); /* argv NULL: workers run this program */
    po.policy = o->policy;
    po.handle_signals = 1; /* SIGTERM/SIGINT: graceful stop, SIGHUP: rolling reload */
    uint16_t port;
    if (rcluster_primary_new2(&po, &p) != RCLUSTER_OK) {
        fprintf(stderr, "hello_server: %s\n", rcluster_last_error());
        return 1;
    }
    /* Bound first, so that with --port 0 every worker asks for the port the OS picked. */
    if (rcluster_primary_listen(p, o->host, (uint16_t)o->port, &port) != RCLUSTER_OK) {
        fprintf(stderr, "hello_server: cannot listen on %s:%u: %s\n", o->host, o->port, rcluster_last_error());
        rcluster_primary_free(p);
        return 1;
    }
    char env_port[32];
    snprintf(env_port, sizeof env_port, PORT_ENV "=%u", (unsigned)port);
    const char *env[] = {env_port, NULL};
    for (unsigned i = 0; i < o->workers; i++)
        if (rcluster_primary_fork(p, env, NULL, NULL) != RCLUSTER_OK)
            break; /* a SIGTERM already started the shutdown; any other failure shows below */

    unsigned listening = 0;
    int status = 0;
    rcluster_event ev;
    for (int kind = 0; kind != RCLUSTER_EVENT_SHUTDOWN;) {
        /* Until ready, wait at most 30 s for the workers; then as long as it runs. */
        int rc = rcluster_primary_wait_event(p, &ev, listening < o->workers && !status ? 30000 : -1);
        if (rc != RCLUSTER_OK) {
            fprintf(stderr, "hello_server: waiting for events: %s\n", rcluster_strerror(rc));
            status = 1;
            if (rc != RCLUSTER_E_TIMEOUT) /* the workers did not start in time: stop them */
                break;
            rcluster_primary_shutdown(p, 2000);
            continue;
        }
        kind = ev.kind;
        if (kind == RCLUSTER_EVENT_LISTENING && ++listening == o->workers) {
            const char *host = o->host[0] ? o->host : "0.0.0.0";
            bool v6 = strchr(host, ':') != NULL;
            printf("ready http://%s%s%s:%u workers=%u policy=%s\n", v6 ? "[" : "", host, v6 ? "]" : "",
                   (unsigned)port, o->workers, o->policy_name);
            fflush(stdout);
        } else if (kind == RCLUSTER_EVENT_EXIT && listening < o->workers && !status
                   && !((ev.flags & RCLUSTER_EXIT_AFTER_DISCONNECT) && ev.exit_code == 0)) {
            fprintf(stderr, "hello_server: a worker exited before all were listening\n");
            status = 1;
            rcluster_primary_shutdown(p, 2000);
        } else if (kind != RCLUSTER_EVENT_MESSAGE && kind != RCLUSTER_EVENT_LISTENING) {
            fprintf(stderr, "hello_server: %s worker %u\n", rcluster_event_name(kind), (unsigned)ev.worker_id);
        }
        rcluster_event_release(&ev);
    }
    rcluster_primary_free(p);
    return status;
}

/* ----- a worker ---------------------------------------------------------- */

static rcluster_worker *worker;
static char body[64];
static atomic_bool leaving;     /* the primary asked us to go (or is gone) */
static atomic_long leaving_at;  /* when, in ms */
static atomic_int connections;  /* open, each on its thread */

static long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Answers each complete request; closes on `Connection: close`, HTTP/1.0, a body, or when leaving. */
static void *serve(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char in[16384];
    size_t len = 0;
    for (bool close_after = false; !close_after;) {
        char *end = memmem(in, len, "\r\n\r\n", 4);
        if (end == NULL) { /* wait for more; once leaving, an idle connection gets a grace */
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            long left = atomic_load(&leaving) ? atomic_load(&leaving_at) + (len ? DRAIN_MS : IDLE_GRACE_MS) - now_ms() : 100;
            if (left <= 0 || len == sizeof in)
                break;
            if (poll(&pfd, 1, left < 100 ? (int)left : 100) <= 0)
                continue;
            ssize_t n = recv(fd, in + len, sizeof in - len, 0);
            if (n <= 0)
                break;
            len += (size_t)n;
            continue;
        }
        *end = '\0';
        close_after = strcasestr(in, "\nconnection: close") || strstr(in, "HTTP/1.0") || strcasestr(in, "\ncontent-length:")
                      || strcasestr(in, "\ntransfer-encoding:") || atomic_load(&leaving);
        char out[256];
        int n = snprintf(out, sizeof out, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n%s",
                         strlen(body), close_after ? "Connection: close\r\n" : "", body);
        if (send(fd, out, (size_t)n, MSG_NOSIGNAL) != n)
            break;
        len -= (size_t)(end + 4 - in);
        memmove(in, end + 4, len);
    }
    close(fd);
    rcluster_worker_done(worker, 1); /* the `least` policy counts the connections a worker holds */
    atomic_fetch_sub(&connections, 1);
    return NULL;
}

static int run_worker(const struct options *o)
{
    uint32_t id;
    rcluster_listener *listener;
    const char *port = getenv(PORT_ENV);
    int fd, rc = rcluster_worker_open(&worker);
    if (rc == RCLUSTER_OK && (rc = rcluster_worker_id(&id)) == RCLUSTER_OK)
        rc = rcluster_worker_listen(worker, o->host, (uint16_t)(port ? atoi(port) : (int)o->port), 10000, &listener);
    if (rc != RCLUSTER_OK) { /* LEAVING: the cluster stopped while we started */
        if (rc != RCLUSTER_E_LEAVING && rc != RCLUSTER_E_CLOSED)
            fprintf(stderr, "hello_server: worker: %s\n", rcluster_last_error());
        return rc == RCLUSTER_E_LEAVING || rc == RCLUSTER_E_CLOSED ? 0 : 1;
    }
    snprintf(body, sizeof body, "worker %u pid %d\n", (unsigned)id, (int)getpid());
    pthread_attr_t detached;
    pthread_attr_init(&detached);
    pthread_attr_setdetachstate(&detached, PTHREAD_CREATE_DETACHED);
    /* Blocking accept also answers the primary's heartbeat; after the connections
     * already queued for us it says LEAVING (asked to go) or CLOSED (primary gone). */
    while ((rc = rcluster_listener_accept(listener, -1, &fd)) == RCLUSTER_OK) {
        pthread_t thread;
        atomic_fetch_add(&connections, 1);
        if (pthread_create(&thread, &detached, serve, (void *)(intptr_t)fd) != 0)
            close(fd), atomic_fetch_sub(&connections, 1);
    }
    if (rc != RCLUSTER_E_LEAVING && rc != RCLUSTER_E_CLOSED)
        fprintf(stderr, "hello_server: accept: %s\n", rcluster_last_error());
    atomic_store(&leaving_at, now_ms());
    atomic_store(&leaving, true);
    while (atomic_load(&connections) > 0 && now_ms() < atomic_load(&leaving_at) + DRAIN_MS)
        usleep(10000);
    rcluster_listener_close(listener);
    rcluster_worker_close(worker);
    return 0;
}

int main(int argc, char **argv)
{
    struct options o = parse_args(argc, argv);
    return rcluster_is_worker() ? run_worker(&o) : run_primary(&o);
}

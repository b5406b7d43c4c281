/*
 * hello_server.c: rcluster's example HTTP server in C.
 *
 * One program is both the primary and the workers: the primary starts N
 * copies of this program (same arguments) as workers, and
 * rcluster_is_worker() tells a copy which one it is.
 *
 *   hello_server_c [--workers N] [--port P] [--host H] [--policy rr|shared|reuseport|least]
 *
 * The primary binds HOST:PORT up front (so port 0 gives a real port before
 * any worker starts), starts the workers, waits until every one listens,
 * prints `ready http://HOST:PORT workers=N policy=POLICY`, and reports what
 * happens until the cluster shuts down. The library does the rest: with
 * handle_signals = 1, SIGTERM and SIGINT start a graceful shutdown (the
 * primary exits 0 once every worker is gone), SIGHUP a rolling reload,
 * SIGTTIN/SIGTTOU add or remove a worker; a worker that dies without being
 * asked to is restarted.
 *
 * A worker answers every HTTP/1.1 request with `worker <id> pid <pid>\n`.
 * It serves many connections at once from one poll(2) loop. When the
 * primary asks it to leave, it takes what is still queued for it, answers
 * every request it already has (with `Connection: close`), closes idle
 * keep-alive connections and exits 0.
 *
 * Build (after `cargo build --release`):
 *   gcc -std=c11 -Wall -Wextra -Werror -O2 -Iinclude examples/c/hello_server.c \
 *       -o target/release/examples/hello_server_c \
 *       -Ltarget/release -lrcluster -Wl,-rpath,'$ORIGIN/..'
 */

#define _POSIX_C_SOURCE 200809L /* MSG_NOSIGNAL, strncasecmp, clock_gettime */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <rcluster.h>

#define PROG "hello_server"
#define USAGE "usage: hello_server [--workers N] [--port P] [--host H] [--policy rr|shared|reuseport|least]"

/* The primary tells its workers the port it bound (the real one when 0 was asked). */
#define PORT_ENV "HELLO_SERVER_PORT"

/* How long workers have to start listening before the primary gives up. */
#define STARTUP_TIMEOUT_MS 30000

/* A request head larger than this is refused (431). */
#define MAX_HEAD 16384
/* Pipelined requests wait while this much response data is unsent. */
#define MAX_PENDING_OUT 65536
/* How long a leaving worker may take to finish what it holds. */
#define DRAIN_MS 5000
/*
 * How long a leaving worker keeps a keep-alive connection that is between
 * requests: a busy client's next request is usually already on its way,
 * and is better answered (with `Connection: close`) than cut off.
 */
#define IDLE_GRACE_MS 1000
/* When the primary is gone: be quick. */
#define GONE_DRAIN_MS 1000

struct options {
    unsigned workers;
    unsigned port;
    const char *host;
    int policy;
    const char *policy_name;
};

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int ms_until(int64_t deadline)
{
    int64_t left = deadline - now_ms();
    if (left < 0)
        return 0;
    return left > INT_MAX ? INT_MAX : (int)left;
}

static void *xrealloc(void *p, size_t size)
{
    void *q = realloc(p, size);
    if (q == NULL) {
        fprintf(stderr, PROG ": out of memory\n");
        exit(1);
    }
    return q;
}

/* Prints "hello_server: WHAT failed: <code description>: <last error>". */
static void report(const char *what, int rc)
{
    fprintf(stderr, PROG ": %s failed: %s: %s\n", what, rcluster_strerror(rc), rcluster_last_error());
}

static void bad_usage(const char *fmt, ...)
{
    va_list ap;
    fputs(PROG ": ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs(" (" USAGE ")\n", stderr);
    exit(2);
}

static unsigned parse_number(const char *flag, const char *text, unsigned min, unsigned max)
{
    char *end = NULL;
    errno = 0;
    unsigned long value = strtoul(text, &end, 10);
    if (text[0] < '0' || text[0] > '9' || *end != '\0' || errno != 0 || value < min || value > max)
        bad_usage("%s wants a whole number from %u to %u, not \"%s\"", flag, min, max, text);
    return (unsigned)value;
}

/* What rcluster takes for a host: an IP literal (IPv6 may be bracketed), "localhost", or "". */
static bool valid_host(const char *host)
{
    char literal[INET6_ADDRSTRLEN + 2];
    size_t len = strlen(host);
    if (len == 0 || strcmp(host, "localhost") == 0)
        return true;
    if (len >= sizeof literal)
        return false;
    if (host[0] == '[' && host[len - 1] == ']' && len > 2) {
        memcpy(literal, host + 1, len - 2);
        literal[len - 2] = '\0';
    } else {
        memcpy(literal, host, len + 1);
    }
    unsigned char addr[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, literal, addr) == 1 || inet_pton(AF_INET6, literal, addr) == 1;
}

static struct options parse_args(int argc, char **argv)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    struct options o = {
        .workers = cpus > 0 ? (unsigned)cpus : 1,
        .port = 8080,
        .host = "127.0.0.1",
        .policy = RCLUSTER_POLICY_RR,
        .policy_name = "rr",
    };
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            puts(USAGE);
            exit(0);
        }
        /* Accept both "--flag value" and "--flag=value". */
        const char *flag = arg, *value = NULL;
        char name[16];
        const char *eq = strchr(arg, '=');
        if (strncmp(arg, "--", 2) == 0 && eq != NULL && (size_t)(eq - arg) < sizeof name) {
            memcpy(name, arg, (size_t)(eq - arg));
            name[eq - arg] = '\0';
            flag = name;
            value = eq + 1;
        }
        bool known = strcmp(flag, "--workers") == 0 || strcmp(flag, "--port") == 0
            || strcmp(flag, "--host") == 0 || strcmp(flag, "--policy") == 0;
        if (!known)
            bad_usage("unknown argument \"%s\"", arg);
        if (value == NULL) {
            if (i + 1 >= argc)
                bad_usage("%s needs a value", flag);
            value = argv[++i];
        }
        if (strcmp(flag, "--workers") == 0) {
            o.workers = parse_number(flag, value, 1, 1024);
        } else if (strcmp(flag, "--port") == 0) {
            o.port = parse_number(flag, value, 0, 65535);
        } else if (strcmp(flag, "--host") == 0) {
            if (!valid_host(value))
                bad_usage("--host wants an IP address, \"localhost\" or \"\" (all interfaces), not \"%s\"", value);
            o.host = value;
        } else if (strcmp(value, "rr") == 0) {
            o.policy = RCLUSTER_POLICY_RR;
            o.policy_name = "rr";
        } else if (strcmp(value, "shared") == 0) {
            o.policy = RCLUSTER_POLICY_SHARED;
            o.policy_name = "shared";
        } else if (strcmp(value, "reuseport") == 0) {
            o.policy = RCLUSTER_POLICY_REUSEPORT;
            o.policy_name = "reuseport";
        } else if (strcmp(value, "least") == 0) {
            o.policy = RCLUSTER_POLICY_LEAST;
            o.policy_name = "least";
        } else {
            bad_usage("--policy wants rr, shared, reuseport or least, not \"%s\"", value);
        }
    }
    return o;
}

/* ------------------------------------------------------------------------ */
/* Primary                                                                  */

struct primary_state {
    const struct options *opts;
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
        fprintf(stderr, PROG ": %s; shutting down\n", why);
    s->failing = true;
    rcluster_primary_shutdown(s->primary, 2000);
}

static void print_ready(const struct primary_state *s)
{
    const char *host = s->opts->host[0] ? s->opts->host : "0.0.0.0";
    bool bracket = strchr(host, ':') != NULL && host[0] != '[';
    printf("ready http://%s%s%s:%u workers=%u policy=%s\n", bracket ? "[" : "", host,
           bracket ? "]" : "", (unsigned)s->port, s->opts->workers, s->opts->policy_name);
    fflush(stdout);
}

static void on_listening(struct primary_state *s, const rcluster_event *ev)
{
    for (size_t i = 0; i < s->nlistening; i++)
        if (s->listening[i] == ev->worker_id)
            return;
    if (s->nlistening == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 16;
        s->listening = xrealloc(s->listening, s->cap * sizeof *s->listening);
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
        fprintf(stderr, PROG ": worker %u (pid %d) was killed by signal %d\n", (unsigned)ev->worker_id,
                (int)ev->pid, ev->signal);
    else
        fprintf(stderr, PROG ": worker %u (pid %d) exited with code %d\n", (unsigned)ev->worker_id,
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
            fprintf(stderr, PROG ": worker %u (pid %d) started\n", (unsigned)ev->worker_id, (int)ev->pid);
        break;
    case RCLUSTER_EVENT_LISTENING:
        on_listening(s, ev);
        break;
    case RCLUSTER_EVENT_EXIT:
        on_exit_event(s, ev);
        break;
    case RCLUSTER_EVENT_WORKER_ERROR:
        fprintf(stderr, PROG ": worker %u broke the protocol: %.*s\n", (unsigned)ev->worker_id, (int)ev->len, data);
        break;
    case RCLUSTER_EVENT_CRASH_LOOP:
        fprintf(stderr, PROG ": slot %d keeps crashing; it is not restarted until a reload (SIGHUP)\n",
                (int)ev->slot);
        break;
    case RCLUSTER_EVENT_UNRESPONSIVE:
        fprintf(stderr, PROG ": worker %u (pid %d) stopped answering; it is replaced\n", (unsigned)ev->worker_id,
                (int)ev->pid);
        break;
    case RCLUSTER_EVENT_RELOAD_DONE:
        fprintf(stderr, PROG ": reload done: every worker is of generation %u\n", (unsigned)ev->generation);
        break;
    case RCLUSTER_EVENT_RELOAD_FAILED:
        fprintf(stderr, PROG ": reload to generation %u stopped: %.*s\n", (unsigned)ev->generation, (int)ev->len,
                data);
        break;
    default:
        break; /* ONLINE, DISCONNECT, MESSAGE, SHUTDOWN: nothing to say */
    }
}

static int run_primary(const struct options *opts)
{
    struct primary_state s = {.opts = opts};

    rcluster_primary_options po;
    rcluster_primary_options_init(&po);
    po.policy = opts->policy;
    po.handle_signals = 1; /* SIGTERM/SIGINT: shutdown, SIGHUP: reload, SIGTTIN/SIGTTOU: scale */
    po.argv = NULL;        /* workers run this program with these arguments */
    int rc = rcluster_primary_new(&po, &s.primary);
    if (rc != RCLUSTER_OK) {
        report("rcluster_primary_new", rc);
        return 1;
    }

    /* Bind first: with --port 0 the workers must ask for the port the OS picked. */
    rc = rcluster_primary_listen(s.primary, opts->host, (uint16_t)opts->port, &s.port);
    if (rc != RCLUSTER_OK) {
        fprintf(stderr, PROG ": cannot listen on %s:%u: %s\n", opts->host, opts->port, rcluster_last_error());
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

    int64_t startup_deadline = now_ms() + STARTUP_TIMEOUT_MS;
    for (;;) {
        rcluster_event ev;
        memset(&ev, 0, sizeof ev);
        int timeout = s.ready || s.failing ? -1 : ms_until(startup_deadline);
        rc = rcluster_primary_wait_event(s.primary, &ev, timeout);
        if (rc == RCLUSTER_E_TIMEOUT || rc == RCLUSTER_E_AGAIN) {
            if (!s.ready && !s.failing && now_ms() >= startup_deadline)
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
        fprintf(stderr, PROG ": stopped before every worker was listening\n");
    rcluster_primary_free(s.primary);
    free(s.listening);
    return s.failing ? 1 : 0;
}

/* ------------------------------------------------------------------------ */
/* Worker                                                                   */

struct conn {
    int fd;
    char in[MAX_HEAD];
    size_t in_len;
    char *out;
    size_t out_len, out_off, out_cap;
    uint64_t body_left; /* request body bytes still to skip */
    unsigned served;    /* responses queued so far */
    bool close_after;   /* close once the output is sent */
    bool peer_eof;      /* the client sent FIN */
};

struct worker_state {
    rcluster_worker *worker; /* told of every closed connection (policy least) */
    uint32_t id;
    char body[64];
    size_t body_len;
    struct conn **conns;
    size_t nconns, cap;
    bool draining;
    int64_t drain_deadline; /* everything still open is closed then */
    int64_t idle_deadline;  /* keep-alive connections between requests are closed from then */
};

static void append(struct conn *c, const char *data, size_t len)
{
    if (c->out_len + len > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 512;
        while (cap < c->out_len + len)
            cap *= 2;
        c->out = xrealloc(c->out, cap);
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
}

static size_t pending_out(const struct conn *c)
{
    return c->out_len - c->out_off;
}

static void respond(struct worker_state *w, struct conn *c, const char *status, bool head_only, bool keep_alive_10)
{
    char head[256];
    const char *body = status[0] == '2' ? w->body : "";
    size_t body_len = status[0] == '2' ? w->body_len : 0;
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n", status, body_len,
                     c->close_after ? "Connection: close\r\n" : keep_alive_10 ? "Connection: keep-alive\r\n" : "");
    append(c, head, (size_t)n);
    if (!head_only)
        append(c, body, body_len);
    c->served++;
}

/* Whether the comma-separated header value holds `token` (case-insensitive). */
static bool has_token(const char *value, size_t len, const char *token)
{
    size_t tlen = strlen(token);
    size_t i = 0;
    while (i < len) {
        while (i < len && (value[i] == ' ' || value[i] == '\t' || value[i] == ','))
            i++;
        size_t start = i;
        while (i < len && value[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (value[end - 1] == ' ' || value[end - 1] == '\t'))
            end--;
        if (end - start == tlen && strncasecmp(value + start, token, tlen) == 0)
            return true;
    }
    return false;
}

/*
 * Handles one request head of `len` bytes (CRLF CRLF included): queues the
 * response and sets body_left / close_after.
 */
static void handle_request(struct worker_state *w, struct conn *c, const char *head, size_t len)
{
    const char *line_end = memchr(head, '\r', len);
    const char *sp1 = memchr(head, ' ', (size_t)(line_end - head));
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(line_end - sp1 - 1)) : NULL;
    if (sp1 == NULL || sp2 == NULL || line_end - sp2 - 1 != 8 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0) {
        c->close_after = true;
        respond(w, c, "400 Bad Request", false, false);
        return;
    }
    bool http10 = sp2[8] == '0';
    bool head_only = sp1 - head == 4 && memcmp(head, "HEAD", 4) == 0;
    bool close = http10, chunked = false, bad_length = false;
    uint64_t content_length = 0;

    const char *p = line_end + 2;
    const char *end = head + len - 2; /* the final empty line */
    while (p < end) {
        const char *eol = memchr(p, '\r', (size_t)(end - p));
        if (eol == NULL)
            eol = end;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon != NULL) {
            size_t name_len = (size_t)(colon - p);
            const char *value = colon + 1;
            size_t value_len = (size_t)(eol - value);
            while (value_len > 0 && (*value == ' ' || *value == '\t')) {
                value++;
                value_len--;
            }
            if (name_len == 10 && strncasecmp(p, "connection", 10) == 0) {
                if (has_token(value, value_len, "close"))
                    close = true;
                else if (has_token(value, value_len, "keep-alive"))
                    close = false;
            } else if (name_len == 14 && strncasecmp(p, "content-length", 14) == 0) {
                uint64_t n = 0;
                size_t i = 0;
                for (; i < value_len && value[i] >= '0' && value[i] <= '9'; i++)
                    n = n < UINT64_MAX / 10 ? n * 10 + (uint64_t)(value[i] - '0') : UINT64_MAX;
                if (i == 0)
                    bad_length = true;
                content_length = n;
            } else if (name_len == 17 && strncasecmp(p, "transfer-encoding", 17) == 0) {
                chunked = true;
            }
        }
        p = eol + 2;
    }
    if (bad_length) {
        c->close_after = true;
        respond(w, c, "400 Bad Request", false, false);
        return;
    }
    /* A chunked body is not parsed here: answer, then close instead of reading it. */
    c->close_after = close || chunked || w->draining;
    c->body_left = content_length;
    respond(w, c, "200 OK", head_only, http10 && !c->close_after);
}

/* Where the head starting at `p` ends (just past its CRLF CRLF), or NULL. */
static const char *head_end(const char *p, size_t len)
{
    for (size_t i = 0; i + 4 <= len; i++)
        if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n')
            return p + i + 4;
    return NULL;
}

/* Handles every complete request in the input buffer (while output is not piling up). */
static void process_input(struct worker_state *w, struct conn *c)
{
    size_t used = 0;
    while (!c->close_after && pending_out(c) < MAX_PENDING_OUT) {
        if (c->body_left > 0) {
            size_t skip = c->in_len - used;
            if (skip > c->body_left)
                skip = (size_t)c->body_left;
            used += skip;
            c->body_left -= skip;
            if (c->body_left > 0)
                break;
        }
        const char *start = c->in + used;
        const char *end = head_end(start, c->in_len - used);
        if (end == NULL) {
            if (used == 0 && c->in_len == sizeof c->in) {
                c->close_after = true;
                respond(w, c, "431 Request Header Fields Too Large", false, false);
            }
            break;
        }
        size_t len = (size_t)(end - start);
        handle_request(w, c, start, len);
        used += len;
    }
    if (c->close_after)
        used = c->in_len; /* nothing more will be read from this connection */
    memmove(c->in, c->in + used, c->in_len - used);
    c->in_len -= used;
}

/* Reads what the socket holds. Returns false on a connection error. */
static bool read_input(struct conn *c)
{
    while (c->in_len < sizeof c->in) {
        ssize_t n = recv(c->fd, c->in + c->in_len, sizeof c->in - c->in_len, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
        } else if (n == 0) {
            c->peer_eof = true;
            return true;
        } else if (errno == EINTR) {
            continue;
        } else {
            return errno == EAGAIN || errno == EWOULDBLOCK;
        }
    }
    return true;
}

/* Sends what it can. Returns false on a connection error. */
static bool write_output(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n >= 0)
            c->out_off += (size_t)n;
        else if (errno == EINTR)
            continue;
        else
            return errno == EAGAIN || errno == EWOULDBLOCK;
    }
    c->out_off = c->out_len = 0;
    return true;
}

static void close_conn(struct worker_state *w, struct conn *c)
{
    for (size_t i = 0; i < w->nconns; i++) {
        if (w->conns[i] == c) {
            w->conns[i] = w->conns[--w->nconns];
            break;
        }
    }
    close(c->fd);
    free(c->out);
    free(c);
    rcluster_worker_done(w->worker, 1); /* for the load-aware policy */
}

/* Whether the connection is between requests with nothing owed to the client. */
static bool is_idle(const struct conn *c)
{
    return c->in_len == 0 && c->body_left == 0 && pending_out(c) == 0;
}

/*
 * Moves a connection along after I/O: handle input, send output, close it
 * when it is done. Returns false if it was closed.
 */
static bool advance(struct worker_state *w, struct conn *c, bool readable)
{
    if (readable && pending_out(c) == 0 && !read_input(c)) {
        close_conn(w, c);
        return false;
    }
    for (;;) {
        process_input(w, c);
        if (!write_output(c)) {
            close_conn(w, c);
            return false;
        }
        /* Output sent and more complete requests may wait in the buffer: go again. */
        if (pending_out(c) > 0 || c->close_after || c->in_len == 0 || c->body_left > 0
            || head_end(c->in, c->in_len) == NULL)
            break;
    }
    bool done = pending_out(c) == 0 && (c->close_after || c->peer_eof);
    if (done) {
        close_conn(w, c);
        return false;
    }
    return true;
}

static void add_conn(struct worker_state *w, int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* each answer is one write: send it now */
    struct conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(fd);
        return;
    }
    c->fd = fd;
    if (w->nconns == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 64;
        w->conns = xrealloc(w->conns, w->cap * sizeof *w->conns);
    }
    w->conns[w->nconns++] = c;
}

/*
 * Stops taking new work: every request already received is still answered,
 * with `Connection: close`. Keep-alive connections between requests are
 * closed after `idle_ms`, everything after `drain_ms`. A second call can
 * only bring the deadlines closer.
 */
static void start_draining(struct worker_state *w, int drain_ms, int idle_ms)
{
    int64_t now = now_ms();
    if (!w->draining || now + drain_ms < w->drain_deadline)
        w->drain_deadline = now + drain_ms;
    if (!w->draining || now + idle_ms < w->idle_deadline)
        w->idle_deadline = now + idle_ms;
    w->draining = true;
}

/*
 * While draining, once the idle grace is over: closes the keep-alive
 * connections that are between requests. A connection that never sent a
 * request may still be sending one, so it is left until the deadline.
 */
static void close_idle(struct worker_state *w)
{
    if (now_ms() < w->idle_deadline)
        return;
    for (size_t i = w->nconns; i-- > 0;) {
        struct conn *c = w->conns[i];
        if (c->served > 0 && is_idle(c))
            close_conn(w, c);
    }
}

static int run_worker(const struct options *opts)
{
    struct worker_state w = {0};
    int rc = rcluster_worker_id(&w.id);
    if (rc != RCLUSTER_OK) {
        report("rcluster_worker_id", rc);
        return 1;
    }
    w.body_len = (size_t)snprintf(w.body, sizeof w.body, "worker %u pid %d\n", (unsigned)w.id, (int)getpid());

    rcluster_worker *worker = NULL;
    rc = rcluster_worker_open(&worker);
    if (rc != RCLUSTER_OK) {
        report("rcluster_worker_open", rc);
        return 1;
    }
    w.worker = worker;
    /* The primary's real port (the one it bound for --port 0). */
    unsigned port = opts->port;
    const char *env_port = getenv(PORT_ENV);
    if (env_port != NULL)
        port = (unsigned)strtoul(env_port, NULL, 10);

    rcluster_listener *listener = NULL;
    rc = rcluster_worker_listen(worker, opts->host, (uint16_t)port, 10000, &listener);
    if (rc != RCLUSTER_OK) {
        /* Refused because the primary is shutting down (a SIGTERM during startup), or gone: just leave. */
        bool leaving = rc == RCLUSTER_E_CLOSED || rcluster_last_errno() == ESHUTDOWN;
        if (!leaving)
            fprintf(stderr, PROG ": worker %u cannot listen on %s:%u: %s\n", (unsigned)w.id, opts->host, port,
                    rcluster_last_error());
        rcluster_worker_close(worker);
        return leaving ? 0 : 1;
    }
    int worker_fd = -1, listener_fd = -1;
    rcluster_worker_fd(worker, &worker_fd);
    rcluster_listener_fd(listener, &listener_fd);

    bool watch_worker = true; /* until the primary is gone */
    bool accepting = true;    /* until accept says RCLUSTER_E_CLOSED */
    struct pollfd *pfds = NULL;
    struct conn **polled = NULL;
    size_t pcap = 0;

    while (!w.draining || accepting || w.nconns > 0) {
        if (w.draining && now_ms() >= w.drain_deadline)
            break;
        if (pcap < w.nconns + 2) {
            pcap = (w.nconns + 2) * 2;
            pfds = xrealloc(pfds, pcap * sizeof *pfds);
            polled = xrealloc(polled, pcap * sizeof *polled);
        }
        nfds_t n = 0;
        int worker_at = -1, listener_at = -1;
        if (watch_worker) {
            worker_at = (int)n;
            pfds[n++] = (struct pollfd){.fd = worker_fd, .events = POLLIN};
        }
        if (accepting) {
            listener_at = (int)n;
            pfds[n++] = (struct pollfd){.fd = listener_fd, .events = POLLIN};
        }
        size_t first_conn = n;
        for (size_t i = 0; i < w.nconns; i++) {
            struct conn *c = w.conns[i];
            polled[n] = c;
            pfds[n++] = (struct pollfd){.fd = c->fd, .events = pending_out(c) > 0 ? POLLOUT : POLLIN};
        }
        int timeout = -1;
        if (w.draining)
            timeout = ms_until(now_ms() < w.idle_deadline ? w.idle_deadline : w.drain_deadline);
        if (poll(pfds, n, timeout) < 0) {
            if (errno == EINTR)
                continue;
            perror(PROG ": poll");
            break;
        }

        if (worker_at >= 0 && pfds[worker_at].revents) {
            rcluster_event ev;
            memset(&ev, 0, sizeof ev);
            while ((rc = rcluster_worker_next_event(worker, &ev)) == RCLUSTER_OK) {
                if (ev.kind == RCLUSTER_EVENT_DISCONNECT) {
                    start_draining(&w, DRAIN_MS, IDLE_GRACE_MS);
                } else if (ev.kind == RCLUSTER_EVENT_PRIMARY_GONE) {
                    watch_worker = false;
                    start_draining(&w, GONE_DRAIN_MS, 0);
                }
                rcluster_event_release(&ev);
            }
            if (rc != RCLUSTER_E_AGAIN) {
                /* RCLUSTER_E_CLOSED after PRIMARY_GONE; anything else is as bad. */
                if (rc != RCLUSTER_E_CLOSED)
                    report("rcluster_worker_next_event", rc);
                watch_worker = false;
                start_draining(&w, GONE_DRAIN_MS, 0);
            }
        }

        /* Once draining, accept until CLOSED: what was queued here is ours to serve.
         * accept_many takes every connection already queued (up to 16) and
         * acknowledges them to the primary together: one wake-up of the
         * primary per batch instead of one per connection. */
        if (accepting && ((listener_at >= 0 && pfds[listener_at].revents) || w.draining)) {
            for (;;) {
                int fds[16];
                size_t count = 0;
                rc = rcluster_listener_accept_many(listener, 0, fds, 16, &count);
                if (rc == RCLUSTER_OK) {
                    for (size_t i = 0; i < count; i++)
                        add_conn(&w, fds[i]);
                    continue;
                }
                if (rc != RCLUSTER_E_AGAIN) {
                    if (rc != RCLUSTER_E_CLOSED)
                        report("rcluster_listener_accept_many", rc);
                    accepting = false;
                    start_draining(&w, DRAIN_MS, IDLE_GRACE_MS);
                }
                break;
            }
        }

        for (size_t i = first_conn; i < n; i++) {
            short re = pfds[i].revents;
            if (re == 0)
                continue;
            struct conn *c = polled[i];
            if (re & (POLLERR | POLLNVAL)) {
                close_conn(&w, c);
                continue;
            }
            advance(&w, c, (re & (POLLIN | POLLHUP)) != 0);
        }
        /* Only here, after the loop above: its `polled` entries must stay valid. */
        if (w.draining)
            close_idle(&w);
    }

    /* Whatever is left at the deadline is closed. */
    while (w.nconns > 0)
        close_conn(&w, w.conns[w.nconns - 1]);
    free(w.conns);
    free(pfds);
    free(polled);
    rcluster_listener_close(listener);
    rcluster_worker_close(worker);
    return 0;
}

int main(int argc, char **argv)
{
    struct options opts = parse_args(argc, argv);
    return rcluster_is_worker() ? run_worker(&opts) : run_primary(&opts);
}

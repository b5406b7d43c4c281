/*
 * http_engine.c: the benchmark's HTTP/1.1 engine (see http_engine.h), and the
 * per-request work knob of the uneven test: each request takes BENCH_WORK_US
 * microseconds more, BENCH_SLOW_WORK_US on the worker whose id is
 * BENCH_SLOW_WORKER. By default the worker sleeps that long
 * (BENCH_WORK_KIND=sleep: a handler waiting on synchronous I/O, leaving the
 * CPU to the others); BENCH_WORK_KIND=spin burns that much CPU instead. The
 * delay comes when a request's bytes are read, so the worker still accepts
 * new connections at once between requests, like an event-loop app whose
 * handler is slow.
 */

#define _GNU_SOURCE /* strncasecmp, clock_gettime, MSG_NOSIGNAL */

#include "http_engine.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* A request head larger than this is refused (431). */
#define MAX_HEAD 16384
/* Pipelined requests wait while this much response data is unsent. */
#define MAX_PENDING_OUT 65536
/* How long a leaving worker may take to finish what it holds. */
#define DRAIN_MS 5000
/* How long a leaving worker keeps a keep-alive connection between requests:
 * a busy client's next request is usually on its way, and is better answered
 * (with `Connection: close`) than cut off. */
#define IDLE_GRACE_MS 1000
/* When the primary is gone: be quick. */
#define GONE_DRAIN_MS 1000
/* Connections taken from the source at once. */
#define TAKE_BATCH 16

int64_t bench_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int bench_ms_until(int64_t deadline)
{
    int64_t left = deadline - bench_now_ms();
    if (left < 0)
        return 0;
    return left > INT_MAX ? INT_MAX : (int)left;
}

void *bench_xrealloc(void *p, size_t size)
{
    void *q = realloc(p, size);
    if (q == NULL) {
        fputs("bench: out of memory\n", stderr);
        exit(1);
    }
    return q;
}

/* ------------------------------------------------------------------------ */
/* The command line                                                         */

#define USAGE "usage: bench_rcluster|prefork [--workers N] [--port P] [--host H] [--policy rr|shared|reuseport|least|hybrid]"

static void bad_usage(const char *fmt, ...)
{
    va_list ap;
    fputs("bench: ", stderr);
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

struct bench_options bench_parse_args(int argc, char **argv)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    struct bench_options o = {
        .workers = cpus > 0 ? (unsigned)cpus : 1,
        .port = 8080,
        .host = "127.0.0.1",
        .policy = "rr",
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
        } else if (strcmp(value, "rr") == 0 || strcmp(value, "shared") == 0 || strcmp(value, "reuseport") == 0
                   || strcmp(value, "least") == 0 || strcmp(value, "hybrid") == 0) {
            o.policy = value;
        } else {
            bad_usage("--policy wants rr, shared, reuseport, least or hybrid, not \"%s\"", value);
        }
    }
    return o;
}

/* ------------------------------------------------------------------------ */
/* The per-request work knob                                                */

static int64_t work_ns;  /* per request; 0: none */
static int work_spin;    /* 1: burn CPU, 0: sleep */

static int64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void init_work(uint32_t worker_id)
{
    const char *work = getenv("BENCH_WORK_US");
    const char *slow = getenv("BENCH_SLOW_WORK_US");
    const char *slow_id = getenv("BENCH_SLOW_WORKER");
    int64_t us = work ? strtoll(work, NULL, 10) : 0;
    if (slow && slow_id && strtoul(slow_id, NULL, 10) == worker_id)
        us = strtoll(slow, NULL, 10);
    work_ns = us > 0 ? us * 1000 : 0;
    const char *kind = getenv("BENCH_WORK_KIND");
    work_spin = kind != NULL && strcmp(kind, "spin") == 0;
    if (work_ns > 0 && !work_spin)
        prctl(PR_SET_TIMERSLACK, 1000UL); /* sleeps end within 1 us of when asked, not 50 */
}

/* recv(2), then the request's work when bytes came. */
static ssize_t recv_and_work(int fd, void *buf, size_t len)
{
    ssize_t n = recv(fd, buf, len, 0);
    if (n > 0 && work_ns > 0) {
        if (work_spin) {
            int64_t until = thread_cpu_ns() + work_ns;
            while (thread_cpu_ns() < until) {
            }
        } else {
            struct timespec ts = {.tv_sec = work_ns / 1000000000, .tv_nsec = work_ns % 1000000000};
            while (clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, &ts) == EINTR) {
            }
        }
    }
    return n;
}

/* ------------------------------------------------------------------------ */
/* Connections                                                              */

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
    const struct http_source *source; /* told of every closed connection */
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
        c->out = bench_xrealloc(c->out, cap);
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
        ssize_t n = recv_and_work(c->fd, c->in + c->in_len, sizeof c->in - c->in_len);
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
    if (w->source->closed != NULL)
        w->source->closed(w->source->ctx); /* rcluster's load-aware policy counts them */
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
        w->conns = bench_xrealloc(w->conns, w->cap * sizeof *w->conns);
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
    int64_t now = bench_now_ms();
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
    if (bench_now_ms() < w->idle_deadline)
        return;
    for (size_t i = w->nconns; i-- > 0;) {
        struct conn *c = w->conns[i];
        if (c->served > 0 && is_idle(c))
            close_conn(w, c);
    }
}


/* ------------------------------------------------------------------------ */
/* The loop                                                                 */

int http_serve(const struct http_source *source, uint32_t worker_id)
{
    struct worker_state w = {.source = source};
    w.body_len = (size_t)snprintf(w.body, sizeof w.body, "worker %u pid %d\n", (unsigned)worker_id, (int)getpid());
    init_work(worker_id);
    bool watch_control = source->control_fd >= 0;
    bool accepting = true; /* until the source says no more */
    struct pollfd *pfds = NULL;
    struct conn **polled = NULL;
    size_t pcap = 0;
    int status = 0;

    while (!w.draining || accepting || w.nconns > 0) {
        if (w.draining && bench_now_ms() >= w.drain_deadline)
            break;
        if (pcap < w.nconns + 2) {
            pcap = (w.nconns + 2) * 2;
            pfds = bench_xrealloc(pfds, pcap * sizeof *pfds);
            polled = bench_xrealloc(polled, pcap * sizeof *polled);
        }
        nfds_t n = 0;
        int control_at = -1, accept_at = -1;
        if (watch_control) {
            control_at = (int)n;
            pfds[n++] = (struct pollfd){.fd = source->control_fd, .events = POLLIN};
        }
        if (accepting) {
            accept_at = (int)n;
            pfds[n++] = (struct pollfd){.fd = source->accept_fd, .events = POLLIN};
        }
        size_t first_conn = n;
        for (size_t i = 0; i < w.nconns; i++) {
            struct conn *c = w.conns[i];
            polled[n] = c;
            pfds[n++] = (struct pollfd){.fd = c->fd, .events = pending_out(c) > 0 ? POLLOUT : POLLIN};
        }
        int timeout = -1;
        if (w.draining)
            timeout = bench_ms_until(bench_now_ms() < w.idle_deadline ? w.idle_deadline : w.drain_deadline);
        if (poll(pfds, n, timeout) < 0) {
            if (errno == EINTR)
                continue;
            perror("bench: poll");
            status = 1;
            break;
        }

        if (control_at >= 0 && pfds[control_at].revents) {
            int news = source->control(source->ctx);
            if (news == HTTP_DRAIN) {
                start_draining(&w, DRAIN_MS, IDLE_GRACE_MS);
            } else if (news == HTTP_GONE) {
                watch_control = false;
                start_draining(&w, GONE_DRAIN_MS, 0);
            }
        }

        /* Once draining, take until the source says no more: what was queued is ours to serve. */
        if (accepting && ((accept_at >= 0 && pfds[accept_at].revents) || w.draining)) {
            for (;;) {
                int fds[TAKE_BATCH];
                int count = source->take(source->ctx, fds, TAKE_BATCH);
                for (int i = 0; i < count; i++)
                    add_conn(&w, fds[i]);
                if (count > 0)
                    continue; /* until the source has none left */
                if (count < 0) {
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
    return status;
}

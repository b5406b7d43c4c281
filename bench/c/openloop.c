/*
 * openloop.c: the uneven test's load generator. An open loop: new
 * connections start at a fixed rate whatever the server does (wrk's closed
 * loop starts one only when one finishes, so it always keeps -c connections
 * queued somewhere and no policy can make a slow worker's queue shorter).
 *
 *   openloop --port P [--host 127.0.0.1] --rate R --seconds S
 *
 * Connection i is due at start + i/R (a timerfd wakes the loop on time);
 * it connects, sends `GET / HTTP/1.1` with `Connection: close`, reads the
 * whole response, and its latency runs from when it was due to when the
 * response is complete (so a generator that falls behind shows it, no
 * coordinated omission). The body `worker <id> pid <pid>` is counted per
 * worker. Prints one line in the shape of bench/wrk/count.lua's:
 *   BENCH_JSON {"requests":..,"duration_us":..,"errors":{..},"latency_us":{..},"workers":{..},...}
 */

#define _GNU_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_INFLIGHT 20000
#define RESP_MAX 1024
#define TIMEOUT_NS (10LL * 1000000000)

struct conn {
    int fd;
    int64_t due;
    size_t len;
    int writing;
    char buf[RESP_MAX];
};

struct worker_count {
    char key[48];
    unsigned long n;
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static struct worker_count counts[256];
static size_t ncounts;
static unsigned long err_connect, err_read, err_write, err_status, err_timeout, dropped;
static uint32_t *lat; /* microseconds */
static size_t nlat, caplat;

static void count_worker(const char *body, size_t len)
{
    char key[48] = "other";
    unsigned id, pid;
    if (len >= 7 && memcmp(body, "worker ", 7) == 0 && sscanf(body, "worker %u pid %u", &id, &pid) == 2)
        snprintf(key, sizeof key, "%u pid %u", id, pid);
    for (size_t i = 0; i < ncounts; i++) {
        if (strcmp(counts[i].key, key) == 0) {
            counts[i].n++;
            return;
        }
    }
    if (ncounts < sizeof counts / sizeof counts[0]) {
        snprintf(counts[ncounts].key, sizeof counts[ncounts].key, "%s", key);
        counts[ncounts++].n = 1;
    }
}

static void record_latency(int64_t ns)
{
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 65536;
        lat = realloc(lat, caplat * sizeof *lat);
        if (lat == NULL) {
            perror("openloop: realloc");
            exit(1);
        }
    }
    lat[nlat++] = (uint32_t)(ns / 1000);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static uint32_t percentile(double p)
{
    if (nlat == 0)
        return 0;
    size_t i = (size_t)(p / 100.0 * (double)nlat);
    return lat[i >= nlat ? nlat - 1 : i];
}

/* Whether the response in c->buf is complete; parses status and body when it is. */
static int response_done(struct conn *c, int eof, int *ok)
{
    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (end == NULL)
        return eof;
    size_t head = (size_t)(end + 4 - c->buf);
    size_t body_len = c->len - head;
    char *cl = memmem(c->buf, head, "Content-Length:", 15);
    if (cl == NULL)
        cl = memmem(c->buf, head, "content-length:", 15);
    if (cl != NULL && !eof && body_len < strtoul(cl + 15, NULL, 10))
        return 0;
    *ok = c->len >= 12 && memcmp(c->buf + 9, "200", 3) == 0;
    if (*ok)
        count_worker(c->buf + head, body_len);
    return 1;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0;
    double rate = 1000, seconds = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--host") == 0)
            host = argv[i + 1];
        else if (strcmp(argv[i], "--port") == 0)
            port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--rate") == 0)
            rate = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[i + 1]);
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (port <= 0 || rate <= 0 || inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "usage: openloop --port P [--host IPv4] --rate CONN_PER_S --seconds S\n");
        return 2;
    }
    static const char request[] = "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

    int ep = epoll_create1(EPOLL_CLOEXEC);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);

    struct conn **inflight = calloc(MAX_INFLIGHT, sizeof *inflight);
    size_t ninflight = 0;
    const int64_t interval = (int64_t)(1e9 / rate);
    const int64_t start = now_ns();
    const int64_t stop = start + (int64_t)(seconds * 1e9);
    int64_t next_due = start;
    unsigned long started = 0, finished = 0;

    for (;;) {
        int64_t now = now_ns();
        /* Start every connection that is due. */
        while (next_due <= now && next_due < stop) {
            if (ninflight >= MAX_INFLIGHT) {
                dropped++;
                next_due += interval;
                continue;
            }
            struct conn *c = calloc(1, sizeof *c);
            c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            c->due = next_due;
            c->writing = 1;
            next_due += interval;
            started++;
            if (c->fd < 0 || (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS)) {
                err_connect++;
                if (c->fd >= 0)
                    close(c->fd);
                free(c);
                continue;
            }
            struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
            inflight[ninflight++] = c;
        }
        if (next_due >= stop && ninflight == 0)
            break;
        if (now > stop + TIMEOUT_NS)
            break;
        if (next_due < stop) {
            struct itimerspec its = {.it_value = {.tv_sec = next_due / 1000000000, .tv_nsec = next_due % 1000000000}};
            timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
        }
        struct epoll_event evs[256];
        int n = epoll_wait(ep, evs, 256, next_due < stop ? -1 : 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c == NULL) {
                uint64_t ticks;
                if (read(tfd, &ticks, sizeof ticks) < 0) {
                }
                continue;
            }
            int done = 0, ok = 0;
            if (c->writing) {
                int soerr = 0;
                socklen_t sl = sizeof soerr;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
                if (soerr != 0) {
                    err_connect++;
                    done = 1;
                } else if (send(c->fd, request, sizeof request - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof request - 1)) {
                    err_write++;
                    done = 1;
                } else {
                    c->writing = 0;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            } else {
                for (;;) {
                    if (c->len == RESP_MAX) {
                        done = response_done(c, 1, &ok);
                        break;
                    }
                    ssize_t r = recv(c->fd, c->buf + c->len, RESP_MAX - c->len, 0);
                    if (r > 0) {
                        c->len += (size_t)r;
                        continue;
                    }
                    if (r == 0) {
                        done = 1;
                        if (!response_done(c, 1, &ok) || c->len == 0)
                            ok = -1;
                    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                        done = response_done(c, 0, &ok);
                    } else if (errno == EINTR) {
                        continue;
                    } else {
                        done = 1;
                        ok = -1;
                    }
                    break;
                }
                if (done) {
                    if (ok == 1)
                        record_latency(now_ns() - c->due);
                    else if (ok == -1)
                        err_read++;
                    else
                        err_status++;
                }
            }
            if (done) {
                close(c->fd);
                for (size_t k = 0; k < ninflight; k++) {
                    if (inflight[k] == c) {
                        inflight[k] = inflight[--ninflight];
                        break;
                    }
                }
                free(c);
                finished++;
            }
        }
    }
    err_timeout += ninflight;
    int64_t duration = (stop < now_ns() ? stop : now_ns()) - start;

    qsort(lat, nlat, sizeof *lat, cmp_u32);
    double mean = 0;
    for (size_t i = 0; i < nlat; i++)
        mean += lat[i];
    mean = nlat ? mean / (double)nlat : 0;
    printf("BENCH_JSON {\"requests\":%zu,\"duration_us\":%lld,\"offered_rate\":%.0f,\"started\":%lu,\"dropped\":%lu,"
           "\"errors\":{\"connect\":%lu,\"read\":%lu,\"write\":%lu,\"status\":%lu,\"timeout\":%lu},"
           "\"latency_us\":{\"mean\":%.1f,\"p50\":%u,\"p90\":%u,\"p99\":%u,\"p999\":%u,\"max\":%u},\"workers\":{",
           nlat, (long long)(duration / 1000), rate, started, dropped, err_connect, err_read, err_write, err_status,
           err_timeout, mean, percentile(50), percentile(90), percentile(99), percentile(99.9),
           nlat ? lat[nlat - 1] : 0);
    for (size_t i = 0; i < ncounts; i++)
        printf("%s\"%s\":%lu", i ? "," : "", counts[i].key, counts[i].n);
    printf("}}\n");
    (void)finished;
    return 0;
}

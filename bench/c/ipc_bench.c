/*
 * ipc_bench.c: rcluster's primary <-> worker messages, measured the way
 * bench/node/ipc_bench.js measures Node's process.send.
 *
 *   ipc_bench [--seconds S] [--size BYTES] [--windows W1,W2,...]
 *
 * The primary starts one worker (this program again); the worker echoes
 * every message back (rcluster_worker_wait_event; the messages waiting
 * together go back in one rcluster_worker_send_many).
 *
 *  1. Round trip: one message out, wait for its echo, repeat for S seconds.
 *     Per-round-trip p50/p99 in microseconds.
 *  2. Pipelined: keep W messages in flight (send W, then one more per echo)
 *     for S seconds; echoes received per second. Once per window W.
 *
 * --batched: the primary uses the batch calls, as the worker always does:
 * it takes every echo already waiting (rcluster_primary_wait_event with
 * timeout 0 after the first) and sends as many new messages with one
 * rcluster_primary_send_many. Same messages, same window; reported as
 * impl "rcluster-batched".
 *
 * Prints one line: BENCH_JSON {...}.
 */

#define _POSIX_C_SOURCE 200809L

#include <rcluster.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "ipc_bench: %s: %s: %s\n", what, rcluster_strerror(rc), rcluster_last_error());
    exit(1);
}

/* The worker: waits for messages, takes every one already waiting, and
 * echoes them all with one rcluster_worker_send_many (small messages share
 * records: a few system calls for the whole batch, not one per message). */
#define MAX_BATCH 1024

static int run_worker(void)
{
    rcluster_worker *w;
    int rc = rcluster_worker_open(&w);
    if (rc != RCLUSTER_OK)
        die("rcluster_worker_open", rc);
    static rcluster_event batch[MAX_BATCH];
    const void *data[MAX_BATCH];
    size_t lens[MAX_BATCH];
    for (;;) {
        size_t n = 0;
        int done = 0;
        while (n < MAX_BATCH) {
            memset(&batch[n], 0, sizeof batch[n]);
            rc = rcluster_worker_wait_event(w, &batch[n], n == 0 ? -1 : 0);
            if (rc == RCLUSTER_E_AGAIN || (rc == RCLUSTER_E_TIMEOUT && n > 0))
                break;
            if (rc == RCLUSTER_E_TIMEOUT)
                continue;
            if (rc != RCLUSTER_OK || batch[n].kind != RCLUSTER_EVENT_MESSAGE) {
                rcluster_event_release(&batch[n]);
                done = 1; /* DISCONNECT or PRIMARY_GONE: we are done */
                break;
            }
            data[n] = batch[n].data;
            lens[n] = batch[n].len;
            n++;
        }
        rc = n > 0 ? rcluster_worker_send_many(w, data, lens, n) : RCLUSTER_OK;
        for (size_t i = 0; i < n; i++)
            rcluster_event_release(&batch[i]);
        if (done || rc != RCLUSTER_OK)
            break;
    }
    rcluster_worker_close(w);
    return 0;
}

/* Waits up to `timeout_ms` for the next MESSAGE event (skipping others):
 * 1 when one came, 0 when none did (timeout 0: none was waiting). */
static int next_message(rcluster_primary *p, int timeout_ms)
{
    for (;;) {
        rcluster_event ev;
        memset(&ev, 0, sizeof ev);
        int rc = rcluster_primary_wait_event(p, &ev, timeout_ms);
        if (rc == RCLUSTER_E_AGAIN && timeout_ms == 0)
            return 0;
        if (rc != RCLUSTER_OK)
            die("rcluster_primary_wait_event", rc);
        int kind = ev.kind;
        rcluster_event_release(&ev);
        if (kind == RCLUSTER_EVENT_MESSAGE)
            return 1;
        if (kind == RCLUSTER_EVENT_EXIT || kind == RCLUSTER_EVENT_DISCONNECT) {
            fprintf(stderr, "ipc_bench: the worker went away\n");
            exit(1);
        }
    }
}

/* Waits for the next MESSAGE event (skipping others). */
static void wait_message(rcluster_primary *p)
{
    next_message(p, 10000);
}

/* `n` copies of the message with one rcluster_primary_send_many. */
static void send_batch(rcluster_primary *p, uint32_t id, const char *msg, size_t size, size_t n)
{
    static const void *data[MAX_BATCH];
    static size_t lens[MAX_BATCH];
    while (n > 0) {
        size_t k = n < MAX_BATCH ? n : MAX_BATCH;
        for (size_t i = 0; i < k; i++) {
            data[i] = msg;
            lens[i] = size;
        }
        int rc = rcluster_primary_send_many(p, id, data, lens, k);
        if (rc != RCLUSTER_OK)
            die("rcluster_primary_send_many", rc);
        n -= k;
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (rcluster_is_worker())
        return run_worker();

    double seconds = 2.0;
    size_t size = 64;
    int batched = 0;
    unsigned windows[16] = {256};
    int nwindows = 1;
    for (int i = 1; i < argc; i++) {
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--batched") == 0) {
            batched = 1;
        } else if (value && strcmp(argv[i], "--seconds") == 0) {
            seconds = atof(value);
            i++;
        } else if (value && strcmp(argv[i], "--size") == 0) {
            size = (size_t)atol(value);
            i++;
        } else if (value && strcmp(argv[i], "--windows") == 0) {
            nwindows = 0;
            for (char *w = argv[i + 1]; *w && nwindows < 16; w++) {
                windows[nwindows++] = (unsigned)strtoul(w, &w, 10);
                if (*w != ',')
                    break;
            }
            i++;
        } else {
            fprintf(stderr, "usage: ipc_bench [--seconds S] [--size BYTES] [--windows W1,W2,...] [--batched]\n");
            return 2;
        }
    }

    rcluster_primary_options o;
    rcluster_primary_options_init2(&o, sizeof o);
    o.restart = 0;
    rcluster_primary *p;
    int rc = rcluster_primary_new2(&o, &p);
    if (rc != RCLUSTER_OK)
        die("rcluster_primary_new", rc);
    uint32_t id = 0;
    rc = rcluster_primary_fork(p, NULL, &id, NULL);
    if (rc != RCLUSTER_OK)
        die("rcluster_primary_fork", rc);
    for (;;) { /* until the worker is online */
        rcluster_event ev;
        memset(&ev, 0, sizeof ev);
        rc = rcluster_primary_wait_event(p, &ev, 10000);
        if (rc != RCLUSTER_OK)
            die("waiting for the worker", rc);
        int kind = ev.kind;
        rcluster_event_release(&ev);
        if (kind == RCLUSTER_EVENT_ONLINE)
            break;
    }

    char *msg = malloc(size);
    memset(msg, 'x', size);

    /* Warm-up. */
    for (int i = 0; i < 1000; i++) {
        if ((rc = rcluster_primary_send(p, id, msg, size)) != RCLUSTER_OK)
            die("rcluster_primary_send", rc);
        wait_message(p);
    }

    /* 1. Round trips, one at a time. */
    size_t cap = 1 << 20, n = 0;
    double *lat = malloc(cap * sizeof *lat);
    double start = now_s(), end = start + seconds, t = start;
    while (t < end) {
        double t0 = t;
        if ((rc = rcluster_primary_send(p, id, msg, size)) != RCLUSTER_OK)
            die("rcluster_primary_send", rc);
        wait_message(p);
        t = now_s();
        if (n < cap)
            lat[n++] = (t - t0) * 1e6;
    }
    double rt_elapsed = t - start;
    qsort(lat, n, sizeof *lat, cmp_double);
    double p50 = lat[n / 2], p99 = lat[(size_t)((double)n * 0.99)];

    printf("BENCH_JSON {\"impl\": \"%s\", \"size\": %zu, \"rt_count\": %zu, \"rt_per_s\": %.1f, "
           "\"rt_p50_us\": %.2f, \"rt_p99_us\": %.2f, \"pipelined\": [",
           batched ? "rcluster-batched" : "rcluster", size, n, (double)n / rt_elapsed, p50, p99);

    /* 2. Pipelined: W in flight (send W, then one more per echo), for each W. */
    for (int k = 0; k < nwindows; k++) {
        unsigned window = windows[k];
        unsigned long sent = 0, received = 0;
        start = now_s();
        end = start + seconds;
        if (batched) {
            send_batch(p, id, msg, size, window);
            sent = window;
            for (;;) {
                /* Every echo already waiting, then as many new messages at once. */
                wait_message(p);
                unsigned long got = 1;
                while (got < MAX_BATCH && next_message(p, 0))
                    got++;
                received += got;
                if (now_s() >= end)
                    break;
                send_batch(p, id, msg, size, got);
                sent += got;
            }
        } else {
            for (; sent < window; sent++)
                if ((rc = rcluster_primary_send(p, id, msg, size)) != RCLUSTER_OK)
                    die("rcluster_primary_send", rc);
            for (;;) {
                wait_message(p);
                received++;
                if ((received & 63) == 0 && now_s() >= end)
                    break;
                if ((rc = rcluster_primary_send(p, id, msg, size)) != RCLUSTER_OK)
                    die("rcluster_primary_send", rc);
                sent++;
            }
        }
        double elapsed = now_s() - start;
        unsigned long measured = received;
        while (received < sent) { /* take what is still in flight */
            wait_message(p);
            received++;
        }
        printf("%s{\"window\": %u, \"msgs\": %lu, \"per_s\": %.1f}", k ? ", " : "", window, measured,
               (double)measured / elapsed);
    }
    printf("]}\n");
    fflush(stdout);

    rcluster_primary_shutdown(p, 2000);
    for (;;) {
        rcluster_event ev;
        memset(&ev, 0, sizeof ev);
        rc = rcluster_primary_wait_event(p, &ev, 10000);
        if (rc != RCLUSTER_OK)
            break;
        int kind = ev.kind;
        rcluster_event_release(&ev);
        if (kind == RCLUSTER_EVENT_SHUTDOWN)
            break;
    }
    rcluster_primary_free(p);
    free(lat);
    free(msg);
    return 0;
}

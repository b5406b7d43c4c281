/* Raw fork from a single-threaded C program: the children return from
 * rcluster_primary_fork_raw as workers, serve through the primary, and
 * everything is shut down and reaped. Exit 0 on success. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rcluster.h"

#define CHECK(call)                                                                  \
    do {                                                                             \
        int rc_ = (call);                                                            \
        if (rc_ != 0) {                                                              \
            fprintf(stderr, "%s:%d %s -> %d: %s\n", __FILE__, __LINE__, #call, rc_, \
                    rcluster_last_error());                                          \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

static void serve_as_worker(uint16_t port) {
    rcluster_worker *w;
    rcluster_listener *l;
    uint32_t id;
    CHECK(rcluster_worker_open(&w));
    CHECK(rcluster_worker_id(&id));
    CHECK(rcluster_worker_listen(w, "127.0.0.1", port, 5000, &l));
    for (;;) {
        int fd;
        int rc = rcluster_listener_accept(l, -1, &fd);
        /* Asked to leave (the primary shuts down): RCLUSTER_E_LEAVING, not CLOSED. */
        if (rc == RCLUSTER_E_LEAVING) break;
        CHECK(rc);
        char buf[256];
        ssize_t n = read(fd, buf, sizeof buf);
        (void)n;
        int len = snprintf(buf, sizeof buf, "worker %u pid %d\n", id, (int)getpid());
        if (write(fd, buf, (size_t)len) != len) perror("write");
        close(fd);
    }
    CHECK(rcluster_listener_close(l));
    CHECK(rcluster_worker_close(w));
    _exit(0);
}

static unsigned ask(uint16_t port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); exit(1); }
    if (write(s, "hi", 2) != 2) { perror("write"); exit(1); }
    char buf[128] = {0};
    ssize_t n = read(s, buf, sizeof buf - 1);
    close(s);
    unsigned id = 0;
    if (n <= 0 || sscanf(buf, "worker %u", &id) != 1) { fprintf(stderr, "bad reply %s\n", buf); exit(1); }
    return id;
}

int main(void) {
    rcluster_primary *p;
    rcluster_primary_options o;
    CHECK(rcluster_primary_options_init2(&o, sizeof o));
    o.stop_timeout_ms = 3000;
    CHECK(rcluster_primary_new2(&o, &p));
    uint16_t port;
    CHECK(rcluster_primary_listen(p, "127.0.0.1", 0, &port));
    for (int i = 0; i < 2; i++) {
        uint32_t id;
        int32_t pid;
        CHECK(rcluster_primary_fork_raw(p, &id, &pid));
        if (pid == 0) {
            CHECK(rcluster_primary_free(p)); /* dead handle in the child */
            serve_as_worker(port);
        }
    }
    /* Now the loop thread starts: a third raw fork must be refused. */
    rcluster_event ev;
    int listening = 0;
    while (listening < 2) {
        CHECK(rcluster_primary_wait_event(p, &ev, 10000));
        if (ev.kind == RCLUSTER_EVENT_LISTENING) listening++;
        rcluster_event_release(&ev);
    }
    if (rcluster_primary_fork_raw(p, NULL, NULL) != RCLUSTER_E_STATE) {
        fprintf(stderr, "raw fork with the loop thread running must be refused\n");
        return 1;
    }
    unsigned seen[3] = {0};
    for (int i = 0; i < 6; i++) {
        unsigned id = ask(port);
        if (id >= 1 && id <= 2) seen[id]++;
    }
    if (seen[1] != 3 || seen[2] != 3) {
        fprintf(stderr, "rr over raw-forked workers: %u / %u\n", seen[1], seen[2]);
        return 1;
    }
    CHECK(rcluster_primary_shutdown(p, 3000));
    int exits = 0;
    for (;;) {
        CHECK(rcluster_primary_wait_event(p, &ev, 10000));
        int kind = ev.kind;
        if (kind == RCLUSTER_EVENT_EXIT && ev.exit_code == 0) exits++;
        rcluster_event_release(&ev);
        if (kind == RCLUSTER_EVENT_SHUTDOWN) break;
    }
    CHECK(rcluster_primary_free(p));
    if (exits != 2) { fprintf(stderr, "expected 2 clean exits, got %d\n", exits); return 1; }
    printf("raw fork: 2 workers served 6 requests and exited cleanly\n");
    return 0;
}

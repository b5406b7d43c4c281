/* The seed's example in C: the primary listens, hands the listening socket
 * to two workers with a message (`child.send('server', server)`) and closes
 * its own copy; each worker serves one client on the socket it received,
 * then closes it. The primary then checks that both workers answered and
 * that nobody holds the socket any more. Exit 0 on success. */
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

/* The worker: wait for "server" with the listening fd, serve one client. */
static int run_worker(void) {
    rcluster_worker *w;
    uint32_t id;
    CHECK(rcluster_worker_open(&w));
    CHECK(rcluster_worker_id(&id));
    for (;;) {
        rcluster_event ev;
        CHECK(rcluster_worker_wait_event(w, &ev, 30000));
        if (ev.kind != RCLUSTER_EVENT_MESSAGE) {
            int kind = ev.kind;
            rcluster_event_release(&ev);
            if (kind == RCLUSTER_EVENT_DISCONNECT || kind == RCLUSTER_EVENT_PRIMARY_GONE) break;
            continue;
        }
        size_t nfds = 0;
        int server = -1;
        CHECK(rcluster_event_fd_count(&ev, &nfds));
        if (ev.len == 6 && memcmp(ev.data, "server", 6) == 0 && nfds == 1) {
            CHECK(rcluster_event_take_fd(&ev, 0, &server)); /* ours now */
        }
        rcluster_event_release(&ev);
        if (server < 0) continue;
        int conn = accept(server, NULL, NULL);
        if (conn < 0) { perror("accept"); return 1; }
        char line[64];
        int len = snprintf(line, sizeof line, "worker %u\n", id);
        if (write(conn, line, (size_t)len) != len) { perror("write"); return 1; }
        close(conn);
        close(server);
        CHECK(rcluster_worker_send(w, "served", 6));
    }
    rcluster_worker_close(w);
    return 0;
}

static int connect_to(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { close(fd); return -1; }
    return fd;
}

static rcluster_event wait_for(rcluster_primary *p, int kind) {
    for (;;) {
        rcluster_event ev;
        CHECK(rcluster_primary_wait_event(p, &ev, 20000));
        if (ev.kind == kind) return ev;
        /* Before the shutdown, no worker may fail or leave. */
        if (kind != RCLUSTER_EVENT_SHUTDOWN &&
            (ev.kind == RCLUSTER_EVENT_WORKER_ERROR || ev.kind == RCLUSTER_EVENT_EXIT)) {
            fprintf(stderr, "unexpected event %d (exit %d signal %d): %.*s\n", ev.kind, ev.exit_code, ev.signal, (int)ev.len, (const char *)ev.data);
            exit(1);
        }
        rcluster_event_release(&ev);
    }
}

int main(void) {
    if (rcluster_is_worker()) return run_worker();

    rcluster_primary_options o;
    rcluster_primary *p;
    CHECK(rcluster_primary_options_init2(&o, sizeof o));
    o.stop_timeout_ms = 3000;
    CHECK(rcluster_primary_new2(&o, &p));

    /* The primary listens (port 0: the kernel picks). */
    int server = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    if (bind(server, (struct sockaddr *)&a, sizeof a) != 0 || listen(server, 16) != 0 ||
        getsockname(server, (struct sockaddr *)&a, &alen) != 0) {
        perror("listen");
        return 1;
    }
    uint16_t port = ntohs(a.sin_port);

    uint32_t ids[2];
    for (int i = 0; i < 2; i++) CHECK(rcluster_primary_fork(p, NULL, &ids[i], NULL));
    for (int i = 0; i < 2; i++) {
        rcluster_event ev = wait_for(p, RCLUSTER_EVENT_ONLINE);
        rcluster_event_release(&ev);
    }
    /* child.send('server', server) to each, then close our copy: the
     * library duplicated it, so closing at once is fine. */
    for (int i = 0; i < 2; i++) CHECK(rcluster_primary_send_fds(p, ids[i], "server", 6, &server, 1));
    close(server);

    int seen[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        int fd = connect_to(port);
        if (fd < 0) { perror("connect"); return 1; }
        char buf[64] = {0};
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        unsigned id = 0;
        if (n <= 0 || sscanf(buf, "worker %u", &id) != 1) { fprintf(stderr, "bad answer %s\n", buf); return 1; }
        for (int j = 0; j < 2; j++) if (ids[j] == id) seen[j]++;
        rcluster_event ev = wait_for(p, RCLUSTER_EVENT_MESSAGE);
        rcluster_event_release(&ev);
    }
    if (seen[0] != 1 || seen[1] != 1) { fprintf(stderr, "not both workers served: %d %d\n", seen[0], seen[1]); return 1; }
    int fd = connect_to(port);
    if (fd >= 0) { fprintf(stderr, "the listening socket is still open somewhere\n"); return 1; }

    CHECK(rcluster_primary_shutdown(p, 3000));
    rcluster_event ev = wait_for(p, RCLUSTER_EVENT_SHUTDOWN);
    rcluster_event_release(&ev);
    CHECK(rcluster_primary_free(p));
    printf("send_handle: both workers served on the handed socket\n");
    return 0;
}

/* minimal.c: the smallest rcluster server. Two workers answer HTTP on
 * 127.0.0.1:$PORT (default 8080), one request per connection; SIGTERM or
 * SIGINT stops it gracefully, SIGHUP replaces the workers one by one.
 * Build: make examples (target/release/examples/minimal_c). */
#define _POSIX_C_SOURCE 200809L
#include <rcluster.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int serve(void) {
    rcluster_worker *w;
    rcluster_listener *l;
    uint32_t id;
    const char *port = getenv("PORT");
    int fd, rc = rcluster_worker_open(&w);
    if (rc || (rc = rcluster_worker_id(&id)) || (rc = rcluster_worker_listen(w, "127.0.0.1", port ? atoi(port) : 8080, 5000, &l)))
        return rc == RCLUSTER_E_LEAVING ? 0 : (fprintf(stderr, "worker: %s\n", rcluster_last_error()), 1);
    while ((rc = rcluster_listener_accept(l, -1, &fd)) == RCLUSTER_OK) {
        char request[4096], body[32], reply[128];
        if (read(fd, request, sizeof request) > 0) {
            int len = snprintf(body, sizeof body, "hello from worker %u\n", (unsigned)id);
            int n = snprintf(reply, sizeof reply, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                             "Connection: close\r\n\r\n%s", len, body);
            if (write(fd, reply, (size_t)n) < 0) perror("write");
        }
        close(fd);
    }
    rcluster_listener_close(l); /* LEAVING: asked to go; CLOSED: the primary is gone */
    rcluster_worker_close(w);
    return rc == RCLUSTER_E_LEAVING || rc == RCLUSTER_E_CLOSED ? 0 : 1;
}

int main(void) {
    if (rcluster_is_worker())
        return serve();
    rcluster_primary_options o;
    rcluster_primary *p;
    rcluster_event ev;
    rcluster_primary_options_init2(&o, sizeof o); /* argv NULL: workers run this program */
    o.handle_signals = 1;                         /* SIGTERM/SIGINT: stop, SIGHUP: reload */
    if (rcluster_primary_new2(&o, &p) || rcluster_primary_fork(p, NULL, NULL, NULL)
        || rcluster_primary_fork(p, NULL, NULL, NULL))
        return fprintf(stderr, "primary: %s\n", rcluster_last_error()), 1;
    for (int kind = 0; kind != RCLUSTER_EVENT_SHUTDOWN;) {
        if (rcluster_primary_wait_event(p, &ev, -1) != RCLUSTER_OK)
            continue;
        kind = ev.kind;
        printf("%s worker=%u port=%u\n", rcluster_event_name(kind), (unsigned)ev.worker_id, (unsigned)ev.port);
        fflush(stdout);
        rcluster_event_release(&ev);
    }
    rcluster_primary_free(p);
    return 0;
}

/* Built against rcluster 0.1's header (this folder), run on the current
 * library: the options struct of 0.1 (no struct_size) must still be read
 * field by field where 0.1 put them, and its init must write no more than
 * 0.1's sizeof. A worker (this program again, started through the argv and
 * env options) reports what it got, so the strings are checked end to end. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <rcluster.h>

static int failures;
#define EXPECT(cond, ...) do { if (!(cond)) { failures++; printf("FAIL %s:%d: ", __FILE__, __LINE__); \
    printf(__VA_ARGS__); printf(" (%s)\n", rcluster_last_error()); } } while (0)

static int worker(void) {
    rcluster_worker *w = NULL;
    if (rcluster_worker_open(&w) != RCLUSTER_OK) return 3;
    const char *mark = getenv("ABI_MARK");
    char msg[128];
    snprintf(msg, sizeof msg, "%s", mark ? mark : "(unset)");
    int rc = rcluster_worker_send(w, msg, strlen(msg));
    rcluster_worker_close(w);
    return rc == RCLUSTER_OK ? 0 : 4;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "worker") == 0) return worker();

    /* init writes 0.1's sizeof and no byte more. */
    union { rcluster_primary_options o; unsigned char bytes[sizeof(rcluster_primary_options) + 64]; } buf;
    memset(&buf, 0xAB, sizeof buf);
    EXPECT(rcluster_primary_options_init(&buf.o) == RCLUSTER_OK, "init");
    for (size_t i = sizeof(rcluster_primary_options); i < sizeof buf; i++)
        if (buf.bytes[i] != 0xAB) { EXPECT(0, "init wrote byte %zu, past 0.1's sizeof %zu", i, sizeof(rcluster_primary_options)); break; }
    rcluster_primary_options *o = &buf.o;
    EXPECT(o->argv == NULL && o->env == NULL && o->cwd == NULL, "string defaults");
    EXPECT(o->policy == RCLUSTER_POLICY_RR, "policy default %d", o->policy);
    EXPECT(o->max_unacked == 8 && o->max_pending == 1024 && o->backlog == 511, "dispatch defaults");
    EXPECT(o->restart == 1 && o->own_process_group == 1 && o->restart_backoff == 2.0, "supervision defaults");
    EXPECT(o->heartbeat_timeout_ms == 30000 && o->ack_timeout_ms == 30000, "deadline defaults");
    EXPECT(o->max_message == RCLUSTER_MAX_MESSAGE && o->allow_nested == 0, "last fields' defaults");

    /* A bad value in each of a first, a middle and a last field is refused:
     * new reads each where 0.1 put it. */
    rcluster_primary *p = NULL;
    const char *bad_env[] = {"NOEQUALS", NULL};
    rcluster_primary_options_init(o);
    o->env = bad_env;
    EXPECT(rcluster_primary_new(o, &p) == RCLUSTER_E_INVAL && p == NULL, "env (2nd field) read");
    rcluster_primary_options_init(o);
    o->policy = 99;
    EXPECT(rcluster_primary_new(o, &p) == RCLUSTER_E_INVAL && p == NULL, "policy read");
    rcluster_primary_options_init(o);
    o->restart_backoff = 0.5;
    EXPECT(rcluster_primary_new(o, &p) == RCLUSTER_E_INVAL && p == NULL, "restart_backoff read");

    /* argv and env reach a real worker. */
    const char *wargv[] = {argv[0], "worker", NULL};
    const char *wenv[] = {"ABI_MARK=from-0.1-options", NULL};
    rcluster_primary_options_init(o);
    o->argv = wargv;
    o->env = wenv;
    o->restart = 0;
    EXPECT(rcluster_primary_new(o, &p) == RCLUSTER_OK, "new");
    if (p == NULL) return 1;
    uint32_t id = 0;
    EXPECT(rcluster_primary_fork(p, NULL, &id, NULL) == RCLUSTER_OK, "fork");
    int got_message = 0, exited = 0;
    for (int i = 0; i < 100 && !(got_message && exited); i++) {
        rcluster_event ev;
        memset(&ev, 0, sizeof ev);
        int rc = rcluster_primary_wait_event(p, &ev, 200);
        if (rc == RCLUSTER_E_TIMEOUT) continue;
        if (rc != RCLUSTER_OK) { EXPECT(0, "wait_event %d", rc); break; }
        if (ev.kind == RCLUSTER_EVENT_MESSAGE) {
            got_message = 1;
            EXPECT(ev.len == strlen("from-0.1-options") && memcmp(ev.data, "from-0.1-options", ev.len) == 0,
                   "worker got env %.*s", (int)ev.len, (const char *)ev.data);
        }
        if (ev.kind == RCLUSTER_EVENT_EXIT) {
            exited = 1;
            EXPECT(ev.exit_code == 0, "worker exit code %d", ev.exit_code);
        }
        rcluster_event_release(&ev);
    }
    EXPECT(got_message && exited, "message %d, exit %d within 20 s", got_message, exited);
    rcluster_primary_shutdown(p, 1000);
    rcluster_primary_free(p);
    if (failures) return 1;
    printf("ok: 0.1's options struct read field by field; argv and env reached the worker\n");
    return 0;
}

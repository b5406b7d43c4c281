/*
 * prefork.c: the benchmark's plain prefork contender (bench/tmp/prefork), no
 * rcluster at all: the parent binds and listens, forks N children, and each
 * child serves with the same HTTP engine as the rcluster contender
 * (http_engine.c), taking connections with accept4(2) on the one shared,
 * non-blocking listening socket (the nginx/gunicorn model: the kernel picks
 * which sleeping child wakes up). Same command line and ready line as the C
 * example (--policy is accepted and ignored); SIGTERM or SIGINT stops it.
 */

#define _GNU_SOURCE /* accept4, SOCK_CLOEXEC */

#include "http_engine.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* Up to `cap` accept4s on the shared socket: the engine takes batches the
 * same way from both contenders. -1 never: a prefork child serves until killed. */
static int take(void *ctx, int *fds, size_t cap)
{
    int listen_fd = *(int *)ctx;
    size_t count = 0;
    while (count < cap) {
        int c = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0) {
            fds[count++] = c;
        } else if (errno != EINTR && errno != ECONNABORTED) {
            break; /* EAGAIN: none left; anything else: try again on the next wake-up */
        }
    }
    return (int)count;
}

int main(int argc, char **argv)
{
    struct bench_options opts = bench_parse_args(argc, argv);

    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opts.port)};
    if (inet_pton(AF_INET, opts.host, &addr.sin_addr) != 1) {
        fprintf(stderr, "prefork: --host must be an IPv4 address\n");
        return 2;
    }
    int listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&addr, sizeof addr) < 0
        || listen(listen_fd, 511) < 0) { /* 511: rcluster's (and Node's) default backlog */
        perror("prefork: listen");
        return 1;
    }
    socklen_t len = sizeof addr;
    getsockname(listen_fd, (struct sockaddr *)&addr, &len);

    /* The parent waits for SIGTERM/SIGINT with sigwait; children get the default actions back. */
    sigset_t stop, old;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigprocmask(SIG_BLOCK, &stop, &old);

    pid_t *children = calloc(opts.workers, sizeof *children);
    for (unsigned i = 0; i < opts.workers; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            perror("prefork: fork");
            break;
        }
        if (pid == 0) {
            sigprocmask(SIG_SETMASK, &old, NULL);
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            struct http_source source = {.ctx = &listen_fd, .accept_fd = listen_fd, .control_fd = -1, .take = take};
            exit(http_serve(&source, i + 1));
        }
        children[i] = pid;
    }
    printf("ready http://%s:%u workers=%u policy=prefork\n", opts.host, (unsigned)ntohs(addr.sin_port), opts.workers);
    fflush(stdout);

    int sig = 0;
    sigwait(&stop, &sig);
    for (unsigned i = 0; i < opts.workers; i++)
        if (children[i] > 0)
            kill(children[i], SIGTERM);
    for (unsigned i = 0; i < opts.workers; i++)
        if (children[i] > 0)
            waitpid(children[i], NULL, 0);
    free(children);
    return 0;
}

/* rendezvous.c: the ranks of a job started without mpirun (a Kubernetes indexed Job, torchrun-style variables)
 * meet at MASTER_ADDR:MASTER_PORT. Rank 0 listens there; every other rank connects, retrying until the timeout
 * (pods start in any order). Both sides prove that they hold the job's secret (job_token.c); then the rank sends a
 * hello: a magic word, the world size, its rank and its blob. Rank 0 checks each hello, then answers every rank
 * with the table of all blobs in rank order and the address each rank connected from, which is where the others
 * can reach it. A connection that fails either check is refused, named in the log, and the rendezvous goes on. */
#include "comm_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define HELLO_MAGIC 0x736f7672656e6476ULL /* "sovrendv" */

typedef struct hello {
    uint64_t magic;
    uint32_t world_size, rank;
    uint64_t blob_bytes;
} hello;

/* ---- sockets with a deadline ---- */

static sov_status tcp_io(int fd, uint8_t *p, size_t n, int sending, double deadline, const char *what) {
    while (n) {
        double left = deadline - sov_now();
        struct pollfd pfd = {.fd = fd, .events = sending ? POLLOUT : POLLIN};
        if (left <= 0)
            return sov_fail(SOV_ERR_COMM, "%s: timed out", what);
        int r = poll(&pfd, 1, (int)(left * 1000) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return sov_fail(SOV_ERR_COMM, "%s: poll: %s", what, strerror(errno));
        if (r == 0)
            continue;
        ssize_t k = sending ? send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT) : recv(fd, p, n, MSG_DONTWAIT);
        if (k < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
            continue;
        if (k < 0)
            return sov_fail(SOV_ERR_COMM, "%s: %s", what, strerror(errno));
        if (k == 0)
            return sov_fail(SOV_ERR_COMM, "%s: the peer closed the connection (its process ended?)", what);
        p += k;
        n -= (size_t)k;
    }
    return SOV_OK;
}

sov_status sov_tcp_send(int fd, const void *buf, size_t n, double deadline, const char *what) {
    return tcp_io(fd, (uint8_t *)(uintptr_t)buf, n, 1, deadline, what); /* only read when sending */
}

sov_status sov_tcp_recv(int fd, void *buf, size_t n, double deadline, const char *what) {
    return tcp_io(fd, buf, n, 0, deadline, what);
}

void sov_tcp_tune(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* MASTER_PORT, and MASTER_ADDR (the host rank 0 runs on), checked to be set. */
static sov_status master_env(const char **host, uint16_t *port) {
    const char *h = getenv("MASTER_ADDR"), *p = getenv("MASTER_PORT");
    long v = 0;
    if (!h || !*h || !p || !*p)
        return sov_fail(SOV_ERR_INVALID, "a job started without mpirun meets at MASTER_ADDR:MASTER_PORT, and %s is "
                        "not set (a Kubernetes indexed Job sets them from its headless service; see "
                        "docs/kubernetes.md)", !h || !*h ? "MASTER_ADDR" : "MASTER_PORT");
    SOV_CHECK(sov_parse_long("MASTER_PORT", p, 1, 65535, &v));
    *host = h;
    *port = (uint16_t)v;
    return SOV_OK;
}

/* host:port as an IPv4 address; 0 when the name does not resolve (yet: a pod's DNS record appears with it). */
static int resolve(const char *host, uint16_t port, struct sockaddr_in *out, char *why, size_t cap) {
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int err = getaddrinfo(host, NULL, &hints, &res);
    if (err != 0) {
        snprintf(why, cap, "cannot resolve %s: %s", host, gai_strerror(err));
        return 0;
    }
    *out = *(struct sockaddr_in *)res->ai_addr;
    out->sin_port = htons(port);
    freeaddrinfo(res);
    return 1;
}

/* A socket listening on addr (port 0: any free port); its address in *bound. */
sov_status sov_tcp_listen(const struct sockaddr_in *addr, int backlog, int *fd_out, struct sockaddr_in *bound) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0)
        return sov_fail(SOV_ERR_COMM, "socket: %s", strerror(errno));
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t len = sizeof *bound;
    if (bind(fd, (const struct sockaddr *)addr, sizeof *addr) != 0 || listen(fd, backlog) != 0 ||
        getsockname(fd, (struct sockaddr *)bound, &len) != 0) {
        int e = errno;
        close(fd);
        return sov_fail(SOV_ERR_COMM, "listening on port %d: %s", ntohs(addr->sin_port), strerror(e));
    }
    *fd_out = fd;
    return SOV_OK;
}

/* One connection attempt that gives up after `wait_s` (a dropped SYN must not outlast the deadline); the socket
 * stays non-blocking (every transfer polls). Returns the fd, or -1 with errno. */
static int connect_once(const struct sockaddr_in *addr, double wait_s) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) != 0) {
        int err = errno;
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        socklen_t len = sizeof err;
        if (err != EINPROGRESS || poll(&pfd, 1, (int)(wait_s * 1000) + 1) != 1 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            close(fd);
            errno = err == EINPROGRESS ? ETIMEDOUT : err;
            return -1;
        }
    }
    sov_tcp_tune(fd);
    return fd;
}

/* Connects to host:port, resolving the name again and retrying while it does not resolve or nobody listens (the
 * peer's pod is not up, or came back at another address), until the deadline. */
static sov_status connect_host(const char *host, uint16_t port, double deadline, const char *what, int *fd_out,
                               struct sockaddr_in *reached) {
    char why[300] = "";
    for (int attempt = 1;; attempt++) {
        double left = deadline - sov_now();
        if (resolve(host, port, reached, why, sizeof why)) {
            int fd = connect_once(reached, left < 1.0 ? (left > 0 ? left : 0.01) : 1.0);
            if (fd >= 0) {
                *fd_out = fd;
                return SOV_OK;
            }
            snprintf(why, sizeof why, "cannot connect to %s:%u: %s", host, port, strerror(errno));
        }
        if (sov_now() > deadline)
            return sov_fail(SOV_ERR_COMM, "%s: %s (gave up after %d attempts: is that rank's process or pod up?)",
                            what, why, attempt);
        struct timespec pause = {0, 100 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
}

sov_status sov_tcp_connect(const struct sockaddr_in *addr, double deadline, const char *what, int *fd_out) {
    struct sockaddr_in reached;
    return connect_host(inet_ntoa(addr->sin_addr), ntohs(addr->sin_port), deadline, what, fd_out, &reached);
}

/* "3, 5, 6": the ranks that have not joined (fds[r] == 0). */
static void list_missing(const int *fds, int size, char *out, size_t cap) {
    size_t at = 0;
    out[0] = '\0';
    for (int r = 1; r < size && at + 16 < cap; r++)
        if (!fds[r])
            at += (size_t)snprintf(out + at, cap - at, "%s%d", at ? ", " : "", r);
}

/* Rank 0: one hello from each other rank, checked, then the table back to every one. */
static sov_status serve(const sov_world *w, int lfd, const void *mine, size_t bytes, uint8_t *all,
                        struct sockaddr_in *addrs, double deadline) {
    int *fds = sov_calloc((size_t)w->size, sizeof *fds);
    if (!fds)
        return SOV_ERR_NOMEM;
    sov_status st = SOV_OK;
    memcpy(all, mine, bytes);
    int joined = 1;
    while (st == SOV_OK && joined < w->size) {
        struct pollfd pfd = {.fd = lfd, .events = POLLIN};
        double left = deadline - sov_now();
        if (left <= 0) {
            char missing[512];
            list_missing(fds, w->size, missing, sizeof missing);
            st = sov_fail(SOV_ERR_COMM, "rank 0: rendezvous: %d of %d ranks joined within the timeout; missing: %s",
                          joined, w->size, missing);
            break;
        }
        int ready = poll(&pfd, 1, (int)(left * 1000) + 1);
        if (ready < 0 && errno != EINTR) {
            st = sov_fail(SOV_ERR_COMM, "rank 0: rendezvous: poll: %s", strerror(errno));
            break;
        }
        if (ready <= 0)
            continue;
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        int fd = accept4(lfd, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        sov_tcp_tune(fd);
        hello h = {0};
        double hello_by = sov_now() + 5.0 < deadline ? sov_now() + 5.0 : deadline; /* a silent stray blocks no one long */
        char who[96];
        snprintf(who, sizeof who, "rank 0: rendezvous: a connection from %s:%u", inet_ntoa(peer.sin_addr),
                 ntohs(peer.sin_port));
        if (sov_auth_accept(fd, hello_by, who) != SOV_OK) {
            sov_log_error("refused: %s", sov_last_error());
            close(fd);
            continue;
        }
        if (sov_tcp_recv(fd, &h, sizeof h, hello_by, "rank 0: rendezvous: reading a hello") != SOV_OK ||
            h.magic != HELLO_MAGIC || h.world_size != (uint32_t)w->size || h.rank == 0 || h.rank >= (uint32_t)w->size ||
            h.blob_bytes != bytes || fds[h.rank]) {
            sov_log_error("rank 0: rendezvous: ignoring a connection from %s claiming rank %u of a %u-rank job (this job "
                          "has %d ranks; a stray, a rank that joined twice, or a pod with another WORLD_SIZE)",
                          inet_ntoa(peer.sin_addr), h.rank, h.world_size, w->size);
            close(fd);
            continue;
        }
        st = sov_tcp_recv(fd, all + (size_t)h.rank * bytes, bytes, deadline, "rank 0: rendezvous: reading a blob");
        fds[h.rank] = fd;
        addrs[h.rank] = peer;
        joined++;
    }
    for (int r = 1; st == SOV_OK && r < w->size; r++) {
        st = sov_tcp_send(fds[r], all, (size_t)w->size * bytes, deadline, "rank 0: rendezvous: answering");
        if (st == SOV_OK)
            st = sov_tcp_send(fds[r], addrs, (size_t)w->size * sizeof *addrs, deadline, "rank 0: rendezvous: answering");
    }
    for (int r = 1; r < w->size; r++)
        if (fds[r])
            close(fds[r]);
    free(fds);
    return st;
}

/* Another rank: connect, say hello, read the table. */
static sov_status join(const sov_world *w, const char *host, uint16_t port, const void *mine, size_t bytes,
                       uint8_t *all, struct sockaddr_in *addrs, double deadline) {
    char what[128];
    snprintf(what, sizeof what, "rank %d: rendezvous with rank 0 at MASTER_ADDR:MASTER_PORT", w->rank);
    int fd;
    struct sockaddr_in master;
    SOV_CHECK(connect_host(host, port, deadline, what, &fd, &master));
    hello h = {.magic = HELLO_MAGIC, .world_size = (uint32_t)w->size, .rank = (uint32_t)w->rank, .blob_bytes = bytes};
    sov_status st = sov_auth_connect(fd, deadline, what);
    if (st == SOV_OK)
        st = sov_tcp_send(fd, &h, sizeof h, deadline, what);
    if (st == SOV_OK)
        st = sov_tcp_send(fd, mine, bytes, deadline, what);
    if (st == SOV_OK)
        st = sov_tcp_recv(fd, all, (size_t)w->size * bytes, deadline, what);
    if (st == SOV_OK)
        st = sov_tcp_recv(fd, addrs, (size_t)w->size * sizeof *addrs, deadline, what);
    close(fd);
    addrs[0] = master; /* rank 0 is where this rank reached it */
    return st;
}

int sov_world_without_mpi(const sov_world *w) { return w->size > 1 && strcmp(w->source, "openmpi") != 0; }

sov_status sov_rendezvous(const sov_world *w, const void *mine, size_t bytes, void *all, struct sockaddr_in *addrs,
                          double timeout_s) {
    const char *host = NULL;
    uint16_t port = 0;
    SOV_CHECK(master_env(&host, &port));
    SOV_CHECK(sov_job_secret_load());
    double deadline = sov_now() + timeout_s;
    memset(addrs, 0, (size_t)w->size * sizeof *addrs);
    if (w->rank != 0)
        return join(w, host, port, mine, bytes, all, addrs, deadline);
    /* rank 0 listens on every interface: it need not resolve its own name (its DNS record may not exist yet) */
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)},
                       bound;
    int lfd;
    SOV_CHECK(sov_tcp_listen(&any, w->size, &lfd, &bound));
    sov_status st = serve(w, lfd, mine, bytes, all, addrs, deadline);
    close(lfd);
    return st;
}

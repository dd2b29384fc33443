/* comm_tcp.c: collectives over TCP between ranks started without mpirun (Kubernetes indexed Jobs, torchrun-style
 * variables): the CPU backend for pods that share no MPI job.
 *
 * Set-up: each rank listens on a free port and meets the others at MASTER_ADDR:MASTER_PORT (rendezvous.c), which
 * tells every rank where the others are; then each connects to the next rank of a ring and accepts the previous.
 * Allreduce is the ring algorithm: a reduce-scatter in which every block is reduced along one fixed path, then an
 * allgather of the finished blocks, so every rank gets the same bits, run after run. bf16 and f16 are summed in
 * f32 and rounded once, as the other backends promise: they travel in f32 while summed, and each finished block
 * is rounded by its owner before it is gathered. Every transfer has the collective's
 * deadline; a rank that stops sending, or whose process ends, is named. */
#include "comm_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BROADCAST_PIECE ((size_t)1 << 20)

typedef struct tcp_state {
    int next_fd, prev_fd; /* to rank + 1 (sent to), from rank - 1 (received from) */
    int next, prev;       /* their ranks */
    uint8_t *work, *scratch; /* the accumulation buffer of a reduction, and one incoming block */
    size_t work_cap, scratch_cap;
} tcp_state;

/* ---- transfers ---- */

/* Before sleeping in poll() for a step of a collective, the sockets are retried for this long: on a ring the peer's
 * bytes are usually microseconds away, and a wakeup from poll() cost tens of microseconds per step here (a 4 KiB
 * allreduce of 2 ranks took 71 us, MPI_Allreduce over TCP 22 us). */
#define SPIN_S 50e-6

/* One non-blocking attempt each way. Returns 1 when some bytes moved, 0 when both would block, -1 when a connection
 * broke (the error is set). */
static int move_once(sov_comm *c, const sov_op *op, const uint8_t **sp, size_t *sbytes, uint8_t **rp,
                     size_t *rbytes) {
    tcp_state *s = c->impl;
    int moved = 0;
    for (int k = 0; k < 2; k++) {
        if (k == 0 ? !*sbytes : !*rbytes)
            continue;
        ssize_t n = k == 0 ? send(s->next_fd, *sp, *sbytes, MSG_NOSIGNAL | MSG_DONTWAIT)
                           : recv(s->prev_fd, *rp, *rbytes, MSG_DONTWAIT);
        if (n > 0 && k == 0) {
            *sp += n;
            *sbytes -= (size_t)n;
            moved = 1;
        } else if (n > 0) {
            *rp += n;
            *rbytes -= (size_t)n;
            moved = 1;
        } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            sov_fail(SOV_ERR_COMM, "rank %d: tcp %s #%llu: the connection to rank %d broke (%s): its process ended "
                     "or failed", c->rank, sov_op_name(op->kind), (unsigned long long)op->seq, k == 0 ? s->next : s->prev,
                     n == 0 ? "closed" : strerror(errno));
            return -1;
        }
    }
    return moved;
}

/* Sends sbytes to next while receiving rbytes from prev, until both are done or the deadline passes. */
static sov_status exchange(sov_comm *c, const sov_op *op, const void *sbuf, size_t sbytes, void *rbuf,
                           size_t rbytes, double deadline) {
    tcp_state *s = c->impl;
    const uint8_t *sp = sbuf;
    uint8_t *rp = rbuf;
    double spin_end = 0;
    while (sbytes || rbytes) {
        int moved = move_once(c, op, &sp, &sbytes, &rp, &rbytes);
        if (moved < 0)
            return SOV_ERR_COMM;
        double now = sov_now();
        if (moved || !(sbytes || rbytes)) {
            spin_end = 0;
            continue;
        }
        if (spin_end == 0)
            spin_end = now + SPIN_S;
        if (now < spin_end) { /* yielding: with more ranks than cores, the rank being waited for may need this core */
            sched_yield();
            continue;
        }
        spin_end = 0;
        double left = deadline - now;
        if (left <= 0)
            return sov_fail(SOV_ERR_COMM, "rank %d: tcp %s #%llu did not complete within %.0f s (--comm-timeout): "
                            "waiting for rank %d", c->rank, sov_op_name(op->kind), (unsigned long long)op->seq,
                            c->timeout_s, rbytes ? s->prev : s->next);
        struct pollfd pfd[2] = {{.fd = sbytes ? s->next_fd : -1, .events = POLLOUT},
                                {.fd = rbytes ? s->prev_fd : -1, .events = POLLIN}};
        if (poll(pfd, 2, (int)(left * 1000) + 1) < 0 && errno != EINTR)
            return sov_fail(SOV_ERR_COMM, "rank %d: tcp %s: poll: %s", c->rank, sov_op_name(op->kind), strerror(errno));
    }
    return SOV_OK;
}

/* Elements [*off, *off + *n) of block i when count elements are cut into size blocks. */
static void block(size_t count, int size, int i, size_t *off, size_t *n) {
    size_t lo = count * (size_t)i / (size_t)size, hi = count * (size_t)(i + 1) / (size_t)size;
    *off = lo;
    *n = hi - lo;
}

static int ring(int i, int size) { return ((i % size) + size) % size; }

static sov_status grow(uint8_t **buf, size_t *cap, size_t bytes) {
    if (bytes <= *cap)
        return SOV_OK;
    free(*buf);
    *cap = 0;
    if (!(*buf = sov_malloc(bytes)))
        return SOV_ERR_NOMEM;
    *cap = bytes;
    return SOV_OK;
}

/* ---- the ring ---- */

/* Reduce-scatter over work (count elements of acc): after it, block `rank` holds the op over all ranks. */
static sov_status ring_reduce_scatter(sov_comm *c, const sov_op *op, uint8_t *work, size_t count, sov_dtype acc,
                                      sov_redop rop, double deadline) {
    tcp_state *s = c->impl;
    size_t esz = sov_dtype_size(acc);
    for (int step = 0; step < c->size - 1; step++) {
        size_t so, sn, ro, rn;
        block(count, c->size, ring(c->rank - 1 - step, c->size), &so, &sn);
        block(count, c->size, ring(c->rank - 2 - step, c->size), &ro, &rn);
        SOV_CHECK(exchange(c, op, work + so * esz, sn * esz, s->scratch, rn * esz, deadline));
        const void *in[2] = {work + ro * esz, s->scratch};
        sov_reduce(work + ro * esz, in, 2, rn, acc, rop, 1);
    }
    return SOV_OK;
}

/* Allgather over work: block `rank` is this rank's; after it, every block is everyone's. */
static sov_status ring_allgather(sov_comm *c, const sov_op *op, uint8_t *work, size_t count, size_t esz,
                                 double deadline) {
    for (int step = 0; step < c->size - 1; step++) {
        size_t so, sn, ro, rn;
        block(count, c->size, ring(c->rank - step, c->size), &so, &sn);
        block(count, c->size, ring(c->rank - step - 1, c->size), &ro, &rn);
        SOV_CHECK(exchange(c, op, work + so * esz, sn * esz, work + ro * esz, rn * esz, deadline));
    }
    return SOV_OK;
}

/* bf16 and f16 are summed in f32; the others in their own type. */
static sov_dtype accumulator(sov_dtype dt) { return dt == SOV_BF16 || dt == SOV_F16 ? SOV_F32 : dt; }

/* The op over every rank's `elems` elements of buf (in acc), in place: afterwards block `rank` of buf is final
 * (averages divided by the ranks). */
static sov_status reduce_in_place(sov_comm *c, const sov_op *op, uint8_t *buf, size_t elems, sov_dtype acc,
                                  double deadline) {
    tcp_state *s = c->impl;
    size_t esz = sov_dtype_size(acc);
    SOV_CHECK(grow(&s->scratch, &s->scratch_cap, (elems / (size_t)c->size + 1) * esz + 1));
    sov_redop rop = op->redop == SOV_AVG ? SOV_SUM : op->redop;
    SOV_CHECK(ring_reduce_scatter(c, op, buf, elems, acc, rop, deadline));
    if (op->redop == SOV_AVG) { /* divided once, by its owner */
        size_t off, n;
        block(elems, c->size, c->rank, &off, &n);
        const void *in[1] = {buf + off * esz};
        sov_reduce(buf + off * esz, in, 1, n, acc, SOV_AVG, c->size);
    }
    return SOV_OK;
}

/* The op over every rank's `elems` elements of send, in the accumulation type, in s->work: afterwards block `rank`
 * of work is final. */
static sov_status reduce_into_work(sov_comm *c, const sov_op *op, const void *send, size_t elems, sov_dtype *acc_out,
                                   double deadline) {
    tcp_state *s = c->impl;
    sov_dtype acc = accumulator(op->dtype);
    SOV_CHECK(grow(&s->work, &s->work_cap, elems * sov_dtype_size(acc) + 1));
    if (acc != op->dtype)
        sov_widen_half((float *)s->work, send, elems, op->dtype);
    else
        memcpy(s->work, send, elems * sov_dtype_size(acc));
    *acc_out = acc;
    return reduce_in_place(c, op, s->work, elems, acc, deadline);
}

/* Elements [off, off + n) of work (in acc) into dst (in dt), rounded once. */
static void work_out(const tcp_state *s, void *dst, size_t off, size_t n, sov_dtype dt, sov_dtype acc) {
    size_t esz = sov_dtype_size(acc);
    if (acc != dt)
        sov_narrow_half(dst, (const float *)(s->work + off * esz), n, dt);
    else
        memcpy(dst, s->work + off * esz, n * esz);
}

static sov_status tcp_allreduce(sov_comm *c, const sov_op *op, double deadline) {
    tcp_state *s = c->impl;
    sov_dtype acc = accumulator(op->dtype);
    size_t esz = sov_dtype_size(acc);
    if (acc == op->dtype) { /* summed in its own type: in recv itself, with no copy out (one pass less) */
        if (op->send != op->recv)
            memmove(op->recv, op->send, op->count * esz); /* buffers that overlap in part, too */
        SOV_CHECK(reduce_in_place(c, op, op->recv, op->count, acc, deadline));
        return ring_allgather(c, op, op->recv, op->count, esz, deadline);
    }
    /* bf16 and f16: summed in f32; each finished block is rounded once, by its owner, and gathered rounded (half
     * the bytes of gathering f32; the same bits, since every rank rounded the same f32 values alike) */
    SOV_CHECK(reduce_into_work(c, op, op->send, op->count, &acc, deadline));
    size_t off, n, out_esz = sov_dtype_size(op->dtype);
    block(op->count, c->size, c->rank, &off, &n);
    work_out(s, (uint8_t *)op->recv + off * out_esz, off, n, op->dtype, acc);
    return ring_allgather(c, op, op->recv, op->count, out_esz, deadline);
}

/* recv = block `rank` of the op over send (size x count elements). The ring's blocks are exactly those. */
static sov_status tcp_reduce_scatter(sov_comm *c, const sov_op *op, double deadline) {
    tcp_state *s = c->impl;
    sov_dtype acc;
    SOV_CHECK(reduce_into_work(c, op, op->send, op->count * (size_t)c->size, &acc, deadline));
    work_out(s, op->recv, op->count * (size_t)c->rank, op->count, op->dtype, acc);
    return SOV_OK;
}

static sov_status tcp_allgather(sov_comm *c, const sov_op *op, double deadline) {
    size_t esz = sov_dtype_size(op->dtype), bytes = op->count * esz;
    uint8_t *mine = (uint8_t *)op->recv + (size_t)c->rank * bytes;
    if (op->send != mine)
        memmove(mine, op->send, bytes);
    return ring_allgather(c, op, op->recv, op->count * (size_t)c->size, esz, deadline);
}

/* A chain from the root around the ring, in pieces, so that every link carries data at once. */
static sov_status tcp_broadcast(sov_comm *c, const sov_op *op, double deadline) {
    tcp_state *s = c->impl;
    size_t total = op->count * sov_dtype_size(op->dtype);
    uint8_t *buf = op->recv;
    for (size_t at = 0; at < total; at += BROADCAST_PIECE) {
        size_t n = total - at < BROADCAST_PIECE ? total - at : BROADCAST_PIECE;
        if (c->rank != op->root)
            SOV_CHECK(exchange(c, op, NULL, 0, buf + at, n, deadline));
        if (s->next != op->root)
            SOV_CHECK(exchange(c, op, buf + at, n, NULL, 0, deadline));
    }
    return SOV_OK;
}

static sov_status tcp_run(sov_comm *c, const sov_op *op) {
    double deadline = sov_now() + c->timeout_s;
    if (op->count == 0 && op->kind != OP_BARRIER) /* no bytes to move, in place or not */
        return SOV_OK;
    switch (op->kind) {
    case OP_ALLREDUCE: return tcp_allreduce(c, op, deadline);
    case OP_REDUCE_SCATTER: return tcp_reduce_scatter(c, op, deadline);
    case OP_ALLGATHER: return tcp_allgather(c, op, deadline);
    case OP_BROADCAST: return tcp_broadcast(c, op, deadline);
    case OP_BARRIER: {
        uint8_t one = 1;
        sov_op b = {.kind = OP_BARRIER, .send = &one, .recv = &one, .count = 1, .dtype = SOV_U8, .seq = op->seq};
        return tcp_allreduce(c, &b, deadline);
    }
    }
    return sov_fail(SOV_ERR_INTERNAL, "tcp: unknown collective %d", (int)op->kind);
}

static void close_all(tcp_state *s) {
    if (s->next_fd >= 0)
        close(s->next_fd);
    if (s->prev_fd >= 0)
        close(s->prev_fd);
    s->next_fd = s->prev_fd = -1;
}

/* The peers see the connections end and fail at once, naming this rank. shutdown, not close: the progress thread
 * may be inside a transfer on these sockets; it then fails at once too, and destroy closes them. */
static void tcp_abort(sov_comm *c, int exit_code) {
    tcp_state *s = c->impl;
    (void)exit_code;
    if (!s)
        return;
    if (s->next_fd >= 0)
        shutdown(s->next_fd, SHUT_RDWR);
    if (s->prev_fd >= 0)
        shutdown(s->prev_fd, SHUT_RDWR);
}

static void tcp_destroy(sov_comm *c) {
    tcp_state *s = c->impl;
    if (!s)
        return;
    close_all(s);
    free(s->work);
    free(s->scratch);
    free(s);
    c->impl = NULL;
}

static const sov_comm_ops tcp_ops = {.run = tcp_run, .abort = tcp_abort, .destroy = tcp_destroy};

/* The link to the next rank: connect to its listener, prove the job's secret both ways, say which rank this is.
 * It runs on a thread of its own while this rank accepts the previous one: each side of a handshake waits for the
 * other, so around a ring the two must not wait on each other. */
typedef struct next_link {
    int rank, next;
    struct sockaddr_in to;
    double deadline;
    int fd;
    sov_status status;
    char error[1024];
} next_link;

static void *link_next(void *arg) {
    next_link *l = arg;
    char what[160];
    snprintf(what, sizeof what, "rank %d: tcp: connecting to rank %d at %s:%u", l->rank, l->next,
             inet_ntoa(l->to.sin_addr), ntohs(l->to.sin_port));
    uint32_t me = (uint32_t)l->rank;
    l->status = sov_tcp_connect(&l->to, l->deadline, what, &l->fd);
    if (l->status == SOV_OK)
        l->status = sov_auth_connect(l->fd, l->deadline, what);
    if (l->status == SOV_OK)
        l->status = sov_tcp_send(l->fd, &me, sizeof me, l->deadline, what);
    if (l->status != SOV_OK)
        snprintf(l->error, sizeof l->error, "%s", sov_last_error());
    return NULL;
}

/* The link from the previous rank: the first connection that proves the job's secret and says it is that rank.
 * Any other is refused, named in the log, and the wait goes on. */
static sov_status accept_prev(sov_comm *c, tcp_state *s, int lfd, double deadline) {
    for (;;) {
        struct pollfd pfd = {.fd = lfd, .events = POLLIN};
        double left = deadline - sov_now();
        if (left <= 0)
            return sov_fail(SOV_ERR_COMM, "rank %d: tcp: rank %d never connected within the timeout", c->rank, s->prev);
        int ready = poll(&pfd, 1, (int)(left * 1000) + 1);
        if (ready < 0 && errno != EINTR)
            return sov_fail(SOV_ERR_COMM, "rank %d: tcp: poll: %s", c->rank, strerror(errno));
        if (ready <= 0)
            continue;
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        int fd = accept4(lfd, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        char what[160];
        snprintf(what, sizeof what, "rank %d: tcp: a connection from %s:%u", c->rank, inet_ntoa(peer.sin_addr),
                 ntohs(peer.sin_port));
        double by = sov_now() + 5.0 < deadline ? sov_now() + 5.0 : deadline; /* a silent stray blocks no one long */
        uint32_t them = UINT32_MAX;
        sov_status st = sov_auth_accept(fd, by, what);
        if (st == SOV_OK && (st = sov_tcp_recv(fd, &them, sizeof them, by, what)) == SOV_OK &&
            them == (uint32_t)s->prev) {
            sov_tcp_tune(fd);
            s->prev_fd = fd;
            return SOV_OK;
        }
        if (st == SOV_OK)
            sov_log_error("refused: %s: it says it is rank %u, not rank %d", what, them, s->prev);
        else
            sov_log_error("refused: %s", sov_last_error());
        close(fd);
    }
}

/* The ring's links: to the next rank (on a thread) and from the previous one. */
static sov_status link_ring(sov_comm *c, tcp_state *s, int lfd, const uint32_t *ports, struct sockaddr_in *addrs,
                            double deadline) {
    next_link l = {.rank = c->rank, .next = s->next, .to = addrs[s->next], .deadline = deadline, .fd = -1};
    l.to.sin_port = htons((uint16_t)ports[s->next]);
    pthread_t t;
    if (pthread_create(&t, NULL, link_next, &l) != 0)
        return sov_fail(SOV_ERR_COMM, "rank %d: tcp: cannot start a thread to connect to rank %d", c->rank, s->next);
    sov_status st = accept_prev(c, s, lfd, deadline);
    pthread_join(t, NULL);
    s->next_fd = l.fd;
    if (l.status != SOV_OK)
        return sov_fail(l.status, "%s", l.error);
    return st;
}

static sov_status tcp_setup(sov_comm *c, tcp_state *s, const sov_world *w) {
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_ANY)}, bound;
    int lfd;
    SOV_CHECK(sov_tcp_listen(&any, 4, &lfd, &bound));
    uint32_t mine = ntohs(bound.sin_port), *ports = sov_calloc((size_t)c->size, sizeof *ports);
    struct sockaddr_in *addrs = sov_calloc((size_t)c->size, sizeof *addrs);
    sov_status st = ports && addrs ? SOV_OK : SOV_ERR_NOMEM;
    if (st == SOV_OK)
        st = sov_rendezvous(w, &mine, sizeof mine, ports, addrs, c->timeout_s);
    if (st == SOV_OK) /* the ring gets its own timeout: the rendezvous may have used most of the first */
        st = link_ring(c, s, lfd, ports, addrs, sov_now() + c->timeout_s);
    close(lfd);
    free(ports);
    free(addrs);
    return st;
}

sov_status sov_comm_tcp_init(sov_comm *c, const sov_world *world) {
    if (c->size == 1) /* nobody to meet: the identity */
        return sov_comm_self_init(c);
    tcp_state *s = sov_calloc(1, sizeof *s);
    if (!s)
        return SOV_ERR_NOMEM;
    *s = (tcp_state){.next_fd = -1, .prev_fd = -1, .next = (c->rank + 1) % c->size,
                     .prev = (c->rank + c->size - 1) % c->size};
    c->impl = s;
    c->ops = &tcp_ops;
    sov_status st = tcp_setup(c, s, world);
    if (st != SOV_OK)
        tcp_destroy(c);
    return st;
}

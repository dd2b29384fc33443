/* comm_shm.c: collectives between the ranks of one host through POSIX shared memory.
 *
 * Memory. Every rank creates its segments itself (/dev/shm/sovtrain-<job>-<rank>-<idx>); peers map them
 * read-only, lazily, the first time a collective names them. Segment 0 holds a rank's small-message staging;
 * sov_comm_alloc hands out further segments, so collectives on such buffers read the peers' data in place
 * (zero-copy). Other buffers are copied through a scratch segment. Each rank offsets its data inside its segments
 * by a different odd multiple of 64 bytes plus a page, so that one rank's loop over several ranks' buffers never
 * sees addresses a multiple of 4 KiB apart (DESIGN: "address aliasing" halved the reduction speed).
 *
 * Synchronisation. A control segment holds one cache-line-aligned slot per rank: an `arrive` counter and what the
 * rank is doing. sync() increments the own counter (release) and waits until every peer's counter has reached it
 * (acquire): all ranks pass the same sequence of syncs, so the counters never need resetting. A wait that exceeds
 * the timeout fails naming the ranks that never arrived and the collective each of them is in.
 *
 * Algorithms (N ranks, every reduction in rank order, so all ranks get the same bits):
 *   small allreduce   copy into my staging half (alternating halves), sync, every rank reduces the whole
 *                     message from all stagings into its own output. The alternation makes a trailing sync
 *                     unnecessary: a staging half is rewritten only after a later sync that all readers passed.
 *   large allreduce   in chunks: rank r reduces slice r of the chunk from all inputs into its own output, sync,
 *                     then copies the other slices from their owners' outputs; one sync per chunk, plus one at
 *                     the start (inputs ready) and one at the end (nobody still reads my buffer).
 *   broadcast, allgather, reduce_scatter: publish, sync, read what is needed from the peers, sync. */
#include "comm_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <mpi.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_RANKS 64
#define MAX_SEGS 256   /* live segments a rank owns at once */
#define PEER_CACHE 32  /* mappings of one peer's segments kept between collectives */
#define CTL_MAGIC 0x736f7673686d3031ULL /* "sovshm01" */

typedef struct slot {
    _Alignas(128) _Atomic uint64_t arrive; /* syncs passed */
    _Atomic uint64_t op_seq;               /* collective this rank is in (or last was in) */
    _Atomic int op_kind;
    int global_rank, pid;
    int32_t send_seg, recv_seg; /* published buffers of the current collective: segment index, -1 none */
    uint64_t send_off, recv_off;
} slot;

typedef struct ctl {
    uint64_t magic;
    int32_t size;
    char pad[116];
    slot slots[];
} ctl;

typedef struct seg {
    int idx;       /* -1: free entry */
    char *map;
    size_t map_bytes;
    char *user;    /* map + stagger */
    size_t user_bytes;
} seg;

typedef struct peer_map {
    int idx; /* -1: empty */
    const char *map;
    size_t bytes;
    uint64_t used; /* collective that last used it */
} peer_map;

struct shm_group {
    int rank, size;
    char tag[80];
    ctl *ctl;
    size_t ctl_bytes;
    seg own[MAX_SEGS];
    int next_idx;                 /* segment indices are never reused, so a stale name cannot alias */
    peer_map (*peers)[PEER_CACHE]; /* [size][PEER_CACHE], mapped lazily */
    const char **small;           /* [size]: every rank's segment 0 (small-message staging), mapped at set-up */
    size_t *small_map;            /* [size]: their mapped sizes */
    uint64_t ops;                 /* collectives run, for the cache's LRU */
    uint64_t arrive;
    double timeout_s;
    size_t small_bytes, chunk_bytes;
    int stagger_on;
    int parity;        /* which half of the small staging the next small allreduce uses */
    int scratch;       /* own segment index of the scratch buffer, -1 none */
    const sov_op *cur; /* the collective in progress, for error messages */
};

/* ---- segments ---- */

/* Where rank k's data starts inside each of its segments (see the top of this file). */
static size_t stagger_of(const shm_group *g, int k) { return g->stagger_on ? 4096 + 320 * (2 * (size_t)k + 1) : 0; }

static void seg_name(const shm_group *g, int rank, int idx, char *out, size_t cap) {
    if (idx < 0)
        snprintf(out, cap, "/sovtrain-%s-ctl", g->tag);
    else
        snprintf(out, cap, "/sovtrain-%s-%d-%d", g->tag, rank, idx);
}

static seg *own_seg(shm_group *g, int idx) {
    for (int i = 0; i < MAX_SEGS; i++)
        if (g->own[i].idx == idx)
            return &g->own[i];
    return NULL;
}

static seg *seg_create(shm_group *g, size_t bytes) {
    seg *s = own_seg(g, -1);
    if (!s || g->next_idx == INT32_MAX) {
        sov_fail(SOV_ERR_NOMEM, "shm rank %d: more than %d shared-memory segments", g->rank, MAX_SEGS);
        return NULL;
    }
    char name[128];
    int idx = g->next_idx;
    seg_name(g, g->rank, idx, name, sizeof name);
    size_t stagger = stagger_of(g, g->rank), page = (size_t)sysconf(_SC_PAGESIZE);
    size_t map_bytes = (bytes + stagger + page - 1) / page * page;
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) {
        sov_fail(SOV_ERR_IO, "shm rank %d: shm_open %s: %s", g->rank, name, strerror(errno));
        return NULL;
    }
    void *map = MAP_FAILED;
    int err = ftruncate(fd, (off_t)map_bytes) != 0 ? errno : 0;
    if (!err && (map = mmap(NULL, map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) == MAP_FAILED)
        err = errno;
    close(fd);
    if (err) {
        shm_unlink(name);
        sov_fail(SOV_ERR_NOMEM, "shm rank %d: cannot map %zu bytes of shared memory (%s): %s; check the size of "
                 "/dev/shm", g->rank, map_bytes, name, strerror(err));
        return NULL;
    }
    g->next_idx++;
    *s = (seg){.idx = idx, .map = map, .map_bytes = map_bytes, .user = (char *)map + stagger, .user_bytes = bytes};
    return s;
}

static void seg_destroy(shm_group *g, seg *s) {
    char name[128];
    seg_name(g, g->rank, s->idx, name, sizeof name);
    munmap(s->map, s->map_bytes);
    shm_unlink(name); /* already gone for segment 0, unlinked once every peer had mapped it */
    s->idx = -1;
}

/* The own segment holding [p, p + bytes), or NULL. */
static seg *find_own(shm_group *g, const void *p, size_t bytes) {
    const char *c = p;
    for (int i = 0; i < MAX_SEGS; i++) {
        seg *s = &g->own[i];
        if (s->idx > 0 && c >= s->user && c + bytes <= s->user + s->user_bytes)
            return s;
    }
    return NULL;
}

/* Maps peer `rank`'s segment `idx` read-only. Returns its base and size, or NULL with an error set. */
static const char *map_peer(shm_group *g, int rank, int idx, size_t *bytes) {
    char name[128];
    seg_name(g, rank, idx, name, sizeof name);
    int fd = shm_open(name, O_RDONLY, 0);
    if (fd < 0) {
        sov_fail(SOV_ERR_IO, "shm rank %d: cannot open rank %d's segment %s: %s", g->rank, rank, name, strerror(errno));
        return NULL;
    }
    struct stat sb;
    void *map = MAP_FAILED;
    if (fstat(fd, &sb) == 0)
        map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
    int err = errno;
    close(fd);
    if (map == MAP_FAILED) {
        sov_fail(SOV_ERR_IO, "shm rank %d: cannot map rank %d's segment %s: %s", g->rank, rank, name, strerror(err));
        return NULL;
    }
    *bytes = (size_t)sb.st_size;
    return map;
}

/* Peer `rank`'s segment `idx` through the cache. A mapping is only used during one collective, so when the cache
 * is full the least recently used mapping of an earlier collective can go. */
static const peer_map *peer_seg(shm_group *g, int rank, int idx) {
    peer_map *c = g->peers[rank], *victim = &c[0];
    for (int i = 0; i < PEER_CACHE; i++) {
        if (c[i].idx == idx) {
            c[i].used = g->ops;
            return &c[i];
        }
        if (c[i].idx < 0 ? victim->idx >= 0 : victim->idx >= 0 && c[i].used < victim->used)
            victim = &c[i]; /* prefer an empty entry, else the least recently used */
    }
    if (victim->idx >= 0 && victim->used == g->ops) {
        sov_fail(SOV_ERR_INTERNAL, "shm rank %d: one collective uses more than %d of rank %d's segments", g->rank,
                 PEER_CACHE, rank);
        return NULL;
    }
    size_t bytes;
    const char *map = map_peer(g, rank, idx, &bytes);
    if (!map)
        return NULL;
    if (victim->idx >= 0)
        munmap((void *)victim->map, victim->bytes);
    *victim = (peer_map){.idx = idx, .map = map, .bytes = bytes, .used = g->ops};
    return victim;
}

/* ---- synchronisation ---- */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static sov_status hang_error(shm_group *g, uint64_t target, double waited) {
    char missing[1024] = "";
    size_t n = 0;
    for (int k = 0; k < g->size; k++) {
        slot *s = &g->ctl->slots[k];
        if (k == g->rank || atomic_load(&s->arrive) >= target)
            continue;
        n += (size_t)snprintf(missing + n, sizeof missing - n, "%srank %d (pid %d, last in %s #%llu)",
                              n ? ", " : "", s->global_rank, s->pid, sov_op_name((sov_op_kind)atomic_load(&s->op_kind)),
                              (unsigned long long)atomic_load(&s->op_seq));
        if (n >= sizeof missing)
            break;
    }
    return sov_fail(SOV_ERR_COMM, "rank %d: %s #%llu timed out after %.0f s (--comm-timeout) waiting for %s, which "
                    "never arrived: it stopped calling collectives, hangs, or calls them in another order",
                    g->ctl->slots[g->rank].global_rank, g->cur ? sov_op_name(g->cur->kind) : "collective",
                    g->cur ? (unsigned long long)g->cur->seq : 0ULL, waited, missing);
}

static sov_status sync_all(shm_group *g) {
    uint64_t target = ++g->arrive;
    atomic_store_explicit(&g->ctl->slots[g->rank].arrive, target, memory_order_release);
    double start = 0.0;
    for (int k = 0; k < g->size; k++) {
        _Atomic uint64_t *a = &g->ctl->slots[k].arrive;
        for (unsigned spins = 0; atomic_load_explicit(a, memory_order_acquire) < target; spins++) {
            if (spins < 256) {
                cpu_relax();
                continue;
            }
            sched_yield(); /* ranks may outnumber cores: let the one we wait for run */
            if ((spins & 63) != 0)
                continue;
            double now = sov_now();
            if (start == 0.0)
                start = now;
            if (now - start > g->timeout_s)
                return hang_error(g, target, now - start);
            if (now - start > 0.01) /* a long wait (a peer still computing): stop burning its core */
                nanosleep(&(struct timespec){.tv_nsec = 50000}, NULL);
        }
    }
    return SOV_OK;
}

/* ---- buffers of a collective ---- */

/* Makes `src` (bytes) readable by the peers: the registered buffer itself, or a copy in the scratch segment. */
static sov_status visible(shm_group *g, const void *src, size_t bytes, seg **where, const char **ptr) {
    seg *s = find_own(g, src, bytes);
    if (s) {
        *where = s;
        *ptr = src;
        return SOV_OK;
    }
    seg *scratch = g->scratch >= 0 ? own_seg(g, g->scratch) : NULL;
    if (!scratch || scratch->user_bytes < bytes) {
        if (scratch)
            seg_destroy(g, scratch);
        g->scratch = -1;
        size_t want = bytes < ((size_t)1 << 20) ? (size_t)1 << 20 : bytes + bytes / 4;
        if (!(scratch = seg_create(g, want)))
            return SOV_ERR_NOMEM;
        g->scratch = scratch->idx;
    }
    memcpy(scratch->user, src, bytes);
    *where = scratch;
    *ptr = scratch->user;
    return SOV_OK;
}

static void publish(shm_group *g, const sov_op *op, const seg *send_seg, const char *send, const seg *recv_seg,
                    const char *recv) {
    slot *me = &g->ctl->slots[g->rank];
    me->send_seg = send_seg ? send_seg->idx : -1;
    me->send_off = send_seg ? (uint64_t)(send - send_seg->map) : 0;
    me->recv_seg = recv_seg ? recv_seg->idx : -1;
    me->recv_off = recv_seg ? (uint64_t)(recv - recv_seg->map) : 0;
    (void)op;
}

/* Peer k's published send (or recv) buffer, mapped here. Valid after the sync that follows publish(). */
static sov_status peer_buf(shm_group *g, int k, int recv, const char **out) {
    slot *s = &g->ctl->slots[k];
    int idx = recv ? s->recv_seg : s->send_seg;
    uint64_t off = recv ? s->recv_off : s->send_off;
    if (k == g->rank) {
        seg *own = own_seg(g, idx);
        *out = own ? own->map + off : NULL;
        return own ? SOV_OK : sov_fail(SOV_ERR_INTERNAL, "shm rank %d: own segment %d vanished", g->rank, idx);
    }
    if (idx < 0)
        return sov_fail(SOV_ERR_INTERNAL, "shm rank %d: rank %d published no buffer", g->rank, k);
    const peer_map *pm = peer_seg(g, k, idx);
    if (!pm)
        return SOV_ERR_IO;
    if (off >= pm->bytes)
        return sov_fail(SOV_ERR_INTERNAL, "shm rank %d: rank %d published offset %llu beyond its segment %d",
                        g->rank, k, (unsigned long long)off, idx);
    *out = pm->map + off;
    return SOV_OK;
}

static sov_status peer_bufs(shm_group *g, int recv, const char **out) {
    for (int k = 0; k < g->size; k++)
        SOV_CHECK(peer_buf(g, k, recv, &out[k]));
    return SOV_OK;
}

/* ---- the collectives ---- */

static const char *small_half(shm_group *g, int k, int parity) {
    const char *base = g->small[k];
    return base + stagger_of(g, k) + (size_t)parity * g->small_bytes;
}

static sov_status small_allreduce(shm_group *g, const sov_op *op, size_t bytes) {
    int parity = g->parity;
    g->parity ^= 1;
    memcpy((char *)small_half(g, g->rank, parity), op->send, bytes);
    SOV_CHECK(sync_all(g));
    const void *in[MAX_RANKS];
    for (int k = 0; k < g->size; k++)
        in[k] = small_half(g, k, parity);
    sov_reduce(op->recv, in, g->size, op->count, op->dtype, op->redop, g->size);
    return SOV_OK;
}

/* [lo, hi) of `n` elements owned by rank k: equal slices, boundaries on 64-byte multiples. */
static void slice_of(size_t n, size_t esz, int k, int size, size_t *lo, size_t *hi) {
    size_t align = 64 / esz, per = ((n + (size_t)size - 1) / (size_t)size + align - 1) / align * align;
    *lo = per * (size_t)k < n ? per * (size_t)k : n;
    *hi = per * (size_t)(k + 1) < n ? per * (size_t)(k + 1) : n;
}

static sov_status large_allreduce(shm_group *g, const sov_op *op, size_t esz) {
    size_t bytes = op->count * esz;
    seg *rs = find_own(g, op->recv, bytes), *ss = rs && op->send == op->recv ? rs : find_own(g, op->send, bytes);
    if (!rs || !ss) { /* not zero-copy: run in place on the scratch copy, then copy the result out */
        const char *copy;
        seg *where;
        SOV_CHECK(visible(g, op->send, bytes, &where, &copy));
        sov_op inner = *op;
        inner.send = inner.recv = (void *)copy;
        SOV_CHECK(large_allreduce(g, &inner, esz));
        memcpy(op->recv, copy, bytes);
        return SOV_OK;
    }
    publish(g, op, ss, op->send, rs, op->recv);
    SOV_CHECK(sync_all(g));
    const char *in[MAX_RANKS], *out[MAX_RANKS];
    SOV_CHECK(peer_bufs(g, 0, in));
    SOV_CHECK(peer_bufs(g, 1, out));
    size_t chunk = g->chunk_bytes / esz;
    for (size_t off = 0; off < op->count; off += chunk) {
        size_t m = op->count - off < chunk ? op->count - off : chunk, lo, hi;
        slice_of(m, esz, g->rank, g->size, &lo, &hi);
        const void *src[MAX_RANKS];
        for (int k = 0; k < g->size; k++)
            src[k] = in[k] + (off + lo) * esz;
        if (hi > lo)
            sov_reduce((char *)op->recv + (off + lo) * esz, src, g->size, hi - lo, op->dtype, op->redop, g->size);
        SOV_CHECK(sync_all(g));
        for (int k = 0; k < g->size; k++) {
            slice_of(m, esz, k, g->size, &lo, &hi);
            if (k != g->rank && hi > lo)
                memcpy((char *)op->recv + (off + lo) * esz, out[k] + (off + lo) * esz, (hi - lo) * esz);
        }
    }
    return sync_all(g);
}

static sov_status shm_broadcast(shm_group *g, const sov_op *op, size_t bytes) {
    seg *where = NULL;
    const char *src = NULL;
    if (g->rank == op->root)
        SOV_CHECK(visible(g, op->recv, bytes, &where, &src));
    publish(g, op, where, src, NULL, NULL);
    SOV_CHECK(sync_all(g));
    if (g->rank != op->root) {
        const char *from;
        SOV_CHECK(peer_buf(g, op->root, 0, &from));
        memcpy(op->recv, from, bytes);
    }
    return sync_all(g);
}

static sov_status shm_allgather(shm_group *g, const sov_op *op, size_t bytes) {
    seg *where;
    const char *src;
    SOV_CHECK(visible(g, op->send, bytes, &where, &src));
    publish(g, op, where, src, NULL, NULL);
    SOV_CHECK(sync_all(g));
    for (int k = 0; k < g->size; k++) {
        char *dst = (char *)op->recv + (size_t)k * bytes;
        const char *from;
        SOV_CHECK(peer_buf(g, k, 0, &from));
        if (dst != from)
            memmove(dst, from, bytes);
    }
    return sync_all(g);
}

static sov_status shm_reduce_scatter(shm_group *g, const sov_op *op, size_t bytes) {
    seg *where;
    const char *src;
    SOV_CHECK(visible(g, op->send, bytes * (size_t)g->size, &where, &src));
    publish(g, op, where, src, NULL, NULL);
    SOV_CHECK(sync_all(g));
    const char *in[MAX_RANKS];
    SOV_CHECK(peer_bufs(g, 0, in));
    const void *blocks[MAX_RANKS];
    for (int k = 0; k < g->size; k++)
        blocks[k] = in[k] + (size_t)g->rank * bytes;
    sov_reduce(op->recv, blocks, g->size, op->count, op->dtype, op->redop, g->size);
    return sync_all(g);
}

sov_status sov_shm_group_run(shm_group *g, const sov_op *op) {
    slot *me = &g->ctl->slots[g->rank];
    atomic_store(&me->op_kind, (int)op->kind);
    atomic_store(&me->op_seq, op->seq);
    g->cur = op;
    g->ops++;
    size_t esz = sov_dtype_size(op->dtype), bytes = op->count * esz;
    sov_status st = SOV_OK;
    switch (op->kind) {
    case OP_ALLREDUCE: st = bytes <= g->small_bytes ? small_allreduce(g, op, bytes) : large_allreduce(g, op, esz); break;
    case OP_BROADCAST: st = shm_broadcast(g, op, bytes); break;
    case OP_ALLGATHER: st = shm_allgather(g, op, bytes); break;
    case OP_REDUCE_SCATTER: st = shm_reduce_scatter(g, op, bytes); break;
    case OP_BARRIER: st = sync_all(g); break;
    }
    g->cur = NULL;
    return st;
}

void *sov_shm_group_alloc(shm_group *g, size_t bytes) {
    seg *s = seg_create(g, bytes ? bytes : 1);
    return s ? s->user : NULL;
}

void sov_shm_group_free(shm_group *g, void *ptr) {
    seg *s = find_own(g, ptr, 0);
    if (s && s->user == ptr)
        seg_destroy(g, s);
}

/* ---- set-up and tear-down ---- */

static size_t env_size(const char *name, size_t dflt, size_t lo, size_t hi) {
    const char *v = getenv(name);
    if (!v || !*v)
        return dflt;
    char *end;
    unsigned long long x = strtoull(v, &end, 10);
    return *end || x < lo || x > hi ? dflt : (size_t)x;
}

static sov_status open_ctl(shm_group *g, int create) {
    char name[128];
    seg_name(g, 0, -1, name, sizeof name);
    g->ctl_bytes = sizeof(ctl) + (size_t)g->size * sizeof(slot);
    int fd = create ? shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600) : shm_open(name, O_RDWR, 0);
    if (fd < 0)
        return sov_fail(SOV_ERR_IO, "shm rank %d: shm_open %s: %s", g->rank, name, strerror(errno));
    void *map = MAP_FAILED;
    if (!create || ftruncate(fd, (off_t)g->ctl_bytes) == 0)
        map = mmap(NULL, g->ctl_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int err = errno;
    close(fd);
    if (map == MAP_FAILED)
        return sov_fail(SOV_ERR_IO, "shm rank %d: cannot map %s: %s", g->rank, name, strerror(err));
    g->ctl = map;
    if (create) {
        g->ctl->magic = CTL_MAGIC;
        g->ctl->size = g->size;
    } else if (g->ctl->magic != CTL_MAGIC || g->ctl->size != g->size) {
        return sov_fail(SOV_ERR_INTERNAL, "shm rank %d: control segment %s is not this job's", g->rank, name);
    }
    return SOV_OK;
}

/* Agrees on the job's segment-name tag: the launcher's job id, else local rank 0's pid and clock. */
static void agree_tag(shm_group *g, MPI_Comm local) {
    if (g->rank == 0) {
        const char *job = getenv("SOVTRAIN_JOB_ID");
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(g->tag, sizeof g->tag, "%.40s%s%d-%lx", job ? job : "", job ? "-" : "", (int)getpid(),
                 (unsigned long)ts.tv_nsec);
        for (char *c = g->tag; *c; c++)
            if (*c == '/')
                *c = '_';
    }
    MPI_Bcast(g->tag, sizeof g->tag, MPI_CHAR, 0, local);
}

static sov_status group_setup(shm_group *g, MPI_Comm local, int global_rank) {
    agree_tag(g, local);
    if (g->rank == 0)
        SOV_CHECK(open_ctl(g, 1));
    if (!seg_create(g, 2 * g->small_bytes)) /* segment 0: small-message staging */
        return SOV_ERR_NOMEM;
    MPI_Barrier(local);
    if (g->rank != 0)
        SOV_CHECK(open_ctl(g, 0));
    for (int k = 0; k < g->size; k++) {
        if (k == g->rank)
            g->small[k] = own_seg(g, 0)->map;
        else if (!(g->small[k] = map_peer(g, k, 0, &g->small_map[k])))
            return SOV_ERR_IO;
    }
    slot *me = &g->ctl->slots[g->rank];
    me->global_rank = global_rank;
    me->pid = (int)getpid();
    MPI_Barrier(local);
    /* Everyone has mapped the control segment and every segment 0: their names can go. */
    char name[128];
    seg_name(g, g->rank, 0, name, sizeof name);
    shm_unlink(name);
    if (g->rank == 0) {
        seg_name(g, 0, -1, name, sizeof name);
        shm_unlink(name);
    }
    return SOV_OK;
}

sov_status sov_shm_group_create(shm_group **out, const void *local_mpi_comm, int global_rank, double timeout_s) {
    MPI_Comm local = *(const MPI_Comm *)local_mpi_comm;
    shm_group *g = sov_calloc(1, sizeof *g);
    if (!g)
        return SOV_ERR_NOMEM;
    MPI_Comm_rank(local, &g->rank);
    MPI_Comm_size(local, &g->size);
    if (g->size > MAX_RANKS) {
        int size = g->size;
        free(g);
        return sov_fail(SOV_ERR_UNSUPPORTED, "shm: %d ranks on one host; at most %d supported", size, MAX_RANKS);
    }
    for (int i = 0; i < MAX_SEGS; i++)
        g->own[i].idx = -1;
    g->scratch = -1;
    g->timeout_s = timeout_s;
    g->small_bytes = env_size("SOVTRAIN_SHM_SMALL", 64 << 10, 0, 64 << 20) / 64 * 64;
    g->chunk_bytes = env_size("SOVTRAIN_SHM_CHUNK", 1 << 20, 4096, (size_t)1 << 30) / 4096 * 4096;
    g->stagger_on = (int)env_size("SOVTRAIN_SHM_STAGGER", 1, 0, 1);
    g->peers = sov_calloc((size_t)g->size, sizeof *g->peers);
    g->small = sov_calloc((size_t)g->size, sizeof *g->small);
    g->small_map = sov_calloc((size_t)g->size, sizeof *g->small_map);
    if (g->peers)
        for (int k = 0; k < g->size; k++)
            for (int i = 0; i < PEER_CACHE; i++)
                g->peers[k][i].idx = -1;
    sov_status st = g->peers && g->small && g->small_map ? group_setup(g, local, global_rank) : SOV_ERR_NOMEM;
    if (st != SOV_OK) {
        sov_shm_group_destroy(g);
        return st;
    }
    *out = g;
    return SOV_OK;
}

void sov_shm_group_destroy(shm_group *g) {
    if (!g)
        return;
    for (int i = 0; i < MAX_SEGS; i++)
        if (g->own[i].idx >= 0)
            seg_destroy(g, &g->own[i]);
    for (int k = 0; g->peers && k < g->size; k++)
        for (int i = 0; i < PEER_CACHE; i++)
            if (g->peers[k][i].idx >= 0)
                munmap((void *)g->peers[k][i].map, g->peers[k][i].bytes);
    for (int k = 0; g->small && k < g->size; k++)
        if (k != g->rank && g->small[k])
            munmap((void *)g->small[k], g->small_map[k]);
    free(g->small);
    free(g->small_map);
    if (g->ctl)
        munmap(g->ctl, g->ctl_bytes);
    free(g->peers);
    free(g);
}

/* ---- the shm backend: one group of all ranks ---- */

typedef struct shm_backend {
    MPI_Comm world;
    shm_group *group;
} shm_backend;

static sov_status shm_run(sov_comm *c, const sov_op *op) { return sov_shm_group_run(((shm_backend *)c->impl)->group, op); }
static void *shm_alloc(sov_comm *c, size_t bytes) { return sov_shm_group_alloc(((shm_backend *)c->impl)->group, bytes); }
static void shm_free(sov_comm *c, void *p) { sov_shm_group_free(((shm_backend *)c->impl)->group, p); }

static void shm_destroy(sov_comm *c) {
    shm_backend *b = c->impl;
    if (!b)
        return;
    sov_shm_group_destroy(b->group);
    MPI_Comm_free(&b->world);
    free(b);
    c->impl = NULL;
}

static const sov_comm_ops shm_ops = {
    .run = shm_run, .alloc = shm_alloc, .free = shm_free, .abort = sov_mpi_abort_world, .destroy = shm_destroy};

sov_status sov_comm_shm_init(sov_comm *c, const sov_world *world) {
    (void)world;
    SOV_CHECK(sov_mpi_ensure(c));
    shm_backend *b = sov_calloc(1, sizeof *b);
    if (!b)
        return SOV_ERR_NOMEM;
    c->impl = b;
    c->ops = &shm_ops;
    MPI_Comm_dup(MPI_COMM_WORLD, &b->world);
    int size;
    MPI_Comm_size(b->world, &size);
    if (size != c->size) {
        shm_destroy(c);
        return sov_fail(SOV_ERR_COMM, "MPI says %d ranks but the environment says %d: launch with `sovtrain launch` "
                        "or mpirun", size, c->size);
    }
    sov_status st = sov_shm_group_create(&b->group, &b->world, c->rank, c->timeout_s);
    if (st != SOV_OK)
        shm_destroy(c);
    return st;
}

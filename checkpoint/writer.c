/* writer.c: asynchronous, parallel, atomic checkpoint saving. See ckpt.h for the protocol. */
#include "codec.h"
#include "commit.h"
#include "copy.h"
#include "crypto.h"
#include "fsio.h"
#include "keys.h"
#include "plan.h"
#include "signing.h"
#include "snapshot.h"
#include "stream.h"
#include <sovtrain/ckpt.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 16
_Static_assert(SOV_STREAM_ALIGN == SOV_CKPT_CHUNK_ALIGN, "the data file's records are its chunks");
/* Output slots of the encoder pipeline: two per encoder, plus four so that encoders keep going while the writer
 * waits on the disk. Each is written to the file as it is (stream.h). */
#define SLOTS(threads) (2 * (threads) + 4)

struct sov_ckpt_writer {
    char dir[4096];
    int rank, world;
    sov_ckpt_options opt;
    sov_codec *codecs[MAX_THREADS];
    uint8_t *out_memory; /* encoded chunks: the pipeline's slots, back to back in one buffer for O_DIRECT writes */
    size_t out_bytes, slot_bytes; /* slot_bytes: a multiple of SOV_STREAM_ALIGN, so each slot is aligned */
    /* the save in flight */
    pthread_t thread;
    int running;
    long step;
    uint64_t save_id;
    json_t *manifest_base; /* rank 0: the split buffers, replicated tensors, meta: all but the ranks' parts */
    uint8_t *staging;      /* this rank's share, snapshotted */
    size_t staging_cap;    /* bytes */
    sov_plan plan;         /* what this rank writes in the save in flight (plan.h) */
    sov_status status;
    char error[1024];
    char committed[4200];
    double started;      /* when the save in flight was called */
    sov_snapshot snap;   /* the copy into staging, which the encoders follow (snapshot.h) */
    double save_seconds; /* the last save's time to durable (sov_ckpt_save_seconds) */
    /* metadata given after the data (sov_ckpt_defer_meta): rank 0's commit waits for it */
    int defer_next;       /* the next save's metadata comes later */
    int meta_deferred;    /* the save in flight's does */
    json_t *meta_given;   /* what sov_ckpt_commit_meta gave, until the commit takes it */
    int meta_abandoned;   /* closing: the commit stops waiting */
    pthread_mutex_t meta_lock;
    pthread_cond_t meta_changed;
    /* encryption (ckpt.h's options.key): the save in flight's data key, and the key of this rank's data file */
    int sealed;
    sov_key data_key, file_key;
};

static void step_paths(const sov_ckpt_writer *w, char *partial, char *final, size_t cap) {
    snprintf(partial, cap, "%s/step-%ld.partial", w->dir, w->step);
    snprintf(final, cap, "%s/step-%ld", w->dir, w->step);
}

/* ---- encoding and writing this rank's share ---- */

/* One chunk of this rank's share. */
typedef struct chunk_job {
    size_t at; /* where it starts in staging */
    size_t bytes;
    int elem_bytes;
    int transform; /* SOV_TRANSFORM_*: its buffer's dtype's */
    const char *buffer;
    size_t elem_offset;
} chunk_job;

/* Encoder threads compress chunks, in order, into a ring of output slots while this thread writes the finished
 * ones to the file: compression runs while the disk is busy. */
typedef struct pipeline {
    sov_ckpt_writer *w;
    const chunk_job *jobs;
    size_t njobs, next; /* next chunk to hand to an encoder */
    int nslots;
    struct slot {
        int busy;       /* an encoder is filling it */
        int ready;      /* encoded and not yet written (or, when signing, not yet hashed) */
        int written;    /* signing: written, waiting for the hasher */
        size_t job;     /* which chunk it holds */
        size_t bytes;
        sov_status status;
        char error[512];
    } slots[SLOTS(MAX_THREADS)];
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int abort;
    int while_copying; /* encoders that may run while the snapshot is still being copied */
    size_t share;      /* bytes of the whole share */
    sov_sha256 *hash;  /* signing: the data file's SHA-256, which the hasher thread takes in file order */
} pipeline;

/* Where job's encoded chunk goes: its slot in the writer's output buffer. */
static uint8_t *slot_buffer(const pipeline *p, size_t job) {
    return p->w->out_memory + job % (size_t)p->nslots * p->w->slot_bytes;
}

typedef struct encoder_arg {
    pipeline *p;
    int thread;
} encoder_arg;

static sov_status snapshot_failure(const sov_ckpt_writer *w) {
    return sov_fail(SOV_ERR_INTERNAL, "rank %d: the snapshot of step %ld failed", w->rank, w->step);
}

/* Encoder threads yield to the training threads (nice +10, at most 19): a save is background work, and the
 * snapshot it overlaps with is the training's stall. Raising one's own niceness needs no privilege; where it is
 * refused the encoders simply run at the same priority. */
static void lower_priority(void) {
    id_t self = (id_t)syscall(SYS_gettid);
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, self);
    if (nice == -1 && errno != 0)
        return;
    (void)setpriority(PRIO_PROCESS, self, nice + 10 > 19 ? 19 : nice + 10);
}

/* Encoders do not preempt another thread when they wake (SCHED_BATCH): the writer thread, which keeps the disk
 * busy, gets a core as soon as a write returns. (When a thread that copied blocks for the disk woke that way, it
 * held the core of the thread writing them for a whole 4 MiB copy: the disk sat idle ~0.7 ms of every 3-4 ms write
 * here.) Needs no privilege; where refused, nothing else changes. */
static void batch_policy(void) {
    struct sched_param none = {0};
    (void)pthread_setschedparam(pthread_self(), SCHED_BATCH, &none);
}

/* Encodes chunk `job` from src into its slot and, for an encrypted checkpoint, seals it there: chunk `job` of the
 * rank's data file, the last one or not. */
static sov_status encode_job(const pipeline *p, sov_codec *codec, size_t job, const uint8_t *src, size_t *bytes) {
    const chunk_job *cj = &p->jobs[job];
    uint8_t *out = slot_buffer(p, job);
    size_t room = p->w->sealed ? SOV_SEAL_HEADER_BYTES : 0;
    SOV_CHECK(sov_chunk_encode(codec, src, cj->bytes, cj->elem_bytes, cj->transform, out + room, bytes));
    if (p->w->sealed)
        SOV_CHECK(sov_seal_chunk(&p->w->file_key, job, job + 1 == p->njobs, out, *bytes, bytes));
    return SOV_OK;
}

static void *encoder_main(void *arg) {
    encoder_arg *ea = arg;
    batch_policy();
    lower_priority();
    pipeline *p = ea->p;
    sov_codec *codec = p->w->codecs[ea->thread];
    if (ea->thread >= p->while_copying) /* a failed snapshot is reported with the first chunk taken */
        (void)sov_snapshot_wait_done(&p->w->snap);
    pthread_mutex_lock(&p->lock);
    for (;;) {
        size_t job = p->next;
        if (job >= p->njobs || p->abort)
            break;
        /* Jobs are taken in order, so slot job % nslots is free exactly when its previous job (job - nslots) has
         * been written: neither being encoded nor waiting for the writer. (Checking only the slot's job number
         * let job nslots take slot 0 while job 0 was still being encoded into it: two encoders in one buffer,
         * and the writer waiting forever for job 0.) */
        struct slot *sl = &p->slots[job % (size_t)p->nslots];
        if (sl->busy || sl->ready) {
            pthread_cond_wait(&p->changed, &p->lock);
            continue;
        }
        sl->busy = 1;
        p->next++;
        const chunk_job *cj = &p->jobs[job];
        int gather;
        const uint8_t *origin = sov_snapshot_claim(&p->w->snap, cj->at, cj->at + cj->bytes, &gather); /* in order */
        pthread_mutex_unlock(&p->lock);
        size_t bytes = 0;
        sov_status st = SOV_OK;
        if (origin) { /* the state itself, while the caller is inside save: it will not copy these bytes */
            if (gather) /* small tensors packed in one chunk: this encoder puts them together in staging */
                sov_snapshot_gather(&p->w->snap, cj->at, cj->at + cj->bytes);
            st = encode_job(p, codec, job, origin, &bytes);
            sov_snapshot_release(&p->w->snap);
        } else if ((st = sov_snapshot_final(&p->w->snap, cj->at, cj->at + cj->bytes)) == SOV_OK) {
            st = encode_job(p, codec, job, p->w->staging + cj->at, &bytes);
        } else {
            st = snapshot_failure(p->w);
        }
        pthread_mutex_lock(&p->lock);
        sl->job = job;
        sl->bytes = bytes;
        sl->status = st;
        if (st != SOV_OK)
            snprintf(sl->error, sizeof sl->error, "%s", sov_last_error());
        sl->busy = 0;
        sl->ready = 1;
        pthread_cond_broadcast(&p->changed);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

/* How many encoders may run while the snapshot is still being copied: one core fewer than this process may use, since
 * the copy holds one. More encoders than free cores left one of them, niced, sharing the copying core with ~10 % of
 * it; when that one held the next chunk to write, the disk sat idle for up to 20 ms of a 140 ms save (traced on 2
 * cores). At least one. */
static int encoders_while_copying(int threads) {
    int free_cores = sov_usable_cpus() - 1;
    return free_cores < 1 ? 1 : free_cores < threads ? free_cores : threads;
}

/* Signing: hashes the data file's bytes in file order as the writer writes them (a chunk and the zeros after it,
 * but the last one's), each from its slot, which it then frees for the encoders. A thread of its own, so that
 * hashing one chunk overlaps with writing the next. */
static void *hasher_main(void *arg) {
    pipeline *p = arg;
    for (size_t job = 0; job < p->njobs; job++) {
        struct slot *sl = &p->slots[job % (size_t)p->nslots];
        pthread_mutex_lock(&p->lock);
        while (!p->abort && !(sl->written && sl->job == job))
            pthread_cond_wait(&p->changed, &p->lock);
        int stop = p->abort;
        pthread_mutex_unlock(&p->lock);
        if (stop)
            break;
        sov_sha256_update(p->hash, slot_buffer(p, job), job + 1 < p->njobs ? sov_stream_padded(sl->bytes) : sl->bytes);
        pthread_mutex_lock(&p->lock);
        sl->written = sl->ready = 0;
        pthread_cond_broadcast(&p->changed);
        pthread_mutex_unlock(&p->lock);
    }
    return NULL;
}

/* Writes the chunks in order as the encoders finish them, each from its slot, recording each in `chunks`. A slot is
 * then free again, or, when signing, handed to the hasher (hasher_main). */
static sov_status write_chunks(pipeline *p, sov_stream *out, json_t *chunks) {
    sov_status st = SOV_OK;
    for (size_t job = 0; job < p->njobs && st == SOV_OK; job++) {
        struct slot *sl = &p->slots[job % (size_t)p->nslots];
        pthread_mutex_lock(&p->lock);
        while (!(sl->ready && sl->job == job))
            pthread_cond_wait(&p->changed, &p->lock);
        pthread_mutex_unlock(&p->lock);
        if (sl->status != SOV_OK)
            st = sov_fail(sl->status, "%s", sl->error);
        else if (sov_snapshot_has_failed(&p->w->snap))
            st = snapshot_failure(p->w);
        uint64_t offset = 0;
        if (st == SOV_OK)
            st = sov_stream_append(out, slot_buffer(p, job), sl->bytes, &offset);
        const chunk_job *cj = &p->jobs[job];
        if (st == SOV_OK)
            json_array_append_new(chunks, json_pack("{s:s, s:I, s:I, s:I, s:I}", "buffer", cj->buffer, "elem_offset",
                                                    (json_int_t)cj->elem_offset, "elems",
                                                    (json_int_t)(cj->bytes / (size_t)cj->elem_bytes), "file_offset",
                                                    (json_int_t)offset, "bytes", (json_int_t)sl->bytes));
        pthread_mutex_lock(&p->lock);
        if (st == SOV_OK && p->hash)
            sl->written = 1;
        else
            sl->ready = 0;
        if (st != SOV_OK)
            p->abort = 1;
        pthread_cond_broadcast(&p->changed);
        pthread_mutex_unlock(&p->lock);
    }
    return st;
}

/* This rank's share cut into chunks of at most chunk_bytes, piece by piece; *bytes is the share's size. */
static chunk_job *plan_chunks(const sov_ckpt_writer *w, size_t *n, size_t *bytes) {
    const sov_plan *plan = &w->plan;
    size_t count = 0, staged = 0; /* bytes */
    for (int p = 0; p < plan->npieces; p++) {
        const sov_plan_piece *pc = &plan->pieces[p];
        size_t chunk_elems = w->opt.chunk_bytes / sov_dtype_size(plan->cat.buffers[pc->buffer].dtype);
        for (size_t at = pc->offset; at < pc->offset + pc->count; count++)
            at = sov_plan_chunk_end(plan, p, at, chunk_elems);
    }
    chunk_job *jobs = sov_calloc(count ? count : 1, sizeof *jobs);
    if (!jobs)
        return NULL;
    *n = 0;
    for (int p = 0; p < plan->npieces; p++) {
        const sov_plan_piece *pc = &plan->pieces[p];
        const sov_cat_buffer *b = &plan->cat.buffers[pc->buffer];
        size_t elem = sov_dtype_size(b->dtype), chunk_elems = w->opt.chunk_bytes / elem;
        for (size_t off = 0, m; off < pc->count; off += m) {
            m = sov_plan_chunk_end(plan, p, pc->offset + off, chunk_elems) - (pc->offset + off);
            jobs[(*n)++] = (chunk_job){.at = pc->staging_at + off * elem, .bytes = m * elem, .elem_bytes = (int)elem,
                                       .transform = sov_transform_for(b->dtype), .buffer = b->name,
                                       .elem_offset = pc->offset + off};
            staged = pc->staging_at + (off + m) * elem;
        }
    }
    *bytes = staged;
    return jobs;
}

/* The pipeline's threads: the encoders and, when signing, the hasher. */
typedef struct pipeline_threads {
    pthread_t encoders[MAX_THREADS], hasher;
    int started, hashing;
} pipeline_threads;

static sov_status start_threads(pipeline *p, pipeline_threads *t, encoder_arg *args) {
    for (int i = 0; i < p->w->opt.threads; i++) {
        args[i] = (encoder_arg){.p = p, .thread = i};
        if (pthread_create(&t->encoders[i], NULL, encoder_main, &args[i]) != 0)
            break;
        t->started++;
    }
    if (!t->started)
        return sov_fail(SOV_ERR_INTERNAL, "rank %d: cannot start checkpoint encoder threads", p->w->rank);
    t->hashing = p->hash && pthread_create(&t->hasher, NULL, hasher_main, p) == 0;
    if (p->hash && !t->hashing)
        return sov_fail(SOV_ERR_INTERNAL, "rank %d: cannot start the thread that hashes the data file", p->w->rank);
    return SOV_OK;
}

/* Waits for the hasher (which has every chunk unless the writing stopped early), then stops the encoders. */
static void stop_threads(pipeline *p, pipeline_threads *t, sov_status st) {
    if (t->hashing && st != SOV_OK) {
        pthread_mutex_lock(&p->lock);
        p->abort = 1;
        pthread_cond_broadcast(&p->changed);
        pthread_mutex_unlock(&p->lock);
    }
    if (t->hashing)
        pthread_join(t->hasher, NULL);
    pthread_mutex_lock(&p->lock);
    p->abort = 1;
    pthread_cond_broadcast(&p->changed);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < t->started; i++)
        pthread_join(t->encoders[i], NULL);
}

/* The marker that describes this rank's durable data file to rank 0 (commit.h); sha: its SHA-256 in hex, or "". */
static json_t *marker_of(const sov_ckpt_writer *w, const char *file, uint64_t bytes, json_t *chunks, const char *sha) {
    char id[17], digest[17];
    snprintf(id, sizeof id, "%016llx", (unsigned long long)w->save_id);
    snprintf(digest, sizeof digest, "%016llx", (unsigned long long)w->plan.replicated_digest);
    json_t *m = json_pack("{s:s, s:i, s:s, s:I, s:o, s:o, s:o, s:s}", "save_id", id, "rank", w->rank, "file", file,
                          "bytes", (json_int_t)bytes, "chunks", chunks, "buffers", sov_plan_buffers_json(&w->plan, 1),
                          "shards", sov_plan_shards_json(&w->plan), "replicated", digest);
    if (m && sha[0])
        json_object_set_new(m, "sha256", json_string(sha));
    return m;
}

static sov_status write_share(sov_ckpt_writer *w, const char *partial, json_t **marker) {
    char name[64], path[4300], sha[2 * SOV_SHA256_BYTES + 1] = "";
    snprintf(name, sizeof name, "rank-%d.bin", w->rank);
    snprintf(path, sizeof path, "%s/%s", partial, name);
    size_t njobs = 0, share = 0;
    chunk_job *jobs = plan_chunks(w, &njobs, &share);
    pipeline p = {.w = w, .jobs = jobs, .njobs = njobs, .nslots = SLOTS(w->opt.threads),
                  .while_copying = encoders_while_copying(w->opt.threads), .share = share,
                  .hash = w->opt.sign ? sov_sha256_new() : NULL};
    sov_stream out;
    sov_status st = !jobs || (w->opt.sign && !p.hash) ? SOV_ERR_NOMEM : sov_stream_open(&out, path);
    if (st != SOV_OK) {
        free(jobs);
        sov_sha256_free(p.hash);
        return sov_fail(st, "rank %d: %s", w->rank, st == SOV_ERR_NOMEM ? "out of memory" : sov_last_error());
    }
    pthread_mutex_init(&p.lock, NULL);
    pthread_cond_init(&p.changed, NULL);
    pipeline_threads threads = {0};
    encoder_arg args[MAX_THREADS];
    json_t *chunks = json_array();
    st = start_threads(&p, &threads, args);
    if (st == SOV_OK)
        st = write_chunks(&p, &out, chunks);
    stop_threads(&p, &threads, st);
    pthread_mutex_destroy(&p.lock);
    pthread_cond_destroy(&p.changed);
    free(jobs);
    if (st == SOV_OK && (st = sov_stream_close(&out)) != SOV_OK)
        st = sov_fail(st, "rank %d: %s", w->rank, sov_last_error());
    if (p.hash) {
        uint8_t digest[SOV_SHA256_BYTES];
        sov_sha256_final(p.hash, digest);
        sov_hex(digest, sizeof digest, sha);
        sov_sha256_free(p.hash);
    }
    if (st != SOV_OK) {
        sov_stream_discard(&out); /* a full disk gets its space back */
        json_decref(chunks);
        return st;
    }
    *marker = marker_of(w, name, out.end, chunks, sha);
    return SOV_OK;
}

/* The commit protocol's view of the save in flight (commit.h). */
static sov_commit commit_of(const sov_ckpt_writer *w, const char *partial, const char *final) {
    return (sov_commit){.dir = w->dir, .partial = partial, .final = final, .step = w->step, .rank = w->rank,
                        .world = w->world, .save_id = w->save_id, .timeout_s = w->opt.commit_timeout_s,
                        .sign = w->opt.sign, .signer = w->opt.signer};
}

/* Test hook: with SOVTRAIN_TEST_CKPT_HOLD=FILE, a writer whose data file is durable writes its pid to
 * FILE.rank<r> and then waits until FILE exists before reporting its part, so a test can kill a rank in the
 * middle of a save. */
static void test_hold(int rank) {
    const char *hold = getenv("SOVTRAIN_TEST_CKPT_HOLD");
    if (!hold || !*hold)
        return;
    char reached[4200];
    snprintf(reached, sizeof reached, "%s.rank%d", hold, rank);
    FILE *f = fopen(reached, "w");
    if (f) {
        fprintf(f, "%d\n", (int)getpid());
        fclose(f);
    }
    while (access(hold, F_OK) != 0)
        nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
}

/* Rank 0, a save whose metadata comes later: waits for sov_ckpt_commit_meta (as long as for the other ranks'
 * parts), then puts the metadata into the manifest. */
static sov_status await_meta(sov_ckpt_writer *w) {
    if (!w->meta_deferred)
        return SOV_OK;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)w->opt.commit_timeout_s;
    pthread_mutex_lock(&w->meta_lock);
    int timed_out = 0;
    while (!w->meta_given && !w->meta_abandoned && !timed_out)
        timed_out = pthread_cond_timedwait(&w->meta_changed, &w->meta_lock, &until) == ETIMEDOUT;
    json_t *meta = w->meta_given;
    w->meta_given = NULL;
    pthread_mutex_unlock(&w->meta_lock);
    if (!meta)
        return sov_fail(SOV_ERR_INVALID, "rank 0: the checkpoint of step %ld: its metadata %s (sov_ckpt_commit_meta); "
                        "the previous checkpoint stays latest", w->step,
                        w->meta_abandoned ? "never came: the writer was closed" : "did not come in time");
    json_object_set_new(w->manifest_base, "meta", meta);
    return SOV_OK;
}

/* Rank 0, an encrypted save: the data key wrapped by the operator's key (a key command runs here, off the
 * training's path), the metadata sealed, and the key that authenticates the manifest. */
static sov_status encrypt_manifest(sov_ckpt_writer *w, sov_key *mac_key) {
    json_t *entry = NULL, *meta = json_object_get(w->manifest_base, "meta");
    SOV_CHECK(sov_key_wrap(w->opt.key, &w->data_key, &entry));
    char id[17], *text = NULL, *sealed_meta = NULL;
    snprintf(id, sizeof id, "%016llx", (unsigned long long)w->save_id);
    sov_key meta_key;
    sov_status st = sov_derive_key(&w->data_key, w->save_id, "meta", &meta_key);
    if (st == SOV_OK && !json_is_null(meta))
        st = (text = json_dumps(meta, JSON_COMPACT | JSON_PRESERVE_ORDER)) ? sov_encrypt_text(&meta_key, text,
                                                                                               &sealed_meta)
                                                                          : SOV_ERR_NOMEM;
    if (st == SOV_OK)
        st = sov_derive_key(&w->data_key, w->save_id, "manifest", mac_key);
    json_t *enc = json_pack("{s:s, s:s, s:s, s:O, s:O, s:O, s:o}", "cipher", "aes-256-gcm", "kdf", "hkdf-sha256",
                            "save_id", id, "key_id", json_object_get(entry, "key_id"), "wrap",
                            json_object_get(entry, "wrap"), "wrapped_key", json_object_get(entry, "wrapped_key"),
                            "meta", sealed_meta ? json_string(sealed_meta) : json_null());
    if (st == SOV_OK && !enc)
        st = sov_fail(SOV_ERR_NOMEM, "rank 0: cannot build the manifest's encryption entry");
    if (st == SOV_OK) {
        json_object_set_new(w->manifest_base, "format_version", json_integer(SOV_CKPT_FORMAT_VERSION));
        json_object_set_new(w->manifest_base, "meta", json_null());
        json_object_set_new(w->manifest_base, "encryption", enc);
    } else {
        json_decref(enc);
    }
    if (text)
        sov_wipe(text, strlen(text));
    free(text);
    free(sealed_meta);
    sov_wipe(&meta_key, sizeof meta_key);
    json_decref(entry);
    return st;
}

static void *writer_main(void *arg) {
    sov_ckpt_writer *w = arg;
    char partial[4200], final[4200];
    step_paths(w, partial, final, sizeof partial);
    sov_commit c = commit_of(w, partial, final);
    sov_key mac_key;
    json_t *marker = NULL;
    sov_status st = sov_mkdir_p(partial);
    if (st == SOV_OK)
        st = write_share(w, partial, &marker);
    if (st == SOV_OK)
        test_hold(w->rank);
    if (st == SOV_OK)
        st = w->rank == 0 ? SOV_OK : sov_commit_report(&c, marker);
    if (st != SOV_OK && w->rank != 0)
        sov_commit_report_failure(&c, sov_last_error());
    if (st == SOV_OK && w->rank == 0)
        st = await_meta(w);
    if (st == SOV_OK && w->rank == 0 && w->sealed && (st = encrypt_manifest(w, &mac_key)) == SOV_OK)
        c.mac_key = &mac_key;
    if (st == SOV_OK && w->rank == 0)
        st = sov_commit_publish(&c, w->manifest_base, marker);
    sov_wipe(&mac_key, sizeof mac_key);
    json_decref(marker);
    w->save_seconds = sov_now() - w->started;
    if (st == SOV_OK && w->rank == 0)
        sov_commit_prune(&c, w->opt.keep); /* only now that the new checkpoint is durable and latest */
    w->status = st;
    if (st != SOV_OK)
        snprintf(w->error, sizeof w->error, "%s", sov_last_error());
    else
        snprintf(w->committed, sizeof w->committed, "%s", final);
    return NULL;
}

/* ---- the public calls ---- */

sov_status sov_ckpt_writer_open(sov_ckpt_writer **out, const char *dir, int rank, int world,
                                const sov_ckpt_options *options) {
    if (world < 1 || rank < 0 || rank >= world)
        return sov_fail(SOV_ERR_INVALID, "checkpoint writer: rank %d of a world of %d", rank, world);
    if (options->sign && rank == 0 && !options->signer)
        return sov_fail(SOV_ERR_INVALID, "checkpoint writer: signing needs rank 0's signer (options.signer)");
    if (options->key && world > 1 && !options->share_key)
        return sov_fail(SOV_ERR_INVALID, "checkpoint writer: encryption at %d ranks needs options.share_key (a "
                        "broadcast from rank 0) to give every rank each save's data key", world);
    sov_ckpt_writer *w = sov_calloc(1, sizeof *w);
    if (!w)
        return SOV_ERR_NOMEM;
    sov_snapshot_init(&w->snap);
    pthread_mutex_init(&w->meta_lock, NULL);
    pthread_cond_init(&w->meta_changed, NULL);
    snprintf(w->dir, sizeof w->dir, "%s", dir);
    w->rank = rank;
    w->world = world;
    w->opt = *options;
    if (w->opt.keep < 1)
        w->opt.keep = 1;
    w->opt.threads = w->opt.threads < 1 ? 1 : w->opt.threads > MAX_THREADS ? MAX_THREADS : w->opt.threads;
    if (w->opt.chunk_bytes < 4096 || w->opt.chunk_bytes > ((size_t)256 << 20))
        w->opt.chunk_bytes = SOV_CKPT_DEFAULT_CHUNK_BYTES;
    w->opt.chunk_bytes &= ~(size_t)3;
    if (w->opt.commit_timeout_s <= 0)
        w->opt.commit_timeout_s = 600;
    sov_status st = sov_mkdir_p(dir);
    for (int i = 0; st == SOV_OK && i < w->opt.threads; i++)
        st = sov_codec_create(&w->codecs[i], w->opt.chunk_bytes);
    w->slot_bytes = sov_stream_padded(sov_chunk_bound(w->opt.chunk_bytes) + SOV_SEAL_OVERHEAD);
    w->out_bytes = w->slot_bytes * (size_t)SLOTS(w->opt.threads);
    if (st == SOV_OK && !(w->out_memory = sov_io_alloc(w->out_bytes)))
        st = sov_fail(SOV_ERR_NOMEM, "rank %d: cannot allocate the checkpoint's output buffers (%zu MiB)", rank,
                      w->out_bytes >> 20);
    if (st != SOV_OK) {
        sov_ckpt_writer_close(w);
        return st;
    }
    *out = w;
    return SOV_OK;
}

sov_status sov_ckpt_wait(sov_ckpt_writer *w, char *path, size_t cap) {
    if (w->running) {
        pthread_join(w->thread, NULL);
        w->running = 0;
    }
    if (w->status != SOV_OK)
        return sov_fail(w->status, "%s", w->error);
    if (path && cap)
        snprintf(path, cap, "%s", w->committed);
    return SOV_OK;
}

double sov_ckpt_save_seconds(const sov_ckpt_writer *w) { return w->save_seconds; }

sov_status sov_ckpt_defer_meta(sov_ckpt_writer *w) {
    if (w->running)
        return sov_fail(SOV_ERR_INVALID, "rank %d: checkpoint: defer_meta while a save is in flight (wait first)",
                        w->rank);
    w->defer_next = 1;
    return SOV_OK;
}

sov_status sov_ckpt_commit_meta(sov_ckpt_writer *w, const char *meta_json) {
    if (w->rank != 0)
        return SOV_OK; /* only rank 0's metadata goes into the manifest */
    json_error_t err;
    json_t *meta = json_loads(meta_json ? meta_json : "", 0, &err);
    if (!json_is_object(meta)) {
        json_decref(meta);
        return sov_fail(SOV_ERR_INVALID, "rank %d: checkpoint of step %ld: the metadata is not a JSON object (%s)",
                        w->rank, w->step, err.text);
    }
    pthread_mutex_lock(&w->meta_lock);
    int expected = w->meta_deferred && !w->meta_given;
    if (expected) {
        w->meta_given = meta;
        pthread_cond_broadcast(&w->meta_changed);
    }
    pthread_mutex_unlock(&w->meta_lock);
    if (!expected) {
        json_decref(meta);
        return sov_fail(SOV_ERR_INVALID, "rank %d: checkpoint: commit_meta without a save started after "
                        "sov_ckpt_defer_meta, or twice for one save", w->rank);
    }
    return SOV_OK;
}

/* Rank 0's part of the manifest: all but the ranks' own buffers, shards and files, which their markers bring. */
static sov_status manifest_base(const sov_ckpt_writer *w, const sov_ckpt_state *s, json_t **out) {
    json_t *meta = json_null();
    if (s->meta_json) {
        json_error_t err;
        meta = json_loads(s->meta_json, 0, &err);
        if (!json_is_object(meta)) {
            json_decref(meta);
            return sov_fail(SOV_ERR_INVALID, "checkpoint of step %ld: meta_json is not a JSON object (%s)", s->step,
                            err.text);
        }
    }
    *out = json_pack("{s:s, s:i, s:s, s:I, s:i, s:I, s:I, s:o, s:o, s:o}", "format", "sovtrain-checkpoint",
                     "format_version", SOV_CKPT_FORMAT_VERSION_PLAIN, "sovtrain_version", sov_version(), "step",
                     (json_int_t)s->step, "world_size", w->world, "created", (json_int_t)time(NULL), "chunk_bytes",
                     (json_int_t)w->opt.chunk_bytes, "buffers", sov_plan_buffers_json(&w->plan, 0), "tensors",
                     sov_plan_replicated_json(&w->plan), "meta", meta);
    return *out ? SOV_OK : sov_fail(SOV_ERR_NOMEM, "checkpoint of step %ld: cannot build the manifest", s->step);
}

static void free_staging(sov_ckpt_writer *w) {
    if (w->opt.free_host)
        w->opt.free_host(w->opt.memory_ctx, w->staging);
    else
        free(w->staging);
    w->staging = NULL;
    w->staging_cap = 0;
}

static sov_status reserve_staging(sov_ckpt_writer *w, size_t share) {
    if (share <= w->staging_cap)
        return SOV_OK;
    free_staging(w);
    w->staging = w->opt.alloc_host ? w->opt.alloc_host(w->opt.memory_ctx, share) : sov_aligned_alloc(share);
    if (!w->staging)
        return sov_fail(SOV_ERR_NOMEM, "rank %d: cannot allocate %zu MiB of staging for the snapshot", w->rank,
                        share >> 20);
    w->staging_cap = share;
    return SOV_OK;
}

sov_status sov_ckpt_writer_reserve(sov_ckpt_writer *w, const sov_ckpt_state *s) {
    if (w->running)
        return sov_fail(SOV_ERR_INVALID, "checkpoint: reserve while a save is in flight");
    sov_plan plan;
    SOV_CHECK(sov_plan_make(&plan, s, w->rank, w->world));
    sov_status st = reserve_staging(w, plan.share_bytes);
    sov_plan_free(&plan);
    return st;
}

/* The snapshot's unit of progress. Each span is one sov_copy_to_staging, which streams (copy.h); large spans keep
 * the locking between them rare. */
#define SNAPSHOT_BLOCK ((size_t)64 << 20)

static sov_status start_writer(void *arg) {
    sov_ckpt_writer *w = arg;
    if (pthread_create(&w->thread, NULL, writer_main, w) != 0)
        return sov_fail(SOV_ERR_INTERNAL, "rank %d: cannot start the checkpoint writer thread", w->rank);
    w->running = 1;
    return SOV_OK;
}

static sov_status copy_host(void *ctx, void *dst, const void *src, size_t bytes) {
    (void)ctx;
    sov_copy_to_staging(dst, src, bytes);
    return SOV_OK;
}

/* The snapshot: one copy of this rank's share (`share` bytes, as planned) into staging (two threads copy no faster
 * here). A state in host memory larger than a block is copied from the back while the writer's encoders start on
 * the front, reading the state itself (snapshot.h): the disk gets its first chunk sooner, and the stall ends when
 * the two meet. A smaller one is copied whole first (its copy is short, and threads starting beside it would only
 * slow it down). From a GPU, one device-to-host copy per piece into pinned memory, front to back, and the writer
 * starts after the first. */
static sov_status add_to_snapshot(void *snap, const void *src, size_t at, size_t bytes) {
    return sov_snapshot_add_at(snap, src, at, bytes);
}

static sov_status snapshot(sov_ckpt_writer *w, size_t share) {
    int from_back = !w->opt.copy_to_host && share > SNAPSHOT_BLOCK;
    sov_snapshot_begin(&w->snap, w->staging, share, from_back);
    for (int p = 0; p < w->plan.npieces; p++)
        SOV_CHECK(sov_plan_sources_of(&w->plan, p, add_to_snapshot, &w->snap));
    if (from_back) {
        SOV_CHECK(start_writer(w));
        sov_snapshot_copy_backward(&w->snap, copy_host, NULL, SNAPSHOT_BLOCK);
        return SOV_OK;
    }
    if (w->opt.copy_to_host)
        return sov_snapshot_copy_forward(&w->snap, w->opt.copy_to_host, w->opt.memory_ctx, 0, SIZE_MAX, start_writer,
                                         w);
    return sov_snapshot_copy_forward(&w->snap, copy_host, NULL, share, SNAPSHOT_BLOCK, start_writer, w);
}

/* An encrypted save's keys: rank 0 makes a fresh data key and shares it with every rank (a collective: each rank
 * calls this in every save, even one that then fails), and each rank derives its data file's key. */
static sov_status save_keys(sov_ckpt_writer *w, uint64_t save_id) {
    w->sealed = w->opt.key != NULL;
    if (!w->sealed)
        return SOV_OK;
    sov_status st = w->rank == 0 ? sov_random_bytes(w->data_key.bytes, SOV_KEY_BYTES) : SOV_OK;
    uint8_t msg[1 + SOV_KEY_BYTES] = {st == SOV_OK}; /* a rank 0 without a key tells the others so */
    memcpy(msg + 1, w->data_key.bytes, SOV_KEY_BYTES);
    if (w->world > 1 && w->opt.share_key(w->opt.share_ctx, msg, sizeof msg) != SOV_OK)
        st = sov_fail(SOV_ERR_COMM, "rank %d: sharing the checkpoint's data key failed: %s", w->rank, sov_last_error());
    else if (st == SOV_OK && !msg[0])
        st = sov_fail(SOV_ERR_INTERNAL, "rank %d: rank 0 could not make the checkpoint's data key", w->rank);
    memcpy(w->data_key.bytes, msg + 1, SOV_KEY_BYTES);
    sov_wipe(msg, sizeof msg);
    char file[64];
    snprintf(file, sizeof file, "file:rank-%d.bin", w->rank);
    return st == SOV_OK ? sov_derive_key(&w->data_key, save_id, file, &w->file_key) : st;
}

sov_status sov_ckpt_save(sov_ckpt_writer *w, const sov_ckpt_state *s, uint64_t save_id, double *stall_s,
                         double *waited_s) {
    double t0 = sov_now();
    sov_status prev = sov_ckpt_wait(w, NULL, 0);
    double t1 = sov_now();
    if (waited_s)
        *waited_s = t1 - t0;
    w->status = SOV_OK; /* a failure is reported once, by the wait that found it */
    sov_status keyed = save_keys(w, save_id);
    if (prev != SOV_OK)
        return prev;
    if (keyed != SOV_OK)
        return keyed;
    json_decref(w->manifest_base);
    w->manifest_base = NULL;
    sov_plan_free(&w->plan);
    w->started = t1;
    w->step = s->step;
    w->save_id = save_id;
    pthread_mutex_lock(&w->meta_lock);
    json_decref(w->meta_given);
    w->meta_given = NULL;
    w->meta_deferred = w->defer_next && w->rank == 0;
    w->defer_next = 0;
    pthread_mutex_unlock(&w->meta_lock);
    w->status = SOV_OK;
    w->committed[0] = '\0';
    /* A state this rank cannot save fails the save like a failed snapshot: rank 0 hears of it, not waits for it. */
    const char *stage = "the checkpoint";
    sov_status st = sov_plan_make(&w->plan, s, w->rank, w->world);
    if (st == SOV_OK)
        st = reserve_staging(w, w->plan.share_bytes);
    if (st == SOV_OK && w->rank == 0)
        st = manifest_base(w, s, &w->manifest_base);
    if (st == SOV_OK) {
        stage = "snapshot for the checkpoint";
        st = snapshot(w, w->plan.share_bytes);
    }
    if (stall_s)
        *stall_s = sov_now() - t1;
    if (st != SOV_OK) { /* a writer already started gives up on this save; its failure is this one, reported once */
        char why[1024];
        snprintf(why, sizeof why, "%s", sov_last_error());
        if (w->running) {
            sov_ckpt_wait(w, NULL, 0);
        } else if (w->rank != 0) { /* no writer to tell rank 0, which would wait for this rank's part */
            char partial[4200], final[4200];
            step_paths(w, partial, final, sizeof partial);
            sov_commit c = commit_of(w, partial, final);
            if (sov_mkdir_p(partial) == SOV_OK)
                sov_commit_report_failure(&c, why);
        }
        w->status = SOV_OK;
        return sov_fail(st, "rank %d: %s of step %ld: %s", w->rank, stage, s->step, why);
    }
    return SOV_OK;
}

void sov_ckpt_writer_close(sov_ckpt_writer *w) {
    if (!w)
        return;
    pthread_mutex_lock(&w->meta_lock);
    w->meta_abandoned = 1; /* a commit still waiting for its metadata gives up */
    pthread_cond_broadcast(&w->meta_changed);
    pthread_mutex_unlock(&w->meta_lock);
    sov_ckpt_wait(w, NULL, 0);
    for (int i = 0; i < MAX_THREADS; i++)
        sov_codec_destroy(w->codecs[i]);
    sov_io_free(w->out_memory, w->out_bytes);
    json_decref(w->manifest_base);
    sov_plan_free(&w->plan);
    free_staging(w);
    sov_snapshot_destroy(&w->snap);
    json_decref(w->meta_given);
    sov_wipe(&w->data_key, sizeof w->data_key);
    sov_wipe(&w->file_key, sizeof w->file_key);
    pthread_mutex_destroy(&w->meta_lock);
    pthread_cond_destroy(&w->meta_changed);
    free(w);
}

/* commit.c: see commit.h. */
#include "catalog.h"
#include "commit.h"
#include "fsio.h"
#include "signing.h"
#include <sovtrain/ckpt.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

sov_status sov_commit_report(const sov_commit *c, json_t *marker) {
    char name[64];
    snprintf(name, sizeof name, "rank-%d.json", c->rank);
    char *text = json_dumps(marker, JSON_COMPACT);
    if (!text)
        return sov_fail(SOV_ERR_NOMEM, "rank %d: cannot serialise %s", c->rank, name);
    sov_status st = sov_write_file_atomic(c->partial, name, text, strlen(text));
    free(text);
    return st;
}

void sov_commit_report_failure(const sov_commit *c, const char *message) {
    char name[64], text[1200];
    snprintf(name, sizeof name, "rank-%d.failed", c->rank);
    int n = snprintf(text, sizeof text, "%016llx\n%s\n", (unsigned long long)c->save_id, message);
    sov_write_file_atomic(c->partial, name, text, (size_t)n < sizeof text ? (size_t)n : sizeof text - 1);
}

/* The failure rank r reported for this save, if any, into msg. */
static int reported_failure(const sov_commit *c, int r, char *msg, size_t cap) {
    char path[4300], *text = NULL, id[17];
    size_t n;
    snprintf(path, sizeof path, "%s/rank-%d.failed", c->partial, r);
    if (sov_read_file(path, 4096, &text, &n) != SOV_OK)
        return 0;
    snprintf(id, sizeof id, "%016llx", (unsigned long long)c->save_id);
    int ours = n > 17 && strncmp(text, id, 16) == 0;
    if (ours)
        snprintf(msg, cap, "%.*s", (int)strcspn(text + 17, "\n"), text + 17);
    free(text);
    return ours;
}

/* Waits until every other rank's marker for this save is there; returns them, and rank 0's own (`mine`, which it
 * need not write: only rank 0 reads markers), in rank order (a JSON array). */
static sov_status gather_markers(const sov_commit *c, json_t *mine, json_t **files) {
    char id[17];
    snprintf(id, sizeof id, "%016llx", (unsigned long long)c->save_id);
    *files = json_array();
    json_object_del(mine, "save_id");
    json_object_del(mine, "rank");
    json_array_append(*files, mine);
    double start = sov_now();
    for (int r = 1; r < c->world; r++) {
        char path[4300];
        snprintf(path, sizeof path, "%s/rank-%d.json", c->partial, r);
        for (;;) {
            json_t *m = json_load_file(path, 0, NULL);
            const char *mid = m ? json_string_value(json_object_get(m, "save_id")) : NULL;
            if (mid && strcmp(mid, id) == 0) {
                json_object_del(m, "save_id");
                json_object_del(m, "rank");
                json_array_append_new(*files, m);
                break;
            }
            json_decref(m); /* absent, or a crashed earlier attempt's: keep waiting */
            char why[1024];
            if (reported_failure(c, r, why, sizeof why)) {
                json_decref(*files);
                return sov_fail(SOV_ERR_IO, "rank 0: rank %d could not write its part of step %ld (%s); the "
                                "previous checkpoint stays latest", r, c->step, why);
            }
            if (sov_now() - start > c->timeout_s) {
                json_decref(*files);
                return sov_fail(SOV_ERR_IO, "rank 0: rank %d never reported its part of step %ld durable within %.0f s "
                                "(%s missing); the checkpoint is left incomplete and the previous one stays latest",
                                r, c->step, c->timeout_s, path);
            }
            nanosleep(&(struct timespec){.tv_nsec = 2 * 1000 * 1000}, NULL);
        }
    }
    return SOV_OK;
}

/* Rank r's shards into the sharded tensors met so far: `sharded` maps names to the entries, which `order` holds in
 * the order they were met. */
static sov_status merge_shards(const sov_commit *c, int r, json_t *shards, json_t *sharded, json_t *order) {
    size_t i;
    json_t *e;
    json_array_foreach(shards, i, e) {
        json_t *t = json_object_get(e, "tensor");
        const char *name = json_string_value(json_object_get(t, "name"));
        json_t *have = name ? json_object_get(sharded, name) : NULL;
        if (!name)
            return sov_fail(SOV_ERR_INTERNAL, "rank 0: rank %d's marker lists a shard without its tensor", r);
        if (!have) {
            have = json_pack("{s:O, s:O, s:O, s:[]}", "name", json_object_get(t, "name"), "dtype",
                             json_object_get(t, "dtype"), "shape", json_object_get(t, "shape"), "shards");
            json_object_set_new(sharded, name, have);
            json_array_append(order, have);
        } else if (!json_equal(json_object_get(have, "dtype"), json_object_get(t, "dtype")) ||
                   !json_equal(json_object_get(have, "shape"), json_object_get(t, "shape"))) {
            return sov_fail(SOV_ERR_INVALID, "rank 0: the checkpoint of step %ld: rank %d gives sharded tensor \"%s\" "
                            "another dtype or shape than a lower rank; the previous checkpoint stays latest", c->step,
                            r, name);
        }
        json_array_append(json_object_get(have, "shards"), json_object_get(e, "shard"));
    }
    return SOV_OK;
}

/* The ranks' own parts, from their markers, into the manifest: their buffers and the shards of sharded tensors.
 * Each marker keeps only what describes its file. Every rank must hold the same replicated tensors (names, dtypes
 * and shapes: rank 0's digest of them), and the shards of each sharded tensor must tile it (sov_catalog checks). */
static sov_status merge_parts(const sov_commit *c, json_t *m, json_t *files) {
    json_t *buffers = json_object_get(m, "buffers"), *tensors = json_object_get(m, "tensors"), *f;
    json_t *sharded = json_object(), *order = json_array();
    char digest[32]; /* rank 0's, kept: each marker's copy is removed as it is merged */
    const char *first = json_string_value(json_object_get(json_array_get(files, 0), "replicated"));
    snprintf(digest, sizeof digest, "%s", first ? first : "");
    size_t r;
    sov_status st = SOV_OK;
    json_array_foreach(files, r, f) {
        const char *mine = json_string_value(json_object_get(f, "replicated"));
        if (st == SOV_OK && (!mine || !*digest || strcmp(mine, digest) != 0))
            st = sov_fail(SOV_ERR_INVALID, "rank 0: the checkpoint of step %ld: rank %zu's replicated tensors differ "
                          "from rank 0's (names, dtypes or shapes); the previous checkpoint stays latest", c->step, r);
        if (st == SOV_OK)
            json_array_extend(buffers, json_object_get(f, "buffers"));
        if (st == SOV_OK)
            st = merge_shards(c, (int)r, json_object_get(f, "shards"), sharded, order);
        json_object_del(f, "buffers");
        json_object_del(f, "shards");
        json_object_del(f, "replicated");
    }
    json_array_extend(tensors, order);
    json_decref(order);
    json_decref(sharded);
    return st;
}

/* The assembled manifest must read back: every shard in its buffer, the shards of each tensor tiling it. */
static sov_status check_assembled(const sov_commit *c, const json_t *m) {
    char where[128];
    snprintf(where, sizeof where, "rank 0: the checkpoint of step %ld", c->step);
    sov_catalog cat;
    sov_status st = sov_catalog_from_manifest(m, SOV_CKPT_FORMAT_VERSION, where, &cat);
    if (st == SOV_OK)
        sov_catalog_free(&cat);
    else
        st = sov_fail(SOV_ERR_INVALID, "%s; the previous checkpoint stays latest", sov_last_error());
    return st;
}

/* Signing: each marker's "sha256" of its data file, taken out of it (the manifest lists no digests) into files,
 * which has room for every marker and the manifest. */
static sov_status take_digests(const sov_commit *c, json_t *markers, sov_signed_file *files) {
    size_t r;
    json_t *f;
    json_array_foreach(markers, r, f) {
        const char *name = json_string_value(json_object_get(f, "file"));
        const char *hex = json_string_value(json_object_get(f, "sha256"));
        if (!name || !sov_unhex(hex, files[r].sha256, SOV_SHA256_BYTES))
            return sov_fail(SOV_ERR_INVALID, "rank 0: the checkpoint of step %ld: rank %zu's part has no SHA-256 to "
                            "sign (every rank must set options.sign); the previous checkpoint stays latest", c->step, r);
        snprintf(files[r].name, sizeof files[r].name, "%s", name);
        json_object_del(f, "sha256");
    }
    return SOV_OK;
}

/* model.sig over the data files (their digests in `files`) and the manifest text, into the partial directory. */
static sov_status write_signature(const sov_commit *c, sov_signed_file *files, size_t n, const char *manifest,
                                  size_t manifest_n) {
    snprintf(files[n].name, sizeof files[n].name, "manifest.json");
    sov_sha256 *h = sov_sha256_new();
    if (!h)
        return sov_fail(SOV_ERR_NOMEM, "rank 0: out of memory signing the checkpoint");
    sov_sha256_update(h, manifest, manifest_n);
    sov_sha256_final(h, files[n].sha256);
    sov_sha256_free(h);
    const char *subject = strrchr(c->final, '/');
    char *bundle = NULL;
    SOV_CHECK(sov_sign_files(c->signer, subject ? subject + 1 : c->final, files, (int)n + 1, &bundle));
    sov_status st = sov_write_file_atomic(c->partial, SOV_SIGNATURE_FILE, bundle, strlen(bundle));
    free(bundle);
    return st;
}

static sov_status write_manifest(const sov_commit *c, const json_t *manifest_base, json_t *files) {
    json_t *m = json_deep_copy(manifest_base);
    size_t nfiles = json_array_size(files);
    sov_signed_file *signed_files = c->sign ? sov_calloc(nfiles + 1, sizeof *signed_files) : NULL;
    sov_status st = c->sign && !signed_files ? SOV_ERR_NOMEM : SOV_OK;
    if (st == SOV_OK && c->sign)
        st = take_digests(c, files, signed_files);
    if (st == SOV_OK)
        st = merge_parts(c, m, files);
    if (st == SOV_OK)
        st = check_assembled(c, m);
    if (st != SOV_OK) {
        json_decref(m);
        json_decref(files);
        free(signed_files);
        return st;
    }
    json_object_set_new(m, "files", files);
    char *text = NULL;
    size_t n = 0;
    st = sov_manifest_store(c->partial, m, c->mac_key, &text, &n);
    json_decref(m);
    if (st == SOV_OK && c->sign)
        st = write_signature(c, signed_files, nfiles, text, n);
    free(text);
    free(signed_files);
    return st;
}

/* Keeps the checkpoint just committed and the keep-1 newest before it; removes older ones and every leftover
 * partial directory (the other ranks are past this save: the trainer synchronises before each save). Checkpoints
 * of higher steps belong to a timeline a resume abandoned (they were skipped as damaged, or the job was restarted
 * from an older one) and are left alone: nothing is deleted that a resume did not choose to replace. */
void sov_commit_prune(const sov_commit *c, int keep) {
    long steps[4096];
    int n = sov_ckpt_list_steps(c->dir, steps, 4096), kept = 0;
    char path[4400];
    for (int i = 0; i < n; i++) {
        if (steps[i] > c->step)
            continue;
        if (++kept <= keep)
            continue;
        snprintf(path, sizeof path, "%s/step-%ld", c->dir, steps[i]);
        sov_remove_dir(path);
    }
    DIR *d = opendir(c->dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (strncmp(e->d_name, "step-", 5) == 0 && len > 8 && strcmp(e->d_name + len - 8, ".partial") == 0) {
            snprintf(path, sizeof path, "%s/%s", c->dir, e->d_name);
            sov_remove_dir(path);
        }
    }
    if (d)
        closedir(d);
}

/* Removes what is not this save's: markers, and files a crashed earlier attempt (maybe of a larger job) left. */
static void remove_strays(const sov_commit *c) {
    DIR *d = opendir(c->partial);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        int rank = -1, len = 0;
        if (sscanf(e->d_name, "rank-%d.bin%n", &rank, &len) == 1 && e->d_name[len] == '\0' && rank >= 0 &&
            rank < c->world)
            continue;
        if (e->d_name[0] == '.')
            continue;
        char path[4600];
        snprintf(path, sizeof path, "%s/%s", c->partial, e->d_name);
        unlink(path);
    }
    if (d)
        closedir(d);
}

sov_status sov_commit_publish(const sov_commit *c, const json_t *manifest_base, json_t *mine) {
    json_t *files;
    SOV_CHECK(gather_markers(c, mine, &files));
    remove_strays(c);
    SOV_CHECK(write_manifest(c, manifest_base, files)); /* atomically: its last step is the directory's fsync */
    struct stat sb;
    char old[4300] = "";
    if (stat(c->final, &sb) == 0) { /* the same step saved before (a resumed job): move it aside until replaced */
        snprintf(old, sizeof old, "%s.replaced", c->final);
        sov_remove_dir(old);
        if (rename(c->final, old) != 0)
            return sov_fail(SOV_ERR_IO, "rank 0: moving %s aside: %s", c->final, strerror(errno));
    }
    if (rename(c->partial, c->final) != 0)
        return sov_fail(SOV_ERR_IO, "rank 0: renaming %s to %s: %s", c->partial, c->final, strerror(errno));
    if (old[0])
        sov_remove_dir(old);
    SOV_CHECK(sov_fsync_path(c->dir));
    char latest[64];
    int n = snprintf(latest, sizeof latest, "step-%ld\n", c->step);
    return sov_write_file_atomic(c->dir, "latest", latest, (size_t)n);
}

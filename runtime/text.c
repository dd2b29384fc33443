/* text.c: a byte-stream dataset for language models (see data.h). */
#include "data.h"
#include "rng.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TEXT_MAX_BYTES ((size_t)1 << 32) /* 4 GiB: windows are indexed with 32-bit-safe arithmetic below */

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int has_suffix(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Appends the whole of `path` to t->bytes. */
static sov_status append_file(sov_text *t, const char *path, size_t *cap) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return sov_fail(SOV_ERR_IO, "--data: cannot open %s: %s", path, strerror(errno));
    char buf[1 << 16];
    size_t n;
    sov_status st = SOV_OK;
    while (st == SOV_OK && (n = fread(buf, 1, sizeof buf, f)) > 0) {
        if (t->len + n > TEXT_MAX_BYTES) {
            st = sov_fail(SOV_ERR_INVALID, "--data: more than %zu bytes of text", TEXT_MAX_BYTES);
            break;
        }
        if (t->len + n > *cap) {
            size_t grown_cap = *cap ? 2 * *cap : (size_t)1 << 20;
            while (grown_cap < t->len + n)
                grown_cap *= 2;
            uint8_t *grown = realloc(t->bytes, grown_cap);
            if (!grown) {
                st = sov_fail(SOV_ERR_NOMEM, "--data: cannot hold %zu bytes of text", grown_cap);
                break;
            }
            t->bytes = grown;
            *cap = grown_cap;
        }
        memcpy(t->bytes + t->len, buf, n);
        t->len += n;
    }
    if (st == SOV_OK && ferror(f))
        st = sov_fail(SOV_ERR_IO, "--data: reading %s: %s", path, strerror(errno));
    fclose(f);
    return st;
}

/* The files of a directory that make the corpus: its *.u8 files (fortune's UTF-8 texts), else every regular file,
 * in name order. */
static sov_status list_dir(const char *dir, char ***names, size_t *n) {
    DIR *d = opendir(dir);
    if (!d)
        return sov_fail(SOV_ERR_IO, "--data: cannot open directory %s: %s", dir, strerror(errno));
    size_t cap = 0, count = 0, u8 = 0;
    char **list = NULL;
    struct dirent *e;
    sov_status st = SOV_OK;
    while (st == SOV_OK && (e = readdir(d))) {
        char path[4400];
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (e->d_name[0] == '.' || stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        if (count == cap) {
            cap = cap ? 2 * cap : 64;
            char **grown = realloc(list, cap * sizeof *list);
            if (!grown) {
                st = SOV_ERR_NOMEM;
                break;
            }
            list = grown;
        }
        if (!(list[count] = strdup(e->d_name))) {
            st = SOV_ERR_NOMEM;
            break;
        }
        u8 += has_suffix(e->d_name, ".u8");
        count++;
    }
    closedir(d);
    size_t kept = 0;
    for (size_t i = 0; i < count; i++) {
        if (u8 && !has_suffix(list[i], ".u8"))
            free(list[i]);
        else
            list[kept++] = list[i];
    }
    if (kept)
        qsort(list, kept, sizeof *list, by_name);
    *names = list;
    *n = kept;
    return st;
}

sov_status sov_text_load(const char *path, sov_text *t) {
    memset(t, 0, sizeof *t);
    struct stat sb;
    if (stat(path, &sb) != 0)
        return sov_fail(SOV_ERR_IO, "--data %s: %s (the default corpus comes from Debian's fortunes package)", path,
                        strerror(errno));
    size_t cap = 0;
    sov_status st = SOV_OK;
    if (S_ISDIR(sb.st_mode)) {
        char **names = NULL;
        size_t n = 0;
        st = list_dir(path, &names, &n);
        for (size_t i = 0; i < n; i++) {
            char file[4400];
            snprintf(file, sizeof file, "%s/%s", path, names[i]);
            if (st == SOV_OK)
                st = append_file(t, file, &cap);
            free(names[i]);
        }
        free(names);
    } else {
        st = append_file(t, path, &cap);
    }
    t->train_len = t->len / 20 * 19; /* 95 % train, the rest validation */
    if (st == SOV_OK && (t->len < 1024 || t->len - t->train_len < 256))
        st = sov_fail(SOV_ERR_INVALID, "--data %s: %zu bytes of text, too little for a 95/5 train/validation split "
                      "(at least 1 KiB)", path, t->len);
    if (st != SOV_OK)
        sov_text_free(t);
    return st;
}

void sov_text_free(sov_text *t) {
    free(t->bytes);
    memset(t, 0, sizeof *t);
}

sov_status sov_text_check_context(const sov_text *t, int context) {
    if ((size_t)context + 1 > t->train_len || (size_t)context + 1 > t->len - t->train_len)
        return sov_fail(SOV_ERR_INVALID, "--context %d: the text has %zu training and %zu validation bytes, fewer "
                        "than one window of context+1", context, t->train_len, t->len - t->train_len);
    return SOV_OK;
}

/* Window i of the validation split, or sample `global` of training step `step`: inputs and next-byte targets. */
static void window(const uint8_t *src, int context, int32_t *tokens, int32_t *targets) {
    for (int k = 0; k < context; k++) {
        tokens[k] = src[k];
        targets[k] = src[k + 1];
    }
}

void sov_text_train_batch(const sov_text *t, uint64_t seed, long step, int global_batch, int rank, int local_batch,
                          int context, int32_t *tokens, int32_t *targets) {
    uint64_t starts = t->train_len - (size_t)context; /* s in [0, train_len - context - 1] */
    for (int i = 0; i < local_batch; i++) {
        uint64_t global = (uint64_t)step * (uint64_t)global_batch + (uint64_t)rank * (uint64_t)local_batch + (uint64_t)i;
        sov_rng rng; /* one stream per global sample: any world size draws the same windows */
        sov_rng_seed(&rng, seed ^ 0x7465787477696e64ULL, global);
        uint64_t s = sov_rng_below(&rng, starts);
        window(t->bytes + s, context, tokens + (size_t)i * context, targets + (size_t)i * context);
    }
}

int sov_text_val_windows(const sov_text *t, int context) {
    size_t n = (t->len - t->train_len - 1) / (size_t)context;
    return n > 0x7fffffff ? 0x7fffffff : (int)n;
}

void sov_text_val_batch(const sov_text *t, int first, int n, int context, int32_t *tokens, int32_t *targets) {
    const uint8_t *val = t->bytes + t->train_len;
    for (int i = 0; i < n; i++)
        window(val + (size_t)(first + i) * context, context, tokens + (size_t)i * context,
               targets + (size_t)i * context);
}

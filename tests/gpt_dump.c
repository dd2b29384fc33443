/* gpt_dump DIR: one GPT train_step on a fixed model and batch, written out for an independent implementation to
 * check (tests/gpt_torch_check.py):
 *   DIR/config.json          the model's shape and the batch size
 *   DIR/params.safetensors   the parameters (F32, by tensor name)
 *   DIR/grads.safetensors    d mean loss / d parameters, same names
 *   DIR/tokens.i32           n * context input tokens, int32 little-endian
 *   DIR/targets.i32          n * context targets
 *   DIR/loss.txt             the mean loss */
#include "rng.h"
#include "device.h"
#include <sovtrain/runtime.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { V = 256, T = 16, C = 32, NH = 4, L = 2, B = 2 };

static void put_u64le(FILE *f, uint64_t v) {
    for (int i = 0; i < 8; i++)
        fputc((int)(v >> (8 * i)) & 0xff, f);
}

static void put_u32le(FILE *f, uint32_t v) {
    for (int i = 0; i < 4; i++)
        fputc((int)(v >> (8 * i)) & 0xff, f);
}

/* safetensors: 8-byte little-endian header length, a JSON header (padded with spaces to 8 bytes) naming each
 * tensor's dtype, shape and [begin, end) byte offsets into the data that follows. */
static int write_safetensors(const char *path, const sov_model *m, const float *data) {
    size_t cap = 256 * (size_t)m->num_tensors + 64, len = 0;
    char *header = malloc(cap);
    if (!header)
        return -1;
    len += (size_t)snprintf(header + len, cap - len, "{");
    for (int t = 0; t < m->num_tensors; t++) {
        const sov_tensor *ten = &m->tensors[t];
        len += (size_t)snprintf(header + len, cap - len, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[", t ? "," : "",
                                ten->name);
        for (int d = 0; d < ten->ndim; d++)
            len += (size_t)snprintf(header + len, cap - len, "%s%lld", d ? "," : "", (long long)ten->shape[d]);
        len += (size_t)snprintf(header + len, cap - len, "],\"data_offsets\":[%zu,%zu]}", ten->offset * 4,
                                (ten->offset + ten->count) * 4);
    }
    len += (size_t)snprintf(header + len, cap - len, "}");
    while (len % 8)
        header[len++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(header);
        return -1;
    }
    put_u64le(f, len);
    fwrite(header, 1, len, f);
    free(header);
    for (size_t i = 0; i < m->num_params; i++) { /* the tensors tile the flat buffer in order */
        uint32_t bits;
        memcpy(&bits, &data[i], sizeof bits);
        put_u32le(f, bits);
    }
    return fclose(f) == 0 ? 0 : -1;
}

static int write_i32(const char *path, const int32_t *v, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    for (size_t i = 0; i < n; i++)
        put_u32le(f, (uint32_t)v[i]);
    return fclose(f) == 0 ? 0 : -1;
}

/* This shape as the GPT's settings: text, in the order of its table. */
static int gpt_settings(const char **values, char (*text)[16]) {
    const sov_model_ops *ops = sov_model_find("gpt");
    if (ops->num_settings != 4)
        return -1;
    for (int j = 0; j < 4; j++) {
        const char *name = ops->settings[j].name;
        int v = strcmp(name, "layers") == 0 ? L : strcmp(name, "heads") == 0 ? NH : strcmp(name, "width") == 0 ? C
              : strcmp(name, "context") == 0 ? T : -1;
        if (v < 0)
            return -1;
        snprintf(text[j], sizeof text[j], "%d", v);
        values[j] = text[j];
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: gpt_dump DIR\n");
        return 2;
    }
    char text[4][16];
    const char *settings[4];
    if (gpt_settings(settings, text) != 0) {
        fprintf(stderr, "gpt_dump: the gpt model's settings are not layers, heads, width and context\n");
        return 1;
    }
    sov_model_config cfg = {.classes = V, .max_batch = B, .values = settings};
    sov_model *m;
    if (sov_model_create("gpt", &cfg, NULL, &m) != SOV_OK) {
        fprintf(stderr, "gpt_dump: %s\n", sov_last_error());
        return 1;
    }
    m->ops->init(m, 2024);
    /* Perturb GPT-2's init so LayerNorm weights are not 1, biases not 0, and activations not near-uniform. */
    sov_rng rng;
    sov_rng_seed(&rng, 99, 0);
    for (size_t i = 0; i < m->num_params; i++)
        m->params[i] += 0.2f * (sov_rng_uniform(&rng) - 0.5f);
    /* A byte stream cut into sequences: each target is the next byte. */
    static int32_t stream[B * T + 1], tokens[B * T], targets[B * T];
    for (int i = 0; i < B * T + 1; i++)
        stream[i] = (int32_t)sov_rng_below(&rng, V);
    for (int i = 0; i < B * T; i++)
        tokens[i] = stream[i], targets[i] = stream[i + 1];
    float loss;
    sov_batch batch = {.n = B, .tokens = tokens, .y = targets};
    if (m->ops->train_step(m, &batch, &loss, NULL) != SOV_OK) {
        fprintf(stderr, "gpt_dump: %s\n", sov_last_error());
        return 1;
    }
    char path[4096];
    int bad = 0;
    snprintf(path, sizeof path, "%s/params.safetensors", argv[1]);
    bad |= write_safetensors(path, m, m->params);
    snprintf(path, sizeof path, "%s/grads.safetensors", argv[1]);
    bad |= write_safetensors(path, m, m->grads);
    snprintf(path, sizeof path, "%s/tokens.i32", argv[1]);
    bad |= write_i32(path, tokens, B * T);
    snprintf(path, sizeof path, "%s/targets.i32", argv[1]);
    bad |= write_i32(path, targets, B * T);
    snprintf(path, sizeof path, "%s/loss.txt", argv[1]);
    FILE *f = fopen(path, "w");
    bad |= !f || fprintf(f, "%.9g\n", loss) < 0 || fclose(f) != 0;
    snprintf(path, sizeof path, "%s/config.json", argv[1]);
    f = fopen(path, "w");
    bad |= !f ||
           fprintf(f, "{\"vocab\": %d, \"context\": %d, \"width\": %d, \"heads\": %d, \"layers\": %d, \"batch\": %d}\n",
                   V, T, C, NH, L, B) < 0 ||
           fclose(f) != 0;
    sov_model_destroy(m);
    if (bad) {
        fprintf(stderr, "gpt_dump: writing under %s failed\n", argv[1]);
        return 1;
    }
    return 0;
}

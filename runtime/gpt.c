/* gpt.c: a GPT-2-style transformer language model on the CPU, with OpenBLAS for the matrix products.
 *
 * Byte-level tokens (vocabulary V = classes), learned token and position embeddings, L pre-LayerNorm blocks
 * (x += attn(ln_1(x)); x += mlp(ln_2(x))) with causal multi-head self-attention and a tanh-GELU MLP, a final
 * LayerNorm and logits against the token embedding (tied, no separate lm_head); mean softmax cross-entropy over
 * every position. The plain forward/backward structure follows llm.c's train_gpt2.c CPU reference.
 *
 * Flat layout: [wte, wpe | h.0 ... | h.1 ... | ... | h.{L-1} ... | ln_f]. Each block's twelve tensors are back to
 * back, so backward, which finishes ln_f first, then blocks L-1 down to 0, then the embeddings (wte also gets the
 * logits' gradient, so it is final only at the very end), hands the gradient hook contiguous ranges walking from
 * the end of the buffer down to offset 0. Matrices use PyTorch's nn.Linear layout [out, in]. */
#include "device.h"
#include <sovtrain/runtime.h>

#include "rng.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GPT_LN_EPS 1e-5f
#define GPT_TENSORS_PER_BLOCK 12

/* Tensor indices within one block, in flat-buffer order. */
enum {
    LN1_W, LN1_B, QKV_W, QKV_B, ATTPROJ_W, ATTPROJ_B, LN2_W, LN2_B, FC_W, FC_B, FCPROJ_W, FCPROJ_B
};

typedef struct gpt {
    int V, T, C, NH, L, B;
    float *arena; /* every buffer below is carved out of this one allocation */
    /* Forward activations, sized for B sequences; per-layer ones are L consecutive slices. */
    float *encoded;                      /* [B*T, C] wte[token] + wpe[t] */
    float *ln1, *ln1_mean, *ln1_rstd;    /* [L][B*T, C], [L][B*T] */
    float *qkv;                          /* [L][B*T, 3C] */
    float *att;                          /* [L][B, NH, T, T] softmax probabilities (zero above the diagonal) */
    float *atty;                         /* [L][B*T, C] attention output, heads side by side */
    float *res2;                         /* [L][B*T, C] residual after attention */
    float *ln2, *ln2_mean, *ln2_rstd;    /* [L][B*T, C], [L][B*T] */
    float *fch;                          /* [L][B*T, 4C] before GELU */
    float *fch_gelu;                     /* [L][B*T, 4C] after GELU */
    float *res3;                         /* [L][B*T, C] block output */
    float *lnf, *lnf_mean, *lnf_rstd;    /* [B*T, C], [B*T] */
    float *logits;                       /* [B*T, V]; backward turns it into d loss / d logits */
    /* Backward scratch, reused by every layer. */
    float *dres;  /* [B*T, C] gradient flowing down the residual stream */
    float *dbuf;  /* [B*T, C] gradient of a LayerNorm output or the attention output */
    float *dqkv;  /* [B*T, 3C] */
    float *dfch;  /* [B*T, 4C] */
    float *datt;  /* [T, T] one (sequence, head)'s attention-score gradient */
} gpt;

/* ---- elementwise kernels ----
 * Plain loops GCC vectorises at -O3 (with -fno-trapping-math, so the selects in them need no branches; see
 * CMakeLists.txt); on x86-64 AVX2 and AVX-512 clones are chosen at load time (SOV_SIMD_CLONES). The file is built
 * with -ffp-contract=off, so no clone fuses a multiply-add: every clone gives the same bits. exp_fast replaces expf where
 * it is called per element: a Cephes-style exp (range reduction by ln 2, degree-6 polynomial, about 1 ulp)
 * without calls or branches. */

static inline float exp_fast(float x) {
    x = x < -87.0f ? -87.0f : x; /* below: the result would be subnormal; callers only need ~0 */
    x = x > 88.0f ? 88.0f : x;
    float k = x * 1.44269504088896341f + 12582912.0f; /* round x / ln 2 to the nearest integer */
    k -= 12582912.0f;
    float r = x - k * 0.693359375f;
    r = r + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)k + 127) * (1 << 23);
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* tanh through exp(-2|u|): absolute error a few 1e-8, which is what GELU needs. */
static inline float tanh_fast(float u) {
    float e = exp_fast(-2.0f * fabsf(u));
    return copysignf((1.0f - e) / (1.0f + e), u);
}

#define GELU_S 0.7978845608028654f /* sqrt(2 / pi) */
#define GELU_A 0.044715f

SOV_SIMD_CLONES static void gelu_forward(float *restrict out, const float *restrict in, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        float t = tanh_fast(GELU_S * (x + GELU_A * x * x * x));
        out[i] = 0.5f * x * (1.0f + t);
    }
}

/* d *= gelu'(in). */
SOV_SIMD_CLONES static void gelu_backward(float *restrict d, const float *restrict in, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        float t = tanh_fast(GELU_S * (x + GELU_A * x * x * x));
        float sech2 = 1.0f - t * t;
        float local = 0.5f * (1.0f + t) + 0.5f * x * sech2 * GELU_S * (1.0f + 3.0f * GELU_A * x * x);
        d[i] *= local;
    }
}

SOV_SIMD_CLONES static void layernorm_forward(float *restrict out, float *restrict mean, float *restrict rstd,
                                              const float *restrict in, const float *restrict w,
                                              const float *restrict b, int rows, int C) {
    for (int r = 0; r < rows; r++) {
        const float *x = in + (size_t)r * C;
        float *y = out + (size_t)r * C;
        float m = 0.0f;
        for (int i = 0; i < C; i++)
            m += x[i];
        m /= (float)C;
        float v = 0.0f;
        for (int i = 0; i < C; i++) {
            float d = x[i] - m;
            v += d * d;
        }
        v /= (float)C;
        float s = 1.0f / sqrtf(v + GPT_LN_EPS);
        for (int i = 0; i < C; i++)
            y[i] = (x[i] - m) * s * w[i] + b[i];
        mean[r] = m;
        rstd[r] = s;
    }
}

/* dx += d ln / d x; dw, db are overwritten. `norm` is scratch of C floats. */
SOV_SIMD_CLONES static void layernorm_backward(float *restrict dx, float *restrict dw, float *restrict db,
                                               const float *restrict dout, const float *restrict in,
                                               const float *restrict mean, const float *restrict rstd,
                                               const float *restrict w, int rows, int C, float *restrict norm) {
    memset(dw, 0, (size_t)C * sizeof(float));
    memset(db, 0, (size_t)C * sizeof(float));
    for (int r = 0; r < rows; r++) {
        const float *x = in + (size_t)r * C, *dy = dout + (size_t)r * C;
        float *dxr = dx + (size_t)r * C;
        float m = mean[r], s = rstd[r];
        float dnorm_mean = 0.0f, dnorm_norm_mean = 0.0f;
        for (int i = 0; i < C; i++) {
            norm[i] = (x[i] - m) * s;
            float dn = w[i] * dy[i];
            dnorm_mean += dn;
            dnorm_norm_mean += dn * norm[i];
        }
        dnorm_mean /= (float)C;
        dnorm_norm_mean /= (float)C;
        for (int i = 0; i < C; i++) {
            float dn = w[i] * dy[i];
            dxr[i] += (dn - dnorm_mean - norm[i] * dnorm_norm_mean) * s;
            dw[i] += dy[i] * norm[i];
            db[i] += dy[i];
        }
    }
}

/* out [rows, OC] = in [rows, IC] . W^T + bias, W [OC, IC]. */
static void linear_forward(float *out, const float *in, const float *w, const float *bias, int rows, int IC,
                           int OC) {
    for (int r = 0; r < rows; r++)
        memcpy(out + (size_t)r * OC, bias, (size_t)OC * sizeof(float));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, OC, IC, 1.0f, in, IC, w, IC, 1.0f, out, OC);
}

/* dW = dout^T . in and dbias = column sums of dout (both overwritten); din = dout . W (overwritten) when non-NULL. */
static void linear_backward(float *din, float *dw, float *restrict dbias, const float *restrict dout,
                            const float *in, const float *w, int rows, int IC, int OC) {
    if (din)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, IC, OC, 1.0f, dout, OC, w, IC, 0.0f, din, IC);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, rows, 1.0f, dout, OC, in, IC, 0.0f, dw, IC);
    memset(dbias, 0, (size_t)OC * sizeof(float));
    for (int r = 0; r < rows; r++) {
        const float *d = dout + (size_t)r * OC;
        for (int o = 0; o < OC; o++)
            dbias[o] += d[o];
    }
}

/* Softmax of row[0..len) in place; the row's tail [len, T) is set to zero (the causal mask). */
SOV_SIMD_CLONES static void masked_softmax_row(float *restrict row, int len, int T) {
    float mx = row[0];
    for (int j = 1; j < len; j++)
        mx = row[j] > mx ? row[j] : mx;
    for (int j = 0; j < len; j++)
        row[j] = exp_fast(row[j] - mx);
    float sum = 0.0f;
    for (int j = 0; j < len; j++)
        sum += row[j];
    float inv = 1.0f / sum;
    for (int j = 0; j < len; j++)
        row[j] *= inv;
    for (int j = len; j < T; j++)
        row[j] = 0.0f;
}

/* Causal multi-head attention: for each sequence and head, P = softmax(mask(Q K^T / sqrt(hs))), Y = P V. */
static void attention_forward(gpt *g, float *atty, float *att, const float *qkv, int n) {
    int T = g->T, C = g->C, NH = g->NH, hs = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    for (int b = 0; b < n; b++)
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * C3 + (size_t)h * hs, *k = q + C, *v = q + 2 * C;
            float *p = att + ((size_t)b * NH + h) * T * T;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, scale, q, C3, k, C3, 0.0f, p, T);
            for (int t = 0; t < T; t++)
                masked_softmax_row(p + (size_t)t * T, t + 1, T);
            float *y = atty + (size_t)b * T * C + (size_t)h * hs;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, 1.0f, p, T, v, C3, 0.0f, y, C);
        }
}

/* dqkv (overwritten) from datty. */
static void attention_backward(gpt *g, float *dqkv, const float *datty, const float *att, const float *qkv, int n) {
    int T = g->T, C = g->C, NH = g->NH, hs = C / NH, C3 = 3 * C;
    float scale = 1.0f / sqrtf((float)hs);
    float *ds = g->datt;
    for (int b = 0; b < n; b++)
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t)b * T * C3 + (size_t)h * hs, *k = q + C, *v = q + 2 * C;
            const float *p = att + ((size_t)b * NH + h) * T * T;
            const float *dy = datty + (size_t)b * T * C + (size_t)h * hs;
            float *dq = dqkv + (size_t)b * T * C3 + (size_t)h * hs, *dk = dq + C, *dv = dq + 2 * C;
            /* dP = dY V^T; dV = P^T dY */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs, 1.0f, dy, C, v, C3, 0.0f, ds, T);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, 1.0f, p, T, dy, C, 0.0f, dv, C3);
            /* dS = P * (dP - rowsum(P * dP)); zero above the diagonal, where P is. */
            for (int t = 0; t < T; t++) {
                const float *pr = p + (size_t)t * T;
                float *dr = ds + (size_t)t * T;
                float dot = 0.0f;
                for (int j = 0; j <= t; j++)
                    dot += pr[j] * dr[j];
                for (int j = 0; j < T; j++)
                    dr[j] = pr[j] * (dr[j] - dot);
            }
            /* dQ = dS K / sqrt(hs); dK = dS^T Q / sqrt(hs) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T, scale, ds, T, k, C3, 0.0f, dq, C3);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T, scale, ds, T, q, C3, 0.0f, dk, C3);
        }
}

/* ---- the model ---- */

static const sov_tensor *block_tensor(const sov_model *m, int l, int which) {
    return &m->tensors[2 + GPT_TENSORS_PER_BLOCK * l + which];
}

static float *param(const sov_model *m, const sov_tensor *t) { return m->params + t->offset; }
static float *grad(const sov_model *m, const sov_tensor *t) { return m->grads + t->offset; }

static void add_tensor(sov_model *m, size_t *off, int *idx, int ndim, int64_t d0, int64_t d1, const char *fmt,
                       int l) {
    sov_tensor *t = &m->tensors[(*idx)++];
    *t = (sov_tensor){.offset = *off, .count = (size_t)d0 * (size_t)(ndim == 2 ? d1 : 1), .ndim = ndim,
                      .shape = {d0, ndim == 2 ? d1 : 0}, .decay = ndim == 2};
    snprintf(t->name, sizeof t->name, fmt, l);
    *off += t->count;
}

static sov_status describe_tensors(sov_model *m, const gpt *g) {
    int V = g->V, T = g->T, C = g->C, L = g->L;
    m->num_tensors = 2 + GPT_TENSORS_PER_BLOCK * L + 2;
    m->tensors = sov_calloc((size_t)m->num_tensors, sizeof *m->tensors);
    if (!m->tensors)
        return SOV_ERR_NOMEM;
    size_t off = 0;
    int idx = 0;
    add_tensor(m, &off, &idx, 2, V, C, "wte.weight", 0);
    add_tensor(m, &off, &idx, 2, T, C, "wpe.weight", 0);
    for (int l = 0; l < L; l++) {
        add_tensor(m, &off, &idx, 1, C, 0, "h.%d.ln_1.weight", l);
        add_tensor(m, &off, &idx, 1, C, 0, "h.%d.ln_1.bias", l);
        add_tensor(m, &off, &idx, 2, 3 * C, C, "h.%d.attn.c_attn.weight", l);
        add_tensor(m, &off, &idx, 1, 3 * C, 0, "h.%d.attn.c_attn.bias", l);
        add_tensor(m, &off, &idx, 2, C, C, "h.%d.attn.c_proj.weight", l);
        add_tensor(m, &off, &idx, 1, C, 0, "h.%d.attn.c_proj.bias", l);
        add_tensor(m, &off, &idx, 1, C, 0, "h.%d.ln_2.weight", l);
        add_tensor(m, &off, &idx, 1, C, 0, "h.%d.ln_2.bias", l);
        add_tensor(m, &off, &idx, 2, 4 * C, C, "h.%d.mlp.c_fc.weight", l);
        add_tensor(m, &off, &idx, 1, 4 * C, 0, "h.%d.mlp.c_fc.bias", l);
        add_tensor(m, &off, &idx, 2, C, 4 * C, "h.%d.mlp.c_proj.weight", l);
        add_tensor(m, &off, &idx, 1, C, 0, "h.%d.mlp.c_proj.bias", l);
    }
    add_tensor(m, &off, &idx, 1, C, 0, "ln_f.weight", 0);
    add_tensor(m, &off, &idx, 1, C, 0, "ln_f.bias", 0);
    m->num_params = off;
    m->predictions_per_sample = T;
    return SOV_OK;
}

static void gpt_destroy(sov_model *m) {
    gpt *g = m->impl;
    free(g->arena);
    free(g);
    m->impl = NULL;
}

/* Carves the activation buffers out of one allocation (each 64-byte aligned). With arena NULL it only counts. */
static size_t carve(gpt *g, float *arena) {
    size_t B = (size_t)g->B, T = (size_t)g->T, C = (size_t)g->C, L = (size_t)g->L, BT = B * T;
    struct {
        float **p;
        size_t n;
    } bufs[] = {
        {&g->encoded, BT * C},      {&g->ln1, L * BT * C},      {&g->ln1_mean, L * BT},
        {&g->ln1_rstd, L * BT},     {&g->qkv, L * BT * 3 * C},  {&g->att, L * B * g->NH * T * T},
        {&g->atty, L * BT * C},     {&g->res2, L * BT * C},     {&g->ln2, L * BT * C},
        {&g->ln2_mean, L * BT},     {&g->ln2_rstd, L * BT},     {&g->fch, L * BT * 4 * C},
        {&g->fch_gelu, L * BT * 4 * C}, {&g->res3, L * BT * C}, {&g->lnf, BT * C},
        {&g->lnf_mean, BT},         {&g->lnf_rstd, BT},         {&g->logits, BT * g->V},
        {&g->dres, BT * C},         {&g->dbuf, BT * C},         {&g->dqkv, BT * 3 * C},
        {&g->dfch, BT * 4 * C},     {&g->datt, T * T + C},      /* + C: LayerNorm backward's row scratch */
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) {
        if (arena)
            *bufs[i].p = arena + total;
        total += (bufs[i].n + 15) / 16 * 16;
    }
    return total;
}

/* The GPT's own settings, by index into sov_model_config.values, and the largest value each accepts. */
enum { GPT_LAYERS, GPT_HEADS, GPT_WIDTH, GPT_CONTEXT, GPT_NUM_SETTINGS };

static const sov_model_setting gpt_settings[GPT_NUM_SETTINGS] = {
    [GPT_LAYERS] = {"layers", "N", "4", "transformer blocks"},
    [GPT_HEADS] = {"heads", "N", "4", "attention heads"},
    [GPT_WIDTH] = {"width", "N", "128", "embedding width, a multiple of --heads"},
    [GPT_CONTEXT] = {"context", "N", "128", "tokens per sequence"},
};

static const long gpt_setting_max[GPT_NUM_SETTINGS] = {
    [GPT_LAYERS] = 256, [GPT_HEADS] = 256, [GPT_WIDTH] = 16384, [GPT_CONTEXT] = 8192,
};

/* The settings as numbers: each in 1..its maximum, and the heads splitting the width evenly. */
static sov_status parse_settings(const sov_model_config *cfg, long *v) {
    for (int i = 0; i < GPT_NUM_SETTINGS; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", gpt_settings[i].name);
        SOV_CHECK(sov_parse_long(flag, cfg->values[i], 1, gpt_setting_max[i], &v[i]));
    }
    if (v[GPT_WIDTH] % v[GPT_HEADS] != 0)
        return sov_fail(SOV_ERR_INVALID, "--width %ld is not a multiple of --heads %ld", v[GPT_WIDTH], v[GPT_HEADS]);
    return SOV_OK;
}

static sov_status gpt_create(const sov_model_config *cfg, sov_model *m) {
    long v[GPT_NUM_SETTINGS];
    SOV_CHECK(parse_settings(cfg, v));
    int context = (int)v[GPT_CONTEXT], width = (int)v[GPT_WIDTH];
    if (cfg->classes < 2 || cfg->classes > 1 << 20)
        return sov_fail(SOV_ERR_INVALID, "gpt: vocabulary (classes) %d outside 2..%d", cfg->classes, 1 << 20);
    if (cfg->max_batch < 1 || (long long)cfg->max_batch * context * 4 * width > INT_MAX)
        return sov_fail(SOV_ERR_INVALID, "gpt: batch %d outside 1..%lld for context %d and width %d", cfg->max_batch,
                        (long long)INT_MAX / ((long long)context * 4 * width), context, width);
    gpt *g = sov_calloc(1, sizeof *g);
    if (!g)
        return SOV_ERR_NOMEM;
    m->impl = g;
    *g = (gpt){.V = cfg->classes, .T = context, .C = width, .NH = (int)v[GPT_HEADS], .L = (int)v[GPT_LAYERS],
               .B = cfg->max_batch};
    SOV_CHECK(describe_tensors(m, g));
    if (!(g->arena = sov_aligned_alloc(carve(g, NULL) * sizeof(float))))
        return SOV_ERR_NOMEM;
    carve(g, g->arena);
    return SOV_OK;
}

/* Standard normal by Box-Muller, from two uniforms. */
static float gaussian(sov_rng *rng) {
    double u1 = 1.0 - (double)sov_rng_uniform(rng); /* (0, 1]: log is finite */
    double u2 = (double)sov_rng_uniform(rng);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* GPT-2's: matrices N(0, 0.02), the residual projections N(0, 0.02 / sqrt(2L)); biases 0; LayerNorm 1 and 0.
 * One RNG stream per tensor, so a tensor's values do not depend on the others. */
static void gpt_init(sov_model *m, uint64_t seed) {
    gpt *g = m->impl;
    for (int i = 0; i < m->num_tensors; i++) {
        const sov_tensor *t = &m->tensors[i];
        float *p = m->params + t->offset;
        size_t len = strlen(t->name);
        if (t->ndim == 2) {
            float std = 0.02f;
            if (strstr(t->name, ".c_proj.weight"))
                std = 0.02f / sqrtf(2.0f * (float)g->L);
            sov_rng rng;
            sov_rng_seed(&rng, seed, (uint64_t)i);
            for (size_t j = 0; j < t->count; j++)
                p[j] = std * gaussian(&rng);
        } else {
            float v = len > 7 && strcmp(t->name + len - 7, ".weight") == 0 ? 1.0f : 0.0f; /* LayerNorm weight */
            for (size_t j = 0; j < t->count; j++)
                p[j] = v;
        }
    }
}

static sov_status check_batch(const gpt *g, const sov_batch *b) {
    if (b->n < 1 || b->n > g->B)
        return sov_fail(SOV_ERR_INVALID, "gpt: batch of %d sequences outside 1..%d", b->n, g->B);
    if (!b->tokens || !b->y)
        return sov_fail(SOV_ERR_INVALID, "gpt: batch without tokens or targets");
    for (int i = 0; i < b->n; i++)
        for (int t = 0; t < g->T; t++) {
            int32_t tok = b->tokens[(size_t)i * g->T + t], y = b->y[(size_t)i * g->T + t];
            if (tok < 0 || tok >= g->V)
                return sov_fail(SOV_ERR_INVALID, "gpt: token %d of sample %d at position %d outside 0..%d", tok, i,
                                t, g->V - 1);
            if (y < 0 || y >= g->V)
                return sov_fail(SOV_ERR_INVALID, "gpt: target %d of sample %d at position %d outside 0..%d", y, i, t,
                                g->V - 1);
        }
    return SOV_OK;
}

/* Forward to the logits for n sequences. */
static void forward(sov_model *m, const int32_t *tokens, int n) {
    gpt *g = m->impl;
    int T = g->T, C = g->C, L = g->L, BT = n * T;
    size_t act = (size_t)g->B * T * C, act3 = 3 * act, act4 = 4 * act, rows = (size_t)g->B * T;
    const float *wte = param(m, &m->tensors[0]), *wpe = param(m, &m->tensors[1]);
    for (int i = 0; i < BT; i++) {
        const float *te = wte + (size_t)tokens[i] * C, *pe = wpe + (size_t)(i % T) * C;
        float *x = g->encoded + (size_t)i * C;
        for (int c = 0; c < C; c++)
            x[c] = te[c] + pe[c];
    }
    const float *res = g->encoded;
    for (int l = 0; l < L; l++) {
        float *ln1 = g->ln1 + l * act, *qkv = g->qkv + l * act3, *atty = g->atty + l * act, *res2 = g->res2 + l * act;
        float *ln2 = g->ln2 + l * act, *fch = g->fch + l * act4, *fchg = g->fch_gelu + l * act4;
        float *res3 = g->res3 + l * act;
        float *att = g->att + l * (size_t)g->B * g->NH * T * T;
#define P(which) param(m, block_tensor(m, l, which))
        layernorm_forward(ln1, g->ln1_mean + l * rows, g->ln1_rstd + l * rows, res, P(LN1_W), P(LN1_B), BT, C);
        linear_forward(qkv, ln1, P(QKV_W), P(QKV_B), BT, C, 3 * C);
        attention_forward(g, atty, att, qkv, n);
        linear_forward(res2, atty, P(ATTPROJ_W), P(ATTPROJ_B), BT, C, C);
        for (size_t i = 0; i < (size_t)BT * C; i++)
            res2[i] += res[i];
        layernorm_forward(ln2, g->ln2_mean + l * rows, g->ln2_rstd + l * rows, res2, P(LN2_W), P(LN2_B), BT, C);
        linear_forward(fch, ln2, P(FC_W), P(FC_B), BT, C, 4 * C);
        gelu_forward(fchg, fch, (size_t)BT * 4 * C);
        linear_forward(res3, fchg, P(FCPROJ_W), P(FCPROJ_B), BT, 4 * C, C);
        for (size_t i = 0; i < (size_t)BT * C; i++)
            res3[i] += res2[i];
#undef P
        res = res3;
    }
    const sov_tensor *lnf_w = &m->tensors[m->num_tensors - 2], *lnf_b = &m->tensors[m->num_tensors - 1];
    layernorm_forward(g->lnf, g->lnf_mean, g->lnf_rstd, res, param(m, lnf_w), param(m, lnf_b), BT, C);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, BT, g->V, C, 1.0f, g->lnf, C, wte, C, 0.0f, g->logits, g->V);
}

/* Cross-entropy of one row of logits by log-sum-exp. With `dlogits` (which may be `logits` itself), writes
 * (softmax - onehot) * scale there. */
SOV_SIMD_CLONES static float row_loss(const float *logits, int V, int target, float *dlogits, float scale) {
    float mx = logits[0];
    for (int c = 1; c < V; c++)
        mx = logits[c] > mx ? logits[c] : mx;
    float shifted_target = logits[target] - mx; /* read before dlogits may overwrite it */
    float sum = 0.0f;
    if (dlogits) {
        for (int c = 0; c < V; c++)
            dlogits[c] = exp_fast(logits[c] - mx);
        for (int c = 0; c < V; c++)
            sum += dlogits[c];
        float k = scale / sum;
        for (int c = 0; c < V; c++)
            dlogits[c] *= k;
        dlogits[target] -= scale;
    } else {
        for (int c = 0; c < V; c++)
            sum += exp_fast(logits[c] - mx);
    }
    return logf(sum) - shifted_target;
}

static void ready(const sov_grad_hook *hook, size_t offset, size_t count) {
    if (hook && hook->ready)
        hook->ready(hook->ctx, offset, count);
}

static sov_status gpt_train_step(sov_model *m, const sov_batch *b, float *loss, const sov_grad_hook *hook) {
    gpt *g = m->impl;
    SOV_CHECK(check_batch(g, b));
    int n = b->n, V = g->V, T = g->T, C = g->C, L = g->L, BT = n * T;
    size_t act = (size_t)g->B * T * C, act3 = 3 * act, act4 = 4 * act, rows = (size_t)g->B * T;
    forward(m, b->tokens, n);

    /* Loss, and d loss / d logits in place of the logits (each row is read before it is overwritten). */
    double total = 0.0;
    float scale = 1.0f / (float)BT;
    for (int i = 0; i < BT; i++) {
        float *row = g->logits + (size_t)i * V;
        total += row_loss(row, V, b->y[i], row, scale);
    }
    *loss = (float)(total / BT);

    /* Logits = lnf . wte^T: wte's first gradient contribution (overwrites), and d lnf. */
    const sov_tensor *wte = &m->tensors[0], *wpe = &m->tensors[1];
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, C, BT, 1.0f, g->logits, V, g->lnf, C, 0.0f, grad(m, wte),
                C);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, BT, C, V, 1.0f, g->logits, V, param(m, wte), C, 0.0f,
                g->dbuf, C);
    const sov_tensor *lnf_w = &m->tensors[m->num_tensors - 2], *lnf_b = &m->tensors[m->num_tensors - 1];
    const float *last = L > 0 ? g->res3 + (L - 1) * act : g->encoded;
    memset(g->dres, 0, (size_t)BT * C * sizeof(float));
    float *norm = g->datt + (size_t)T * T;
    layernorm_backward(g->dres, grad(m, lnf_w), grad(m, lnf_b), g->dbuf, last, g->lnf_mean, g->lnf_rstd,
                       param(m, lnf_w), BT, C, norm);
    ready(hook, lnf_w->offset, lnf_w->count + lnf_b->count);

    for (int l = L - 1; l >= 0; l--) {
        const float *res = l > 0 ? g->res3 + (l - 1) * act : g->encoded;
        float *ln1 = g->ln1 + l * act, *qkv = g->qkv + l * act3, *atty = g->atty + l * act, *res2 = g->res2 + l * act;
        float *ln2 = g->ln2 + l * act, *fch = g->fch + l * act4, *fchg = g->fch_gelu + l * act4;
        float *att = g->att + l * (size_t)g->B * g->NH * T * T;
#define P(which) param(m, block_tensor(m, l, which))
#define G(which) grad(m, block_tensor(m, l, which))
        /* MLP: res3 = res2 + fcproj(gelu(fc(ln2(res2)))) */
        linear_backward(g->dfch, G(FCPROJ_W), G(FCPROJ_B), g->dres, fchg, P(FCPROJ_W), BT, 4 * C, C);
        gelu_backward(g->dfch, fch, (size_t)BT * 4 * C);
        linear_backward(g->dbuf, G(FC_W), G(FC_B), g->dfch, ln2, P(FC_W), BT, C, 4 * C);
        layernorm_backward(g->dres, G(LN2_W), G(LN2_B), g->dbuf, res2, g->ln2_mean + l * rows,
                           g->ln2_rstd + l * rows, P(LN2_W), BT, C, norm);
        /* Attention: res2 = res + attproj(attn(qkv(ln1(res)))) */
        linear_backward(g->dbuf, G(ATTPROJ_W), G(ATTPROJ_B), g->dres, atty, P(ATTPROJ_W), BT, C, C);
        attention_backward(g, g->dqkv, g->dbuf, att, qkv, n);
        linear_backward(g->dbuf, G(QKV_W), G(QKV_B), g->dqkv, ln1, P(QKV_W), BT, C, 3 * C);
        layernorm_backward(g->dres, G(LN1_W), G(LN1_B), g->dbuf, res, g->ln1_mean + l * rows, g->ln1_rstd + l * rows,
                           P(LN1_W), BT, C, norm);
#undef P
#undef G
        const sov_tensor *first = block_tensor(m, l, LN1_W), *end = block_tensor(m, l, FCPROJ_B);
        ready(hook, first->offset, end->offset + end->count - first->offset);
    }

    /* Embeddings: encoded = wte[token] + wpe[t]. */
    float *dwte = grad(m, wte), *dwpe = grad(m, wpe);
    memset(dwpe, 0, wpe->count * sizeof(float));
    for (int i = 0; i < BT; i++) {
        const float *d = g->dres + (size_t)i * C;
        float *te = dwte + (size_t)b->tokens[i] * C, *pe = dwpe + (size_t)(i % T) * C;
        for (int c = 0; c < C; c++) {
            te[c] += d[c];
            pe[c] += d[c];
        }
    }
    ready(hook, wte->offset, wte->count + wpe->count);
    return SOV_OK;
}

static sov_status gpt_eval(sov_model *m, const sov_batch *b, double *loss_sum, long *correct) {
    gpt *g = m->impl;
    SOV_CHECK(check_batch(g, b));
    int V = g->V, BT = b->n * g->T;
    forward(m, b->tokens, b->n);
    for (int i = 0; i < BT; i++) {
        const float *logits = g->logits + (size_t)i * V;
        *loss_sum += row_loss(logits, V, b->y[i], NULL, 0.0f);
        int best = 0;
        for (int c = 1; c < V; c++)
            best = logits[c] > logits[best] ? c : best;
        *correct += best == b->y[i];
    }
    return SOV_OK;
}

/* Causal attention makes position len-1 independent of what follows it: the window is padded with token 0. */
static sov_status gpt_next_logits(sov_model *m, const int32_t *tokens, int len, float *logits) {
    gpt *g = m->impl;
    if (len < 1 || len > g->T)
        return sov_fail(SOV_ERR_INVALID, "gpt: %d tokens of context, 1..%d expected", len, g->T);
    int32_t *window = sov_calloc((size_t)g->T, sizeof *window);
    if (!window)
        return SOV_ERR_NOMEM;
    for (int t = 0; t < len; t++) {
        if (tokens[t] < 0 || tokens[t] >= g->V) {
            free(window);
            return sov_fail(SOV_ERR_INVALID, "gpt: token %d at position %d outside 0..%d", tokens[t], t, g->V - 1);
        }
        window[t] = tokens[t];
    }
    forward(m, window, 1);
    memcpy(logits, g->logits + (size_t)(len - 1) * g->V, (size_t)g->V * sizeof *logits);
    free(window);
    return SOV_OK;
}

const sov_model_ops sov_gpt_ops = {
    .name = "gpt",
    .kind = SOV_MODEL_LANGUAGE,
    .settings = gpt_settings,
    .num_settings = GPT_NUM_SETTINGS,
    .create = gpt_create,
    .init = gpt_init,
    .train_step = gpt_train_step,
    .eval = gpt_eval,
    .destroy = gpt_destroy,
    .next_logits = gpt_next_logits,
};

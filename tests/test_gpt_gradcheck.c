/* The GPT's analytic gradients against central finite differences for every parameter; the gradient hook's ranges;
 * tensor names, shapes and layout; init; eval against train_step; refused batches and configurations;
 * determinism. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "rng.h"
#include "device.h"
#include <sovtrain/runtime.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { V = 11, T = 5, C = 8, NH = 2, L = 2, B = 3, N = B - 1 }; /* N < B: a partial batch exercises the strides */

typedef struct {
    int32_t tokens[B * T], y[B * T];
    sov_model *m;
} fixture;

/* A GPT's settings as text, in the order of its table, which names them. */
typedef struct shape {
    char text[4][16];
    const char *values[4];
} shape;

static sov_model_config gpt_config(shape *s, int classes, int max_batch, int layers, int heads, int width,
                                   int context) {
    const sov_model_ops *ops = sov_model_find("gpt");
    const char *names[] = {"layers", "heads", "width", "context"};
    const int given[] = {layers, heads, width, context};
    assert_int_equal(ops->num_settings, 4);
    for (int j = 0; j < 4; j++) {
        int i = 0;
        while (i < 4 && strcmp(ops->settings[j].name, names[i]) != 0)
            i++;
        assert_true(i < 4);
        snprintf(s->text[j], sizeof s->text[j], "%d", given[i]);
        s->values[j] = s->text[j];
    }
    return (sov_model_config){.classes = classes, .max_batch = max_batch, .values = s->values};
}

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    shape s;
    sov_model_config cfg = gpt_config(&s, V, B, L, NH, C, T);
    assert_int_equal(sov_model_create("gpt", &cfg, NULL, &f->m), SOV_OK);
    f->m->ops->init(f->m, 42);
    sov_rng rng;
    sov_rng_seed(&rng, 7, 0);
    /* Perturb every parameter so LayerNorm weights are not all 1, biases not 0, and the weights large enough
     * that every path carries signal. */
    for (size_t i = 0; i < f->m->num_params; i++)
        f->m->params[i] += 0.4f * (sov_rng_uniform(&rng) - 0.5f);
    for (int i = 0; i < B * T; i++) {
        f->tokens[i] = (int32_t)sov_rng_below(&rng, V);
        f->y[i] = (int32_t)sov_rng_below(&rng, V);
    }
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    sov_model_destroy(f->m);
    free(f);
    return 0;
}

/* Mean loss over the batch through eval: the model's own float arithmetic, summed in double. */
static double loss_at(fixture *f, int n) {
    double sum = 0;
    long correct = 0;
    sov_batch b = {.n = n, .tokens = f->tokens, .y = f->y};
    assert_int_equal(f->m->ops->eval(f->m, &b, &sum, &correct), SOV_OK);
    return sum / (n * T);
}

static const sov_tensor *tensor_of(const sov_model *m, size_t i) {
    for (int t = 0; t < m->num_tensors; t++)
        if (i >= m->tensors[t].offset && i < m->tensors[t].offset + m->tensors[t].count)
            return &m->tensors[t];
    return NULL;
}

/* Central differences with eps = 3e-3 (parameters are O(0.1-1)). Two error sources: truncation, O(eps^2), which
 * dominates for the embeddings (1e-2 gave ~2.5e-3 relative there), and float rounding of the loss (~1e-7, over
 * 2 eps), which dominates for the small LayerNorm gradients (1e-3 gave ~3e-3). Each tensor must match in relative
 * norm, ||g - fd|| / ||fd|| < 5e-3 (measured worst at eps 3e-3: ~1e-3, in a LayerNorm; a gradient wrong by 1% in
 * one term of LayerNorm's backward fails), and each element within 1e-3 + 5e-2 |fd|. */
static void gradients_match_finite_differences(void **state) {
    fixture *f = *state;
    sov_model *m = f->m;
    float loss;
    sov_batch b = {.n = N, .tokens = f->tokens, .y = f->y};
    assert_int_equal(m->ops->train_step(m, &b, &loss, NULL), SOV_OK);
    float *analytic = malloc(m->num_params * sizeof(float));
    double *numeric = malloc(m->num_params * sizeof(double));
    memcpy(analytic, m->grads, m->num_params * sizeof(float));
    const float eps = 3e-3f;
    for (size_t i = 0; i < m->num_params; i++) {
        float saved = m->params[i];
        float up_p = saved + eps, down_p = saved - eps;
        m->params[i] = up_p;
        double up = loss_at(f, N);
        m->params[i] = down_p;
        double down = loss_at(f, N);
        m->params[i] = saved;
        numeric[i] = (up - down) / ((double)up_p - (double)down_p);
        double err = fabs(numeric[i] - analytic[i]);
        if (err > 1e-3 + 5e-2 * fabs(numeric[i]))
            fail_msg("%s (parameter %zu): analytic %.7f, finite difference %.7f", tensor_of(m, i)->name, i,
                     analytic[i], numeric[i]);
    }
    double worst = 0;
    const char *worst_name = "";
    for (int t = 0; t < m->num_tensors; t++) {
        const sov_tensor *ten = &m->tensors[t];
        double diff = 0, ref = 0;
        for (size_t j = ten->offset; j < ten->offset + ten->count; j++) {
            diff += (analytic[j] - numeric[j]) * (analytic[j] - numeric[j]);
            ref += numeric[j] * numeric[j];
        }
        /* A tensor whose gradient is identically zero would pass trivially: every tensor must carry signal. */
        if (ref < 1e-12)
            fail_msg("%s: finite-difference gradient is ~0 (norm %g)", ten->name, sqrt(ref));
        double rel = sqrt(diff / ref);
        if (rel >= 5e-3)
            fail_msg("%s: relative gradient error %.3g", ten->name, rel);
        if (rel > worst) {
            worst = rel;
            worst_name = ten->name;
        }
    }
    print_message("worst relative-norm gradient error: %.3g (%s)\n", worst, worst_name);
    free(analytic);
    free(numeric);
}

typedef struct {
    size_t offsets[64], counts[64];
    int calls;
} hook_log;

static void record(void *ctx, size_t offset, size_t count) {
    hook_log *h = ctx;
    assert_true(h->calls < 64);
    h->offsets[h->calls] = offset;
    h->counts[h->calls++] = count;
}

static size_t offset_of(const sov_model *m, const char *name) {
    for (int t = 0; t < m->num_tensors; t++)
        if (strcmp(m->tensors[t].name, name) == 0)
            return m->tensors[t].offset;
    fail_msg("no tensor %s", name);
    return 0;
}

static void hook_covers_buffer_in_reverse(void **state) {
    fixture *f = *state;
    hook_log h = {0};
    sov_grad_hook hook = {.ready = record, .ctx = &h};
    float loss;
    sov_batch b = {.n = B, .tokens = f->tokens, .y = f->y};
    assert_int_equal(f->m->ops->train_step(f->m, &b, &loss, &hook), SOV_OK);
    assert_int_equal(h.calls, L + 2); /* ln_f, each block, the embeddings */
    size_t end = f->m->num_params;
    for (int i = 0; i < h.calls; i++) { /* contiguous ranges, walking down from the end of the buffer */
        assert_true(h.counts[i] > 0);
        assert_int_equal(h.offsets[i] + h.counts[i], end);
        end = h.offsets[i];
    }
    assert_int_equal(end, 0);
    assert_int_equal(h.offsets[0], offset_of(f->m, "ln_f.weight"));
    for (int l = L - 1; l >= 0; l--) {
        char name[64];
        snprintf(name, sizeof name, "h.%d.ln_1.weight", l);
        assert_int_equal(h.offsets[L - l], offset_of(f->m, name));
    }
    assert_int_equal(h.counts[L + 1], (size_t)(V * C + T * C));
}

static void tensors_are_named_and_laid_out(void **state) {
    fixture *f = *state;
    const sov_model *m = f->m;
    struct {
        const char *name;
        int ndim;
        int64_t d0, d1;
    } block[] = {
        {"ln_1.weight", 1, C, 0},       {"ln_1.bias", 1, C, 0},          {"attn.c_attn.weight", 2, 3 * C, C},
        {"attn.c_attn.bias", 1, 3 * C, 0}, {"attn.c_proj.weight", 2, C, C}, {"attn.c_proj.bias", 1, C, 0},
        {"ln_2.weight", 1, C, 0},       {"ln_2.bias", 1, C, 0},          {"mlp.c_fc.weight", 2, 4 * C, C},
        {"mlp.c_fc.bias", 1, 4 * C, 0}, {"mlp.c_proj.weight", 2, C, 4 * C}, {"mlp.c_proj.bias", 1, C, 0},
    };
    enum { PER_BLOCK = sizeof block / sizeof *block };
    assert_int_equal(m->num_tensors, 2 + PER_BLOCK * L + 2);
    assert_int_equal(m->predictions_per_sample, T);
    size_t off = 0;
    for (int t = 0; t < m->num_tensors; t++) {
        const sov_tensor *ten = &m->tensors[t];
        char name[64];
        int ndim;
        int64_t d0, d1;
        if (t == 0) {
            snprintf(name, sizeof name, "wte.weight"), ndim = 2, d0 = V, d1 = C;
        } else if (t == 1) {
            snprintf(name, sizeof name, "wpe.weight"), ndim = 2, d0 = T, d1 = C;
        } else if (t < 2 + PER_BLOCK * L) {
            int l = (t - 2) / PER_BLOCK, k = (t - 2) % PER_BLOCK;
            snprintf(name, sizeof name, "h.%d.%s", l, block[k].name);
            ndim = block[k].ndim, d0 = block[k].d0, d1 = block[k].d1;
        } else {
            snprintf(name, sizeof name, t == m->num_tensors - 2 ? "ln_f.weight" : "ln_f.bias");
            ndim = 1, d0 = C, d1 = 0;
        }
        assert_string_equal(ten->name, name);
        assert_int_equal(ten->ndim, ndim);
        assert_int_equal(ten->shape[0], d0);
        if (ndim == 2)
            assert_int_equal(ten->shape[1], d1);
        assert_int_equal(ten->count, (size_t)(d0 * (ndim == 2 ? d1 : 1)));
        assert_int_equal(ten->decay, ndim == 2);
        assert_int_equal(ten->offset, off);
        off += ten->count;
    }
    assert_int_equal(m->num_params, off);
}

/* GPT-2's init, a pure function of the seed: statistics on a wider model. */
static void init_is_gpt2s(void **state) {
    (void)state;
    enum { LAYERS = 3 };
    shape s;
    sov_model_config cfg = gpt_config(&s, 256, 1, LAYERS, 4, 64, 32);
    sov_model *a, *b;
    assert_int_equal(sov_model_create("gpt", &cfg, NULL, &a), SOV_OK);
    assert_int_equal(sov_model_create("gpt", &cfg, NULL, &b), SOV_OK);
    a->ops->init(a, 1234);
    b->ops->init(b, 1234);
    assert_memory_equal(a->params, b->params, a->num_params * sizeof(float));
    b->ops->init(b, 1235);
    assert_memory_not_equal(a->params, b->params, a->num_params * sizeof(float));
    for (int t = 0; t < a->num_tensors; t++) {
        const sov_tensor *ten = &a->tensors[t];
        const float *p = a->params + ten->offset;
        double sum = 0, sq = 0;
        for (size_t j = 0; j < ten->count; j++)
            sum += p[j], sq += (double)p[j] * p[j];
        double mean = sum / ten->count, sd = sqrt(sq / ten->count - mean * mean);
        if (ten->ndim == 2) {
            double want = strstr(ten->name, "c_proj.weight") ? 0.02 / sqrt(2.0 * LAYERS) : 0.02;
            if (fabs(sd - want) > 0.06 * want || fabs(mean) > 0.1 * want)
                fail_msg("%s: mean %g sd %g, want 0 and %g", ten->name, mean, sd, want);
        } else {
            int is_ln_weight = strstr(ten->name, "ln_") && strstr(ten->name, ".weight");
            for (size_t j = 0; j < ten->count; j++)
                assert_true(p[j] == (is_ln_weight ? 1.0f : 0.0f));
        }
    }
    sov_model_destroy(a);
    sov_model_destroy(b);
}

static void eval_matches_train_step(void **state) {
    fixture *f = *state;
    float loss;
    sov_batch b = {.n = B, .tokens = f->tokens, .y = f->y};
    assert_int_equal(f->m->ops->train_step(f->m, &b, &loss, NULL), SOV_OK);
    double sum = 0;
    long correct = 0;
    assert_int_equal(f->m->ops->eval(f->m, &b, &sum, &correct), SOV_OK);
    assert_true(fabs(sum / (B * T) - loss) <= 1e-6 * fabs(loss));
    assert_true(correct >= 0 && correct <= B * T);
    /* Targets equal to the model's own predictions are all correct. */
    int32_t y[B * T];
    memcpy(y, f->y, sizeof y);
    double s0 = 0;
    long c0 = 0;
    for (int i = 0; i < B * T; i++) { /* find each position's argmax by trying every target: lowest loss wins */
        double best = INFINITY;
        for (int v = 0; v < V; v++) {
            f->y[i] = v;
            double s = 0;
            long c = 0;
            sov_batch one = {.n = B, .tokens = f->tokens, .y = f->y};
            assert_int_equal(f->m->ops->eval(f->m, &one, &s, &c), SOV_OK);
            if (s < best)
                best = s, y[i] = v;
        }
        f->y[i] = y[i];
    }
    sov_batch argmax = {.n = B, .tokens = f->tokens, .y = y};
    assert_int_equal(f->m->ops->eval(f->m, &argmax, &s0, &c0), SOV_OK);
    assert_int_equal(c0, B * T);
}

static void bad_batches_are_refused(void **state) {
    fixture *f = *state;
    float loss;
    int32_t bad[B * T];
    memcpy(bad, f->tokens, sizeof bad);
    bad[T + 2] = V; /* sample 1, position 2 */
    sov_batch bad_token = {.n = B, .tokens = bad, .y = f->y};
    assert_int_equal(f->m->ops->train_step(f->m, &bad_token, &loss, NULL), SOV_ERR_INVALID);
    assert_non_null(strstr(sov_last_error(), "sample 1 at position 2"));
    double sum = 0;
    long correct = 0;
    assert_int_equal(f->m->ops->eval(f->m, &bad_token, &sum, &correct), SOV_ERR_INVALID);
    bad[T + 2] = -1;
    assert_int_equal(f->m->ops->train_step(f->m, &bad_token, &loss, NULL), SOV_ERR_INVALID);
    sov_batch bad_target = {.n = B, .tokens = f->tokens, .y = bad};
    assert_int_equal(f->m->ops->train_step(f->m, &bad_target, &loss, NULL), SOV_ERR_INVALID);
    assert_non_null(strstr(sov_last_error(), "target"));
    sov_batch too_big = {.n = B + 1, .tokens = f->tokens, .y = f->y};
    assert_int_equal(f->m->ops->train_step(f->m, &too_big, &loss, NULL), SOV_ERR_INVALID);
    sov_batch empty = {.n = 0, .tokens = f->tokens, .y = f->y};
    assert_int_equal(f->m->ops->train_step(f->m, &empty, &loss, NULL), SOV_ERR_INVALID);
}

static void bad_configs_are_refused(void **state) {
    (void)state;
    sov_model *m = NULL;
    shape s;
    sov_model_config cfg = gpt_config(&s, V, B, L, 3, 10, T);
    assert_int_equal(sov_model_create("gpt", &cfg, NULL, &m), SOV_ERR_INVALID);
    assert_string_equal(sov_last_error(), "--width 10 is not a multiple of --heads 3");
    const int bad[][6] = {
        /* classes, max_batch, layers, heads, width, context */
        {1, B, L, NH, C, T}, {V, B, L, NH, C, 0}, {V, B, L, 1, 0, T},
        {V, B, L, 0, C, T},  {V, B, 0, NH, C, T}, {V, 0, L, NH, C, T},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cfg = gpt_config(&s, bad[i][0], bad[i][1], bad[i][2], bad[i][3], bad[i][4], bad[i][5]);
        assert_int_equal(sov_model_create("gpt", &cfg, NULL, &m), SOV_ERR_INVALID);
    }
    const char *not_numbers[] = {"4x", "", "-1", "300"};
    for (size_t i = 0; i < sizeof not_numbers / sizeof *not_numbers; i++) {
        cfg = gpt_config(&s, V, B, L, NH, C, T);
        s.values[0] = not_numbers[i];
        assert_int_equal(sov_model_create("gpt", &cfg, NULL, &m), SOV_ERR_INVALID);
        assert_non_null(strstr(sov_last_error(), "--layers"));
    }
    assert_null(m);
}

/* The GPT's own settings, with defaults; a NULL value array takes them all. */
static void settings_default_from_the_table(void **state) {
    (void)state;
    const sov_model_ops *ops = sov_model_find("gpt");
    assert_int_equal(ops->kind, SOV_MODEL_LANGUAGE);
    assert_non_null(ops->next_logits);
    const char *want[][2] = {{"layers", "4"}, {"heads", "4"}, {"width", "128"}, {"context", "128"}};
    assert_int_equal(ops->num_settings, 4);
    for (int j = 0; j < 4; j++) {
        assert_string_equal(ops->settings[j].name, want[j][0]);
        assert_string_equal(ops->settings[j].default_value, want[j][1]);
    }
    sov_model_config cfg = {.classes = V, .max_batch = 1};
    sov_model *m;
    assert_int_equal(sov_model_create("gpt", &cfg, NULL, &m), SOV_OK);
    assert_int_equal(m->predictions_per_sample, 128);
    sov_model_destroy(m);
}

static void train_step_is_deterministic(void **state) {
    fixture *f = *state;
    sov_model *m = f->m;
    sov_batch b = {.n = B, .tokens = f->tokens, .y = f->y};
    float l1, l2;
    assert_int_equal(m->ops->train_step(m, &b, &l1, NULL), SOV_OK);
    float *g1 = malloc(m->num_params * sizeof(float));
    memcpy(g1, m->grads, m->num_params * sizeof(float));
    memset(m->grads, 0xff, m->num_params * sizeof(float)); /* stale contents must not leak in */
    assert_int_equal(m->ops->train_step(m, &b, &l2, NULL), SOV_OK);
    assert_memory_equal(&l1, &l2, sizeof l1);
    assert_memory_equal(g1, m->grads, m->num_params * sizeof(float));
    free(g1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(gradients_match_finite_differences, setup, teardown),
        cmocka_unit_test_setup_teardown(hook_covers_buffer_in_reverse, setup, teardown),
        cmocka_unit_test_setup_teardown(tensors_are_named_and_laid_out, setup, teardown),
        cmocka_unit_test(init_is_gpt2s),
        cmocka_unit_test_setup_teardown(eval_matches_train_step, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_batches_are_refused, setup, teardown),
        cmocka_unit_test(bad_configs_are_refused),
        cmocka_unit_test(settings_default_from_the_table),
        cmocka_unit_test_setup_teardown(train_step_is_deterministic, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The MLP's analytic gradients against central finite differences, for every parameter; and the gradient hook
 * reports each layer's range once, in reverse layer order, covering the whole flat buffer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "rng.h"
#include "device.h"
#include <sovtrain/runtime.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { IN = 7, CLASSES = 3, BATCH = 5 };

typedef struct {
    float x[BATCH * IN];
    int32_t y[BATCH];
    sov_model *m;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    sov_model_config cfg = {.input_dim = IN, .classes = CLASSES, .max_batch = BATCH,
                            .values = (const char *const[]){"6,4"}};
    assert_int_equal(sov_model_create("mlp", &cfg, NULL, &f->m), SOV_OK);
    f->m->ops->init(f->m, 42);
    sov_rng rng;
    sov_rng_seed(&rng, 7, 0);
    for (int i = 0; i < BATCH * IN; i++)
        f->x[i] = 2.0f * sov_rng_uniform(&rng) - 1.0f;
    for (int i = 0; i < BATCH; i++)
        f->y[i] = (int32_t)sov_rng_below(&rng, CLASSES);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    sov_model_destroy(f->m);
    free(f);
    return 0;
}

static double loss_at(fixture *f) {
    float loss;
    sov_batch b = {.n = BATCH, .x = f->x, .y = f->y};
    assert_int_equal(f->m->ops->train_step(f->m, &b, &loss, NULL), SOV_OK);
    return loss;
}

static void gradients_match_finite_differences(void **state) {
    fixture *f = *state;
    sov_model *m = f->m;
    assert_int_equal(m->num_params, (size_t)(IN * 6 + 6 + 6 * 4 + 4 + 4 * CLASSES + CLASSES));
    loss_at(f);
    float *analytic = malloc(m->num_params * sizeof(float));
    for (size_t i = 0; i < m->num_params; i++)
        analytic[i] = m->grads[i];
    const float eps = 1e-3f;
    int checked = 0;
    for (size_t i = 0; i < m->num_params; i++) {
        float saved = m->params[i];
        m->params[i] = saved + eps;
        double up = loss_at(f);
        m->params[i] = saved - eps;
        double down = loss_at(f);
        m->params[i] = saved;
        double numeric = (up - down) / (2.0 * eps);
        double err = fabs(numeric - analytic[i]);
        if (err > 2e-3 + 2e-2 * fabs(analytic[i]))
            fail_msg("parameter %zu: analytic %.6f, finite difference %.6f", i, analytic[i], numeric);
        checked++;
    }
    assert_int_equal(checked, (int)m->num_params);
    /* A gradient that is identically zero would pass the comparison trivially: insist on signal. */
    double norm = 0;
    for (size_t i = 0; i < m->num_params; i++)
        norm += (double)analytic[i] * analytic[i];
    assert_true(norm > 1e-6);
    free(analytic);
}

typedef struct {
    size_t offsets[16], counts[16];
    int calls;
} hook_log;

static void record(void *ctx, size_t offset, size_t count) {
    hook_log *h = ctx;
    h->offsets[h->calls] = offset;
    h->counts[h->calls++] = count;
}

static void hook_covers_layers_in_reverse(void **state) {
    fixture *f = *state;
    hook_log h = {0};
    sov_grad_hook hook = {.ready = record, .ctx = &h};
    float loss;
    sov_batch b = {.n = BATCH, .x = f->x, .y = f->y};
    assert_int_equal(f->m->ops->train_step(f->m, &b, &loss, &hook), SOV_OK);
    assert_int_equal(h.calls, 3);
    size_t end = f->m->num_params;
    for (int i = 0; i < h.calls; i++) { /* contiguous ranges, walking down from the end of the buffer */
        assert_int_equal(h.offsets[i] + h.counts[i], end);
        end = h.offsets[i];
    }
    assert_int_equal(end, 0);
}

static void bad_batches_are_refused(void **state) {
    fixture *f = *state;
    float loss;
    int32_t y[BATCH] = {0, 1, 2, 3, 0}; /* 3 is not a class */
    sov_batch bad_label = {.n = BATCH, .x = f->x, .y = y};
    assert_int_equal(f->m->ops->train_step(f->m, &bad_label, &loss, NULL), SOV_ERR_INVALID);
    sov_batch too_big = {.n = BATCH + 1, .x = f->x, .y = f->y};
    assert_int_equal(f->m->ops->train_step(f->m, &too_big, &loss, NULL), SOV_ERR_INVALID);
}

static void bad_hidden_spec_is_refused(void **state) {
    (void)state;
    sov_model *m = NULL;
    const char *bad[] = {"12x", "0", ",", "5,,5", "-3", "100000"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        sov_model_config cfg = {.input_dim = IN, .classes = CLASSES, .max_batch = 2, .values = &bad[i]};
        assert_int_equal(sov_model_create("mlp", &cfg, NULL, &m), SOV_ERR_INVALID);
        assert_non_null(strstr(sov_last_error(), "--hidden"));
    }
    sov_model_config cfg = {.input_dim = IN, .classes = CLASSES, .max_batch = 2};
    assert_int_equal(sov_model_create("transformer-xl", &cfg, NULL, &m), SOV_ERR_INVALID);
    assert_non_null(strstr(sov_last_error(), "built-in: mlp, gpt"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(gradients_match_finite_differences, setup, teardown),
        cmocka_unit_test_setup_teardown(hook_covers_layers_in_reverse, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_batches_are_refused, setup, teardown),
        cmocka_unit_test(bad_hidden_spec_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

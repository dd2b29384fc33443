/* Optimizers against hand-computed updates (PyTorch's rules), and the LR schedule's shape. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "optim.h"

#include <math.h>
#include <stdlib.h>

static void schedule_warms_up_then_decays(void **state) {
    (void)state;
    sov_optim_config c = {.lr = 1.0f, .warmup_steps = 10, .total_steps = 110, .min_lr_ratio = 0.1f};
    assert_float_equal(sov_lr_at(&c, 0), 0.1f, 1e-6);
    assert_float_equal(sov_lr_at(&c, 4), 0.5f, 1e-6);
    assert_float_equal(sov_lr_at(&c, 9), 1.0f, 1e-6);
    assert_float_equal(sov_lr_at(&c, 10), 1.0f, 1e-6);
    assert_float_equal(sov_lr_at(&c, 60), 0.55f, 1e-6); /* half way down the cosine */
    assert_float_equal(sov_lr_at(&c, 110), 0.1f, 1e-6);
    assert_float_equal(sov_lr_at(&c, 500), 0.1f, 1e-6); /* past the end: stays at the floor */
    for (long s = 10; s < 110; s++)
        assert_true(sov_lr_at(&c, s + 1) <= sov_lr_at(&c, s));
}

/* A two-tensor "model": a decayed weight and an undecayed bias. */
static sov_model *tiny_model(float *params, float *grads) {
    static sov_tensor tensors[2] = {{.name = "w", .offset = 0, .count = 2, .decay = 1},
                                    {.name = "b", .offset = 2, .count = 1, .decay = 0}};
    static sov_model m;
    m = (sov_model){.num_params = 3, .num_tensors = 2, .tensors = tensors, .params = params, .grads = grads};
    return &m;
}

static void sgd_momentum_matches_pytorch(void **state) {
    (void)state;
    float p[3] = {1.0f, -2.0f, 0.5f}, g[3] = {0.5f, 1.0f, -1.0f};
    sov_optim_config c = {.kind = SOV_OPTIM_SGD, .lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f};
    sov_optimizer opt;
    assert_int_equal(sov_optim_init(&opt, &c, 3, NULL), SOV_OK);
    sov_model *m = tiny_model(p, g);
    double norm;
    assert_int_equal(sov_optim_step(&opt, m, 0.1f, &norm), SOV_OK);
    /* step 1: buf = g + wd*p (weights only); p -= lr*buf */
    float b0 = 0.5f + 0.01f * 1.0f, b2 = -1.0f;
    assert_float_equal(p[0], 1.0f - 0.1f * b0, 1e-6);
    assert_float_equal(p[2], 0.5f - 0.1f * b2, 1e-6);
    float p0 = p[0];
    assert_int_equal(sov_optim_step(&opt, m, 0.1f, &norm), SOV_OK);
    /* step 2: buf = 0.9*buf + g + wd*p */
    float b0_2 = 0.9f * b0 + 0.5f + 0.01f * p0;
    assert_float_equal(p[0], p0 - 0.1f * b0_2, 1e-6);
    sov_optim_free(&opt);
}

static void adamw_matches_pytorch(void **state) {
    (void)state;
    float p[3] = {1.0f, -2.0f, 0.5f}, g[3] = {0.5f, 1.0f, -1.0f};
    sov_optim_config c = {.kind = SOV_OPTIM_ADAMW, .lr = 0.01f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                          .weight_decay = 0.1f};
    sov_optimizer opt;
    assert_int_equal(sov_optim_init(&opt, &c, 3, NULL), SOV_OK);
    sov_model *m = tiny_model(p, g);
    double norm;
    assert_int_equal(sov_optim_step(&opt, m, 0.01f, &norm), SOV_OK);
    /* first step: m_hat = g, v_hat = g^2, so the update is lr*g/(|g|+eps), plus decoupled decay on weights */
    assert_float_equal(p[0], 1.0f * (1.0f - 0.01f * 0.1f) - 0.01f * 0.5f / (0.5f + 1e-8f), 1e-6);
    assert_float_equal(p[1], -2.0f * (1.0f - 0.01f * 0.1f) - 0.01f, 1e-6);
    assert_float_equal(p[2], 0.5f + 0.01f, 1e-6); /* bias: no decay */
    /* second step with the same gradient: m_hat = g, v_hat = g^2 again (bias correction) */
    float before = p[2];
    assert_int_equal(sov_optim_step(&opt, m, 0.01f, &norm), SOV_OK);
    assert_float_equal(p[2], before + 0.01f, 1e-5);
    sov_optim_free(&opt);
}

static void clipping_scales_the_global_norm(void **state) {
    (void)state;
    float p[3] = {0, 0, 0}, g[3] = {3.0f, 4.0f, 0.0f}; /* norm 5 */
    sov_optim_config c = {.kind = SOV_OPTIM_SGD, .lr = 1.0f, .clip_norm = 1.0f};
    sov_optimizer opt;
    assert_int_equal(sov_optim_init(&opt, &c, 3, NULL), SOV_OK);
    double norm;
    assert_int_equal(sov_optim_step(&opt, tiny_model(p, g), 1.0f, &norm), SOV_OK);
    assert_float_equal(norm, 5.0, 1e-9);
    assert_float_equal(p[0], -0.6f, 1e-5);
    assert_float_equal(p[1], -0.8f, 1e-5);
    sov_optim_free(&opt);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(schedule_warms_up_then_decays),
        cmocka_unit_test(sgd_momentum_matches_pytorch),
        cmocka_unit_test(adamw_matches_pytorch),
        cmocka_unit_test(clipping_scales_the_global_norm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The global sample order: a permutation per epoch that depends only on (seed, epoch), and rank slices that
 * partition each global batch identically at every world size. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "data.h"

#include <stdlib.h>
#include <string.h>

enum { COUNT = 1000 };

static void epoch_order_is_a_seeded_permutation(void **state) {
    (void)state;
    sov_sampler a, b;
    assert_int_equal(sov_sampler_init(&a, COUNT, 5), SOV_OK);
    assert_int_equal(sov_sampler_init(&b, COUNT, 5), SOV_OK);
    char seen[COUNT] = {0};
    const int32_t *o = sov_sampler_epoch(&a, 3);
    for (int i = 0; i < COUNT; i++) {
        assert_true(o[i] >= 0 && o[i] < COUNT);
        assert_false(seen[o[i]]);
        seen[o[i]] = 1;
    }
    int32_t e3[COUNT];
    memcpy(e3, o, sizeof e3);
    sov_sampler_epoch(&b, 1); /* visiting other epochs first changes nothing */
    assert_memory_equal(sov_sampler_epoch(&b, 3), e3, sizeof e3);
    assert_memory_not_equal(sov_sampler_epoch(&b, 4), e3, sizeof e3);
    sov_sampler c;
    assert_int_equal(sov_sampler_init(&c, COUNT, 6), SOV_OK);
    assert_memory_not_equal(sov_sampler_epoch(&c, 3), e3, sizeof e3);
    sov_sampler_free(&a), sov_sampler_free(&b), sov_sampler_free(&c);
}

static void rank_slices_partition_the_global_batch(void **state) {
    (void)state;
    enum { GLOBAL = 48 };
    sov_sampler one, many;
    assert_int_equal(sov_sampler_init(&one, COUNT, 9), SOV_OK);
    assert_int_equal(sov_sampler_init(&many, COUNT, 9), SOV_OK);
    const int worlds[] = {2, 3, 4, 6, 8};
    for (long step = 0; step < 3 * (COUNT / GLOBAL); step += 7) { /* crosses epoch boundaries */
        int32_t whole[GLOBAL];
        memcpy(whole, sov_sampler_batch(&one, step, GLOBAL, 0, GLOBAL), sizeof whole);
        for (size_t w = 0; w < sizeof worlds / sizeof *worlds; w++) {
            int local = GLOBAL / worlds[w];
            for (int r = 0; r < worlds[w]; r++)
                assert_memory_equal(sov_sampler_batch(&many, step, GLOBAL, r, local), whole + r * local,
                                    (size_t)local * sizeof(int32_t));
        }
    }
    sov_sampler_free(&one), sov_sampler_free(&many);
}

static void an_epoch_visits_each_sample_at_most_once(void **state) {
    (void)state;
    enum { GLOBAL = 64 };
    sov_sampler s;
    assert_int_equal(sov_sampler_init(&s, COUNT, 1), SOV_OK);
    char seen[COUNT] = {0};
    long per_epoch = COUNT / GLOBAL;
    for (long step = per_epoch; step < 2 * per_epoch; step++) { /* epoch 1 */
        const int32_t *b = sov_sampler_batch(&s, step, GLOBAL, 0, GLOBAL);
        for (int i = 0; i < GLOBAL; i++) {
            assert_false(seen[b[i]]);
            seen[b[i]] = 1;
        }
    }
    sov_sampler_free(&s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(epoch_order_is_a_seeded_permutation),
        cmocka_unit_test(rank_slices_partition_the_global_batch),
        cmocka_unit_test(an_epoch_visits_each_sample_at_most_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

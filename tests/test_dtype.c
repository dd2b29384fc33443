/* bf16 / f16 conversions: round to nearest even, specials preserved; f16 checked against the compiler's own
 * _Float16 conversions for every half value and a sweep of floats. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <sovtrain/comm.h>

#include <math.h>
#include <string.h>

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void bf16_rounds_to_nearest_even(void **state) {
    (void)state;
    assert_int_equal(sov_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(sov_f32_to_bf16(-2.0f), 0xc000);
    assert_int_equal(sov_f32_to_bf16(from_bits(0x3f808000)), 0x3f80); /* tie, even stays */
    assert_int_equal(sov_f32_to_bf16(from_bits(0x3f818000)), 0x3f82); /* tie, odd rounds up */
    assert_int_equal(sov_f32_to_bf16(from_bits(0x3f808001)), 0x3f81); /* above the tie */
    assert_int_equal(sov_f32_to_bf16(INFINITY), 0x7f80);
    assert_true(isnan(sov_bf16_to_f32(sov_f32_to_bf16(NAN))));
    assert_int_equal(sov_f32_to_bf16(from_bits(0x7f7fffff)), 0x7f80); /* FLT_MAX rounds to infinity */
    for (uint32_t h = 0; h < 0x10000; h++) {                        /* every finite bf16 round-trips */
        float f = sov_bf16_to_f32((uint16_t)h);
        if (!isnan(f))
            assert_int_equal(sov_f32_to_bf16(f), h);
    }
}

static void f16_matches_the_compiler(void **state) {
    (void)state;
#if defined(__FLT16_MAX__)
    for (uint32_t h = 0; h < 0x10000; h++) {
        _Float16 x;
        uint16_t hb = (uint16_t)h;
        memcpy(&x, &hb, 2);
        float want = (float)x, got = sov_f16_to_f32(hb);
        if (isnan(want))
            assert_true(isnan(got));
        else
            assert_int_equal(bits(got), bits(want));
    }
    /* floats around every f16 exponent, including subnormals, ties and overflow */
    for (uint32_t u = 0x33000000u; u < 0x47800000u + (1u << 20); u += 0x1001u) {
        for (int sign = 0; sign < 2; sign++) {
            float f = from_bits(u | (uint32_t)sign << 31);
            _Float16 h = (_Float16)f;
            uint16_t want;
            memcpy(&want, &h, 2);
            if (sov_f32_to_f16(f) != want)
                fail_msg("f32 %a (0x%08x): got f16 0x%04x, compiler 0x%04x", (double)f, bits(f), sov_f32_to_f16(f), want);
        }
    }
#else
    skip();
#endif
    assert_int_equal(sov_f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(sov_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(sov_f32_to_f16(1e6f), 0x7c00);
    assert_int_equal(sov_f32_to_f16(from_bits(0x33800000)), 0x0001); /* smallest subnormal */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bf16_rounds_to_nearest_even),
        cmocka_unit_test(f16_matches_the_compiler),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

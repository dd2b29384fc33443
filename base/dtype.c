/* dtype.c: element types' sizes and names. */
#include "sov_internal.h"

#include <string.h>

static const struct {
    const char *name;
    size_t size;
} dtypes[SOV_NUM_DTYPES] = {
    [SOV_F32] = {"f32", 4}, [SOV_BF16] = {"bf16", 2}, [SOV_F16] = {"f16", 2}, [SOV_F64] = {"f64", 8},
    [SOV_U8] = {"u8", 1},   [SOV_I64] = {"i64", 8},   [SOV_I32] = {"i32", 4}, [SOV_I16] = {"i16", 2},
    [SOV_I8] = {"i8", 1},   [SOV_BOOL] = {"bool", 1},
};

size_t sov_dtype_size(sov_dtype dtype) { return (unsigned)dtype < SOV_NUM_DTYPES ? dtypes[dtype].size : 0; }

const char *sov_dtype_name(sov_dtype dtype) { return (unsigned)dtype < SOV_NUM_DTYPES ? dtypes[dtype].name : "?"; }

sov_status sov_dtype_parse(const char *name, sov_dtype *out) {
    for (int i = 0; i < SOV_NUM_DTYPES; i++)
        if (strcmp(name, dtypes[i].name) == 0) {
            *out = (sov_dtype)i;
            return SOV_OK;
        }
    return sov_fail(SOV_ERR_INVALID, "unknown element type \"%s\" (f32, bf16, f16, f64, i64, i32, i16, i8, u8 or bool)",
                    name);
}

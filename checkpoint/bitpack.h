/* bitpack.h (internal): plane coding 3: the bits that are the same in every byte of a plane are stored once, and
 * the other k bits of each byte are packed, k bits a byte instead of 8. The low byte of an all-positive float
 * tensor (a second moment, after the sign moved into bit 0) has one constant bit: 1/8 of the plane, at a fraction
 * of the cost of a Huffman pass. Layout: docs/checkpoint-format.md, section 4. */
#ifndef SOV_CKPT_BITPACK_H
#define SOV_CKPT_BITPACK_H

#include "sov_internal.h"

#define SOV_BITPACK_HEADER 4 /* mask, value, two zero bytes */

/* The bits that are the same in all n bytes (mask) and their values. */
void sov_bitpack_constant(const uint8_t *plane, size_t n, uint8_t *mask, uint8_t *value);
/* Stored bytes of a plane of n bytes with constant bits `mask`. */
size_t sov_bitpack_bytes(size_t n, uint8_t mask);
/* Packs the plane (whose bits `mask` are `value` in every byte) into out, which has room for `cap` bytes (at
 * least sov_bitpack_bytes(n, mask)); returns the stored bytes. */
size_t sov_bitpack_encode(const uint8_t *plane, size_t n, uint8_t mask, uint8_t value, uint8_t *out, size_t cap);
/* Unpacks a stored plane of `bytes` into n bytes at dst, checking every field; `where` and `k` (the plane's
 * index) name it in errors. */
sov_status sov_bitpack_decode(const uint8_t *in, size_t bytes, uint8_t *dst, size_t n, const char *where, int k);

#endif

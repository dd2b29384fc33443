/* checksum.h (internal): XXH3-64 (libxxhash) of the bytes a checkpoint saves and restores, at the speed of the
 * widest vectors the CPU has.
 *
 * Debian's libxxhash is built for the x86-64 baseline (SSE2). Every chunk is hashed twice on save and twice on
 * restore, and at SSE2 speed the hashes took a fifth of a save's CPU time. On x86-64 the same XXH3 is also
 * compiled from libxxhash's own header for AVX2 (xxh3_avx2.c, xxhash.h's documented XXH_INLINE_ALL use) and
 * chosen at load time when the CPU has AVX2; the result is the same hash, bit for bit. */
#ifndef SOV_CKPT_CHECKSUM_H
#define SOV_CKPT_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

uint64_t sov_xxh3(const void *data, size_t bytes);

/* The same hash over data given in pieces (XXH3's streaming API): what a pass that reads each block once for
 * several purposes uses. create returns NULL when out of memory. */
typedef struct sov_xxh3_stream sov_xxh3_stream;
sov_xxh3_stream *sov_xxh3_stream_create(void);
void sov_xxh3_stream_free(sov_xxh3_stream *s);
void sov_xxh3_stream_reset(sov_xxh3_stream *s);
void sov_xxh3_stream_update(sov_xxh3_stream *s, const void *data, size_t bytes);
uint64_t sov_xxh3_stream_digest(const sov_xxh3_stream *s);

#endif

/* codec.h (internal): one checkpoint chunk, encoded and decoded.
 *
 * A chunk is up to a few MiB of one buffer's raw bytes. Elements of 2, 4 or 8 bytes are split into planes first
 * (byte k of every element together): floats after moving the sign bit down beside the mantissa (rotate left by
 * one), so the exponent fills the top byte; integers as they are. One-byte elements are coded as they are. Each plane is stored raw when its sampled order-0 entropy
 * promises no gain, else zstd-compressed: literals-only Huffman, which suits the exponent plane, or level 1, whose
 * matches suit runs of zeros, when adjacent bytes of the sample repeat more than chance and level 1 does better on
 * it; a plane that does not shrink is stored raw. The header carries xxh3 checksums of the raw bytes, the stored payload and itself, so any
 * damage is detected chunk by chunk. Layout: docs/checkpoint-format.md. */
#ifndef SOV_CKPT_CODEC_H
#define SOV_CKPT_CODEC_H

#include "sov_internal.h"

#define SOV_CHUNK_MAGIC 0x4b484353u /* "SCHK" */
#define SOV_CHUNK_MAX_PLANES 8
#define SOV_CHUNK_MAX_RAW ((uint64_t)1 << 30)
#define SOV_CHUNK_HEADER_BYTES 112

typedef struct sov_chunk_header {
    uint32_t magic;
    uint8_t elem_size;  /* 1, 2, 4 or 8 */
    uint8_t planes;     /* 1 (no transform) or elem_size */
    uint8_t transform;  /* SOV_TRANSFORM_* */
    uint8_t reserved;
    uint64_t raw_bytes;
    uint64_t stored_bytes; /* payload after the header */
    uint64_t xxh3_raw;
    uint64_t xxh3_stored;
    uint8_t coding[SOV_CHUNK_MAX_PLANES];       /* 0 raw, 1 zstd, 2 nibble pairs, 3 constant bits packed */
    uint32_t plane_bytes[SOV_CHUNK_MAX_PLANES]; /* stored size of each plane */
    uint64_t xxh3_header; /* of the serialised header's first 104 bytes */
} sov_chunk_header;

/* How a chunk's elements become planes (the header's transform). */
enum {
    SOV_TRANSFORM_NONE = 0,  /* one plane: the bytes as they are */
    SOV_TRANSFORM_FLOAT = 1, /* sign moved beside the mantissa, then byte planes */
    SOV_TRANSFORM_INT = 2    /* byte planes of the elements as they are */
};
/* The transform that suits a dtype's elements. */
int sov_transform_for(sov_dtype dtype);

typedef struct sov_codec sov_codec; /* per-thread scratch and zstd contexts */

sov_status sov_codec_create(sov_codec **out, size_t max_chunk_bytes);
void sov_codec_destroy(sov_codec *c);

/* Upper bound of an encoded chunk of raw_bytes. */
size_t sov_chunk_bound(size_t raw_bytes);

/* Encodes raw (raw_bytes, elements of elem_size: 1, 2, 4 or 8) with `transform` (NONE for one-byte elements)
 * into out (capacity >= sov_chunk_bound); *out_bytes is the header plus payload. */
sov_status sov_chunk_encode(sov_codec *c, const void *raw, size_t raw_bytes, int elem_size, int transform, void *out,
                            size_t *out_bytes);

/* Reads and checks a serialised header (SOV_CHUNK_HEADER_BYTES bytes): magic, self-checksum, bounds. `where`
 * names the chunk in error messages. */
sov_status sov_chunk_parse_header(const void *bytes, sov_chunk_header *h, const char *where);

/* Decodes one chunk (header + payload, `bytes` long) into raw (capacity raw_cap), verifying every checksum. */
sov_status sov_chunk_decode(sov_codec *c, const void *chunk, size_t bytes, void *raw, size_t raw_cap,
                            size_t *raw_bytes, const char *where);

/* The same for a chunk whose bytes were authenticated (an encrypted checkpoint's, by AES-GCM): its stored-bytes
 * checksum is not computed again; everything else is checked. */
sov_status sov_chunk_decode_authenticated(sov_codec *c, const void *chunk, size_t bytes, void *raw, size_t raw_cap,
                                          size_t *raw_bytes, const char *where);

/* Order-0 entropy in bits per byte of n bytes (0..8). */
double sov_entropy_bits(const uint8_t *p, size_t n);

/* The transform alone (for the bench's entropy bound): planes[k * count + i] = byte k of element i after the
 * transform (FLOAT or INT). */
void sov_planes_split(const void *raw, size_t count, int elem_size, int transform, uint8_t *planes);

#endif

/* chunk_reader.h (internal): reads a checkpoint's chunks from its data files and decodes them, with every core
 * decoding while the disk is kept busy.
 *
 * Reading and decoding run on separate threads. Fetchers only read: each takes the next chunk in file order and a
 * free buffer, and reads the chunk into it (O_DIRECT where the filesystem allows it). Decoders only decode: each
 * takes any chunk that has been read, checks and decodes it into place, and frees its buffer. With a thread doing
 * both in turn, the reads of all threads came back together and the disk then stood idle while all of them
 * decoded (a quarter of a restore's time on the development VM). */
#ifndef SOV_CKPT_CHUNK_READER_H
#define SOV_CKPT_CHUNK_READER_H

#include "sov_internal.h"

#include <stddef.h>
#include <stdint.h>

typedef struct sov_chunk_ref {
    size_t file;        /* index into the files given to sov_chunk_reader_run */
    size_t elem_offset; /* where in its buffer it goes, in elements */
    size_t elems;
    size_t elem_bytes; /* of its buffer */
    uint64_t file_offset, bytes;
    size_t pad;   /* bytes of zeros after it in the file (to the next chunk's aligned start), checked */
    uint8_t *dst; /* the start of the buffer it decodes into; NULL: verify only (decoded and dropped) */
} sov_chunk_ref;

/* Codecs and buffers, made at the first run and reused by the next ones (made anew for bigger chunks). */
typedef struct sov_chunk_reader sov_chunk_reader;

sov_status sov_chunk_reader_create(sov_chunk_reader **out);
void sov_chunk_reader_destroy(sov_chunk_reader *r);

/* Reads and decodes refs[0..n), each into dst + elem_offset * elem_bytes (or into scratch where dst is NULL), from
 * dir/files[ref.file]. Chunks are taken in the order given (sort them by file and offset for sequential reads).
 * Fails with the first error met, naming the file and the chunk's offset. */
sov_status sov_chunk_reader_run(sov_chunk_reader *r, const char *dir, const char *const *files,
                                const sov_chunk_ref *refs, size_t n);

#endif

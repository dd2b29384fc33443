/* fsio.h (internal): durable file operations and the manifest seal, shared by the writer, reader and tools. */
#ifndef SOV_CKPT_FSIO_H
#define SOV_CKPT_FSIO_H

#include "sov.h"

#include <stddef.h>
#include <sys/types.h>

sov_status sov_write_all(int fd, const void *buf, size_t n, const char *path);
sov_status sov_pread_all(int fd, void *buf, size_t n, off_t offset, const char *path);
/* fsync of a file or directory by path. */
sov_status sov_fsync_path(const char *path);
/* path.tmp written, fsync'd, renamed over path, the directory fsync'd. */
sov_status sov_write_file_atomic(const char *dir, const char *name, const void *data, size_t n);
/* Reads a whole file of at most max bytes (NUL-terminated in *data). */
sov_status sov_read_file(const char *path, size_t max, char **data, size_t *n);
/* Removes a directory and the files in it (one level: checkpoint directories are flat). */
sov_status sov_remove_dir(const char *path);

/* The manifest checksum: the manifest text carries "manifest_xxh3": "<16 hex digits>", the xxh3 of the whole
 * text with those 16 digits written as zeros. seal() fills them in; check() verifies them. */
#define SOV_MANIFEST_SEAL_KEY "\"manifest_xxh3\""
sov_status sov_manifest_seal(char *text, size_t n);
sov_status sov_manifest_check(const char *text, size_t n, const char *where);

#endif

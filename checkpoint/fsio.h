/* fsio.h (internal): durable file operations and the manifest seal, shared by the writer, reader and tools. */
#ifndef SOV_CKPT_FSIO_H
#define SOV_CKPT_FSIO_H

#include "crypto.h"
#include "sov_internal.h"

#include <jansson.h>
#include <stddef.h>
#include <sys/types.h>

sov_status sov_write_all(int fd, const void *buf, size_t n, const char *path);
sov_status sov_pread_all(int fd, void *buf, size_t n, off_t offset, const char *path);
/* A buffer for O_DIRECT reads and writes: zeroed, 2 MiB-aligned, with transparent huge pages asked for. The block
 * layer gives a request one segment per physically contiguous run of memory and caps the segments (254 on
 * virtio-blk), so a 4 MiB transfer from 4 KiB pages is cut into ~1 MiB requests, which read at ~60 % of the disk's
 * speed here; from 2 MiB pages it goes out whole. Sizes from 2 MiB up are mapped in whole huge pages. Without
 * huge pages the buffer still works, only slower. NULL when out of memory. Free with sov_io_free and the same
 * size. */
void *sov_io_alloc(size_t bytes);
void sov_io_free(void *buf, size_t bytes);
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
/* An encrypted checkpoint's manifest also carries "manifest_mac": "<64 hex digits>" just before the seal: the
 * HMAC-SHA256, under a key derived from the checkpoint's data key, of the whole text with the MAC's and the seal's
 * digits written as zeros. Without the data key no one can change the manifest unnoticed. mac() fills it in
 * (before the seal); mac_check() verifies it. */
#define SOV_MANIFEST_MAC_ZERO "0000000000000000000000000000000000000000000000000000000000000000"
sov_status sov_manifest_mac(char *text, size_t n, const sov_key *key);
sov_status sov_manifest_mac_check(const char *text, size_t n, const sov_key *key, const char *where);
/* Stores manifest m as dir/manifest.json the way every writer does: its "manifest_mac" (with mac_key) and seal set
 * last, as indented text, MACed, sealed and written atomically. The text in *text (free it) when text is given. */
sov_status sov_manifest_store(const char *dir, json_t *m, const sov_key *mac_key, char **text, size_t *n);

#endif

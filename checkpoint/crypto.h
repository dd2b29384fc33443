/* crypto.h (internal): encryption at rest (docs/checkpoint-format.md section 8, docs/security.md), over OpenSSL.
 *
 * Envelope encryption: each save has a fresh random data key, which the operator's key wraps for the manifest
 * (keys.h). From the data key, HKDF-SHA256 with the save's id as salt derives one key per purpose: each data file
 * ("file:rank-0.bin"), the metadata ("meta") and the manifest's MAC ("manifest"). A chunk is sealed with
 * AES-256-GCM under its file's key. Its nonce is its index in the file and a last-chunk flag, and its clear header
 * is the associated data: no nonce repeats under a key (a fresh data key per save, a key per file, an index per
 * chunk), and a chunk cannot be moved, swapped between files or checkpoints, or cut off unnoticed. The clear
 * header checksums the ciphertext, so the stored bytes can be checked without the key; nothing in the clear
 * depends on the plaintext. */
#ifndef SOV_CKPT_CRYPTO_H
#define SOV_CKPT_CRYPTO_H

#include "sov_internal.h"

#include <stddef.h>
#include <stdint.h>

#define SOV_KEY_BYTES 32
#define SOV_SEAL_MAGIC 0x45484353u /* "SCHE" */
#define SOV_SEAL_HEADER_BYTES 64
#define SOV_SEAL_TAG_BYTES 16
#define SOV_SEAL_OVERHEAD (SOV_SEAL_HEADER_BYTES + SOV_SEAL_TAG_BYTES)
#define SOV_SEAL_LAST 1u /* flag: the last chunk of its file */

typedef struct sov_key {
    uint8_t bytes[SOV_KEY_BYTES];
} sov_key;

/* Cryptographically random bytes (OpenSSL's DRBG). */
sov_status sov_random_bytes(void *out, size_t n);
/* Overwrites secret memory (the compiler may not drop it). */
void sov_wipe(void *p, size_t n);
/* The key for `purpose` from a save's data key (HKDF-SHA256, salt: save_id as 8 little-endian bytes). */
sov_status sov_derive_key(const sov_key *data_key, uint64_t save_id, const char *purpose, sov_key *out);
/* HMAC-SHA256 of data under key. */
sov_status sov_hmac(const sov_key *key, const void *data, size_t n, uint8_t mac[32]);

/* Seals a chunk in place. buf holds SOV_SEAL_HEADER_BYTES of room, then the encoded chunk (inner bytes), then room
 * for the tag; *total is the sealed chunk's size (inner + SOV_SEAL_OVERHEAD). */
sov_status sov_seal_chunk(const sov_key *file_key, uint64_t index, int last, uint8_t *buf, size_t inner,
                          size_t *total);
/* Checks a sealed chunk's stored bytes, without the key: its clear header (magic, checksum, shape, and that it is
 * chunk `index` of its file, the last one or not) and the checksum of its ciphertext. `where` names it. */
sov_status sov_seal_check(const uint8_t *chunk, size_t bytes, uint64_t index, int last, const char *where);
/* Checks the clear header, then decrypts in place and authenticates (the tag covers what the ciphertext's checksum
 * would): the encoded chunk is then at chunk + SOV_SEAL_HEADER_BYTES, bytes - SOV_SEAL_OVERHEAD long. On failure
 * the bytes are garbage. */
sov_status sov_seal_open(const sov_key *file_key, uint8_t *chunk, size_t bytes, uint64_t index, int last,
                         const char *where);

/* A small secret (the metadata) under a key used for nothing else: base64 of ciphertext and tag. */
sov_status sov_encrypt_text(const sov_key *key, const char *text, char **b64);
sov_status sov_decrypt_text(const sov_key *key, const char *b64, char **text, const char *where);

/* RFC 5649 key wrap of a data key under a 32-byte key-encryption key: 40 bytes. unwrap fails when the
 * key-encryption key is not the one that wrapped it, or the wrapped bytes are damaged. */
#define SOV_WRAPPED_BYTES 40
sov_status sov_key_wrap_rfc5649(const sov_key *kek, const sov_key *data_key, uint8_t wrapped[SOV_WRAPPED_BYTES]);
int sov_key_unwrap_rfc5649(const sov_key *kek, const uint8_t *wrapped, size_t n, sov_key *data_key);

/* Base64 (RFC 4648, with padding). encode returns a malloc'ed string; decode fails on anything else, and on
 * more than cap bytes. */
char *sov_base64_encode(const void *data, size_t n);
int sov_base64_decode(const char *text, uint8_t *out, size_t cap, size_t *n);

/* Lowercase hex of n bytes into out (2n + 1 bytes). */
void sov_hex(const uint8_t *bytes, size_t n, char *out);
/* The n bytes that exactly 2n lowercase hex digits stand for (sov_hex's form); 0 for anything else. */
int sov_unhex(const char *hex, uint8_t *out, size_t n);

#endif

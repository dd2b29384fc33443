/* signing.h (internal): signatures in the OpenSSF model signing format (docs/security.md), over OpenSSL.
 *
 * model.sig in a checkpoint directory is a Sigstore bundle v0.3 (JSON): a DSSE envelope over an in-toto statement
 * v1 whose predicate (type https://model_signing/signature/v1.0) lists every file of the directory with its
 * SHA-256, sorted by name, and whose one subject is the directory, its digest the SHA-256 of the files' digests
 * concatenated in that order. The signature is ECDSA (P-256, P-384 or P-521, with SHA-256, -384 or -512) over the
 * envelope's pre-authentication encoding; the bundle's public key hint is the SHA-256 of the PEM public key. So
 * `model_signing verify key` (PyPI model-signing) verifies what sovtrain signs, and sovtrain verifies what it
 * signs. The files' digests come from their writers, which hash what they write. */
#ifndef SOV_CKPT_SIGNING_H
#define SOV_CKPT_SIGNING_H

#include "sov_internal.h"
#include <sovtrain/ckpt.h>

#include <stddef.h>
#include <stdint.h>

#define SOV_SIGNATURE_FILE "model.sig"
#define SOV_SHA256_BYTES 32

/* SHA-256 over data given in pieces. new returns NULL when out of memory. */
typedef struct sov_sha256 sov_sha256;
sov_sha256 *sov_sha256_new(void);
void sov_sha256_update(sov_sha256 *h, const void *data, size_t n);
void sov_sha256_final(sov_sha256 *h, uint8_t digest[SOV_SHA256_BYTES]);
void sov_sha256_free(sov_sha256 *h);

/* One file the statement lists. */
typedef struct sov_signed_file {
    char name[256];
    uint8_t sha256[SOV_SHA256_BYTES];
} sov_signed_file;

/* model.sig's text (malloc'ed) for directory `subject` (its name) holding `files` (sorted here by name). */
sov_status sov_sign_files(const sov_ckpt_signer *signer, const char *subject, sov_signed_file *files, int n,
                          char **bundle);

/* A parsed model.sig: the statement's payload and the signature, as the bundle holds them. */
typedef struct sov_bundle {
    uint8_t *payload, *sig;
    size_t payload_n, sig_n;
    char hint[65]; /* "" when the bundle has none */
} sov_bundle;

/* Parses model.sig's text (n bytes); `where` names it in errors. Frees with sov_bundle_free. */
sov_status sov_bundle_parse(const char *text, size_t n, sov_bundle *b, const char *where);
void sov_bundle_free(sov_bundle *b);

/* The statement's files (malloc'ed array) and ignored paths, from a payload whose signature was checked. */
typedef struct sov_statement {
    sov_signed_file *files;
    int nfiles;
    char **ignore;
    int nignore;
} sov_statement;
sov_status sov_statement_parse(const uint8_t *payload, size_t n, sov_statement *s, const char *where);
void sov_statement_free(sov_statement *s);

#endif

/* signing.c: see signing.h. OpenSSL signs and hashes; jansson reads and writes the JSON. */
#include "signing.h"
#include "crypto.h"
#include "fsio.h"

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BUNDLE_MEDIA_TYPE "application/vnd.dev.sigstore.bundle.v0.3+json"
#define PAYLOAD_TYPE "application/vnd.in-toto+json"
#define STATEMENT_TYPE "https://in-toto.io/Statement/v1"
#define PREDICATE_TYPE "https://model_signing/signature/v1.0"
#define BUNDLE_MAX ((size_t)64 << 20)
#define MAX_FILES 65536

/* ---- SHA-256 ---- */

struct sov_sha256 {
    EVP_MD_CTX *ctx;
};

sov_sha256 *sov_sha256_new(void) {
    sov_sha256 *h = calloc(1, sizeof *h);
    if (h && (!(h->ctx = EVP_MD_CTX_new()) || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1)) {
        sov_sha256_free(h);
        return NULL;
    }
    return h;
}

void sov_sha256_update(sov_sha256 *h, const void *data, size_t n) { EVP_DigestUpdate(h->ctx, data, n); }

void sov_sha256_final(sov_sha256 *h, uint8_t digest[SOV_SHA256_BYTES]) {
    unsigned len = 0;
    EVP_DigestFinal_ex(h->ctx, digest, &len);
}

void sov_sha256_free(sov_sha256 *h) {
    if (!h)
        return;
    EVP_MD_CTX_free(h->ctx);
    free(h);
}

static void sha256_of(const void *data, size_t n, uint8_t digest[SOV_SHA256_BYTES]) {
    unsigned len = 0;
    EVP_Digest(data, n, digest, &len, EVP_sha256(), NULL);
}

/* ---- keys ---- */

struct sov_ckpt_signer {
    EVP_PKEY *key;
    char hint[65]; /* SHA-256 of the public key's PEM, in hex */
};

/* The digest that goes with an EC key's curve, as model_signing pairs them; NULL for another key. */
static const char *digest_for(EVP_PKEY *key) {
    char group[64] = "";
    if (EVP_PKEY_get_base_id(key) != EVP_PKEY_EC ||
        !EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, NULL))
        return NULL;
    return !strcmp(group, "prime256v1") ? "SHA256" : !strcmp(group, "secp384r1") ? "SHA384"
           : !strcmp(group, "secp521r1") ? "SHA512" : NULL;
}

/* The hex SHA-256 of a public key's PEM (SubjectPublicKeyInfo), the bundle's hint. */
static int public_key_hint(EVP_PKEY *key, char hint[65]) {
    BIO *bio = BIO_new(BIO_s_mem());
    char *pem = NULL;
    long n = bio && PEM_write_bio_PUBKEY(bio, key) == 1 ? BIO_get_mem_data(bio, &pem) : 0;
    uint8_t digest[SOV_SHA256_BYTES];
    if (n > 0) {
        sha256_of(pem, (size_t)n, digest);
        sov_hex(digest, sizeof digest, hint);
    }
    BIO_free(bio);
    return n > 0;
}

/* A PEM file: private keys must not be readable by group or others. */
static sov_status open_pem(const char *path, int private, FILE **out) {
    FILE *f = fopen(path, "r");
    struct stat sb;
    if (!f)
        return sov_fail(SOV_ERR_IO, "%s: %s", path, strerror(errno));
    if (private && fstat(fileno(f), &sb) == 0 && (sb.st_mode & (S_IRWXG | S_IRWXO))) {
        fclose(f);
        return sov_fail(SOV_ERR_INVALID, "signing key %s is accessible to group or others (mode %03o): refusing it; "
                        "chmod 600 %s", path, (unsigned)(sb.st_mode & 0777), path);
    }
    *out = f;
    return SOV_OK;
}

sov_status sov_ckpt_signer_from_pem(const char *path, sov_ckpt_signer **out) {
    FILE *f;
    SOV_CHECK(open_pem(path, 1, &f));
    EVP_PKEY *key = PEM_read_PrivateKey(f, NULL, NULL, (void *)"");
    fclose(f);
    ERR_clear_error();
    if (!key || !digest_for(key)) {
        EVP_PKEY_free(key);
        return sov_fail(SOV_ERR_INVALID, "signing key %s: expected an unencrypted ECDSA private key on P-256, P-384 "
                        "or P-521 in PEM (make one with: openssl ecparam -name prime256v1 -genkey -noout -out %s)",
                        path, path);
    }
    sov_ckpt_signer *s = sov_calloc(1, sizeof *s);
    if (!s || !public_key_hint(key, s->hint)) {
        EVP_PKEY_free(key);
        free(s);
        return sov_fail(SOV_ERR_NOMEM, "signing key %s: out of memory", path);
    }
    s->key = key;
    *out = s;
    return SOV_OK;
}

void sov_ckpt_signer_free(sov_ckpt_signer *s) {
    if (!s)
        return;
    EVP_PKEY_free(s->key);
    free(s);
}

/* ---- signing ---- */

/* DSSE's pre-authentication encoding of an in-toto payload: "DSSEv1 <len type> <type> <len body> <body>". */
static uint8_t *pae(const uint8_t *payload, size_t n, size_t *out_n) {
    char head[128];
    int h = snprintf(head, sizeof head, "DSSEv1 %zu %s %zu ", strlen(PAYLOAD_TYPE), PAYLOAD_TYPE, n);
    uint8_t *out = malloc((size_t)h + n + 1);
    if (out) {
        memcpy(out, head, (size_t)h);
        memcpy(out + h, payload, n);
        *out_n = (size_t)h + n;
    }
    return out;
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const sov_signed_file *)a)->name, ((const sov_signed_file *)b)->name);
}

/* The in-toto statement listing the files (sorted) as compact JSON text. */
static char *statement_json(const char *subject, const sov_signed_file *files, int n) {
    json_t *resources = json_array();
    sov_sha256 *all = sov_sha256_new();
    char hex[65];
    for (int i = 0; all && i < n; i++) {
        sov_hex(files[i].sha256, SOV_SHA256_BYTES, hex);
        json_array_append_new(resources, json_pack("{s:s, s:s, s:s}", "name", files[i].name, "algorithm", "sha256",
                                                   "digest", hex));
        sov_sha256_update(all, files[i].sha256, SOV_SHA256_BYTES);
    }
    uint8_t digest[SOV_SHA256_BYTES];
    if (all)
        sov_sha256_final(all, digest);
    sov_sha256_free(all);
    sov_hex(digest, sizeof digest, hex);
    json_t *st = all ? json_pack("{s:s, s:[{s:s, s:{s:s}}], s:s, s:{s:o, s:{s:s, s:s, s:b, s:[s]}}}", "_type",
                                 STATEMENT_TYPE, "subject", "name", subject, "digest", "sha256", hex, "predicateType",
                                 PREDICATE_TYPE, "predicate", "resources", resources, "serialization", "method",
                                 "files", "hash_type", "sha256", "allow_symlinks", 0, "ignore_paths",
                                 SOV_SIGNATURE_FILE)
                     : NULL;
    if (!st)
        json_decref(resources);
    char *text = st ? json_dumps(st, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(st);
    return text;
}

sov_status sov_sign_files(const sov_ckpt_signer *signer, const char *subject, sov_signed_file *files, int n,
                          char **bundle) {
    qsort(files, (size_t)n, sizeof *files, by_name);
    char *statement = statement_json(subject, files, n);
    size_t m = 0, sig_n = 0;
    uint8_t *msg = statement ? pae((const uint8_t *)statement, strlen(statement), &m) : NULL, *sig = NULL;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = msg && ctx &&
             EVP_DigestSignInit_ex(ctx, NULL, digest_for(signer->key), NULL, NULL, signer->key, NULL) == 1 &&
             EVP_DigestSign(ctx, NULL, &sig_n, msg, m) == 1 && (sig = malloc(sig_n)) &&
             EVP_DigestSign(ctx, sig, &sig_n, msg, m) == 1;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    char *payload64 = ok ? sov_base64_encode(statement, strlen(statement)) : NULL;
    char *sig64 = ok ? sov_base64_encode(sig, sig_n) : NULL;
    json_t *b = payload64 && sig64
                    ? json_pack("{s:s, s:{s:{s:s}, s:[]}, s:{s:s, s:s, s:[{s:s}]}}", "mediaType", BUNDLE_MEDIA_TYPE,
                                "verificationMaterial", "publicKey", "hint", signer->hint, "tlogEntries",
                                "dsseEnvelope", "payload", payload64, "payloadType", PAYLOAD_TYPE, "signatures",
                                "sig", sig64)
                    : NULL;
    *bundle = b ? json_dumps(b, JSON_INDENT(1) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(b);
    free(statement);
    free(msg);
    free(sig);
    free(payload64);
    free(sig64);
    if (!ok)
        return sov_fail(SOV_ERR_INTERNAL, "signing the checkpoint (ECDSA) failed");
    return *bundle ? SOV_OK : sov_fail(SOV_ERR_NOMEM, "signing the checkpoint: out of memory");
}

/* ---- reading a signature ---- */

/* A base64 string field decoded into a new buffer. */
static int decode_field(const json_t *v, uint8_t **out, size_t *n) {
    const char *text = json_string_value(v);
    size_t cap = text ? strlen(text) / 4 * 3 + 3 : 0;
    *out = text ? malloc(cap + 1) : NULL;
    if (*out && sov_base64_decode(text, *out, cap, n))
        return 1;
    free(*out);
    *out = NULL;
    return 0;
}

sov_status sov_bundle_parse(const char *text, size_t n, sov_bundle *b, const char *where) {
    *b = (sov_bundle){0};
    json_error_t e;
    json_t *root = json_loadb(text, n, JSON_REJECT_DUPLICATES, &e);
    json_t *env = json_object_get(root, "dsseEnvelope");
    const char *media = json_string_value(json_object_get(root, "mediaType"));
    const char *type = json_string_value(json_object_get(env, "payloadType"));
    const char *hint = json_string_value(json_object_get(json_object_get(json_object_get(root,
                                                         "verificationMaterial"), "publicKey"), "hint"));
    json_t *sigs = json_object_get(env, "signatures");
    sov_status st = SOV_OK;
    if (!json_is_object(root))
        st = sov_fail(SOV_ERR_FORMAT, "%s: not a JSON object (%s)", where, root ? "another value" : e.text);
    else if (!media || strcmp(media, BUNDLE_MEDIA_TYPE) != 0)
        st = sov_fail(SOV_ERR_FORMAT, "%s: not a Sigstore bundle v0.3 (mediaType %s)", where, media ? media : "missing");
    else if (!type || strcmp(type, PAYLOAD_TYPE) != 0 || json_array_size(sigs) != 1)
        st = sov_fail(SOV_ERR_FORMAT, "%s: not a DSSE envelope over an in-toto statement with one signature", where);
    else if (hint && strlen(hint) != 64)
        st = sov_fail(SOV_ERR_FORMAT, "%s: its public key hint is not a SHA-256 in hex", where);
    else if (!decode_field(json_object_get(env, "payload"), &b->payload, &b->payload_n) ||
             !decode_field(json_object_get(json_array_get(sigs, 0), "sig"), &b->sig, &b->sig_n))
        st = sov_fail(SOV_ERR_FORMAT, "%s: its payload or signature is not base64", where);
    if (st == SOV_OK && hint)
        snprintf(b->hint, sizeof b->hint, "%s", hint);
    json_decref(root);
    if (st != SOV_OK)
        sov_bundle_free(b);
    return st;
}

void sov_bundle_free(sov_bundle *b) {
    free(b->payload);
    free(b->sig);
    *b = (sov_bundle){0};
}

/* The statement's resources into s->files: names of 1..255 bytes without '/', sha256 digests. */
static sov_status statement_files(json_t *resources, sov_statement *s, const char *where) {
    size_t n = json_array_size(resources), i;
    json_t *r;
    if (!json_is_array(resources) || n > MAX_FILES || !(s->files = calloc(n + 1, sizeof *s->files)))
        return sov_fail(SOV_ERR_FORMAT, "%s: the statement's resources are missing or too many", where);
    json_array_foreach(resources, i, r) {
        const char *name = json_string_value(json_object_get(r, "name"));
        const char *alg = json_string_value(json_object_get(r, "algorithm"));
        sov_signed_file *f = &s->files[s->nfiles];
        if (!name || !*name || strlen(name) >= sizeof f->name || !alg || strcmp(alg, "sha256") != 0 ||
            !sov_unhex(json_string_value(json_object_get(r, "digest")), f->sha256, SOV_SHA256_BYTES))
            return sov_fail(SOV_ERR_FORMAT, "%s: resource %zu is not {name, algorithm: sha256, digest}", where, i);
        snprintf(f->name, sizeof f->name, "%s", name);
        s->nfiles++;
    }
    return SOV_OK;
}

sov_status sov_statement_parse(const uint8_t *payload, size_t n, sov_statement *s, const char *where) {
    *s = (sov_statement){0};
    json_t *st = json_loadb((const char *)payload, n, JSON_REJECT_DUPLICATES, NULL);
    json_t *pred = json_object_get(st, "predicate"), *ser = json_object_get(pred, "serialization");
    json_t *ignore = json_object_get(ser, "ignore_paths"), *p;
    const char *type = json_string_value(json_object_get(st, "predicateType"));
    const char *method = json_string_value(json_object_get(ser, "method"));
    const char *hash = json_string_value(json_object_get(ser, "hash_type"));
    sov_status rc = SOV_OK;
    if (!json_is_object(st) || !type || strcmp(type, PREDICATE_TYPE) != 0)
        rc = sov_fail(SOV_ERR_FORMAT, "%s: the payload is not a model signing statement (%s)", where, PREDICATE_TYPE);
    else if (!method || strcmp(method, "files") != 0 || !hash || strcmp(hash, "sha256") != 0)
        rc = sov_fail(SOV_ERR_FORMAT, "%s: the statement does not hash whole files with sha256 (method %s)", where,
                      method ? method : "missing");
    else if (ignore && (!json_is_array(ignore) || json_array_size(ignore) > 1024))
        rc = sov_fail(SOV_ERR_FORMAT, "%s: its ignore_paths is not a list", where);
    if (rc == SOV_OK)
        rc = statement_files(json_object_get(pred, "resources"), s, where);
    if (rc == SOV_OK && !(s->ignore = calloc(json_array_size(ignore) + 1, sizeof *s->ignore)))
        rc = SOV_ERR_NOMEM;
    size_t i;
    json_array_foreach(ignore, i, p) {
        if (rc == SOV_OK && (!json_is_string(p) || !(s->ignore[s->nignore++] = strdup(json_string_value(p)))))
            rc = sov_fail(SOV_ERR_FORMAT, "%s: ignore_paths entry %zu is not a path", where, i);
    }
    json_decref(st);
    if (rc != SOV_OK)
        sov_statement_free(s);
    return rc;
}

void sov_statement_free(sov_statement *s) {
    for (int i = 0; i < s->nignore; i++)
        free(s->ignore[i]);
    free(s->ignore);
    free(s->files);
    *s = (sov_statement){0};
}

/* ---- verifying a checkpoint directory ---- */

static sov_status load_public_key(const char *path, EVP_PKEY **key, char hint[65]) {
    FILE *f;
    SOV_CHECK(open_pem(path, 0, &f));
    *key = PEM_read_PUBKEY(f, NULL, NULL, NULL);
    fclose(f);
    ERR_clear_error();
    if (!*key || !digest_for(*key) || !public_key_hint(*key, hint)) {
        EVP_PKEY_free(*key);
        *key = NULL;
        return sov_fail(SOV_ERR_INVALID, "public key %s: expected an ECDSA public key on P-256, P-384 or P-521 in PEM "
                        "(from the private key: openssl ec -in KEY.pem -pubout -out %s)", path, path);
    }
    return SOV_OK;
}

static sov_status check_signature(EVP_PKEY *key, const sov_bundle *b, const char *where, const char *key_path) {
    size_t m = 0;
    uint8_t *msg = pae(b->payload, b->payload_n, &m);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = msg && ctx && EVP_DigestVerifyInit_ex(ctx, NULL, digest_for(key), NULL, NULL, key, NULL) == 1 &&
             EVP_DigestVerify(ctx, b->sig, b->sig_n, msg, m) == 1;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();
    free(msg);
    return ok ? SOV_OK : sov_fail(SOV_ERR_FORMAT, "%s: the signature does not verify with %s: the statement was "
                                  "changed, or signed by another key", where, key_path);
}

/* A file's SHA-256, read whole. */
static sov_status hash_file(const char *path, uint8_t digest[SOV_SHA256_BYTES]) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sov_fail(errno == ENOENT ? SOV_ERR_FORMAT : SOV_ERR_IO, "%s: %s", path, strerror(errno));
    enum { BLOCK = 4 << 20 };
    uint8_t *buf = malloc(BLOCK);
    sov_sha256 *h = sov_sha256_new();
    sov_status st = buf && h ? SOV_OK : sov_fail(SOV_ERR_NOMEM, "hashing %s: out of memory", path);
    for (ssize_t got; st == SOV_OK && (got = read(fd, buf, BLOCK)) != 0;) {
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            st = sov_fail(SOV_ERR_IO, "reading %s: %s", path, strerror(errno));
        else
            sov_sha256_update(h, buf, (size_t)got);
    }
    if (st == SOV_OK)
        sov_sha256_final(h, digest);
    sov_sha256_free(h);
    free(buf);
    close(fd);
    return st;
}

static int ignored(const sov_statement *s, const char *name) {
    if (!strcmp(name, SOV_SIGNATURE_FILE))
        return 1;
    for (int i = 0; i < s->nignore; i++)
        if (!strcmp(s->ignore[i], name))
            return 1;
    return 0;
}

static const sov_signed_file *listed(const sov_statement *s, const char *name) {
    for (int i = 0; i < s->nfiles; i++)
        if (!strcmp(s->files[i].name, name))
            return &s->files[i];
    return NULL;
}

/* Every file of the directory is listed with its digest, and every listed file is there. */
static sov_status check_files(const char *dir, const sov_statement *s) {
    DIR *d = opendir(dir);
    if (!d)
        return sov_fail(SOV_ERR_IO, "%s: %s", dir, strerror(errno));
    sov_status st = SOV_OK;
    int found = 0;
    char path[4400];
    for (struct dirent *e; st == SOV_OK && (e = readdir(d));) {
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || ignored(s, e->d_name))
            continue;
        const sov_signed_file *f = listed(s, e->d_name);
        uint8_t digest[SOV_SHA256_BYTES];
        if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            st = sov_fail(SOV_ERR_FORMAT, "%s: not a regular file, which a signed checkpoint does not hold", path);
        else if (!f)
            st = sov_fail(SOV_ERR_FORMAT, "%s: not listed in the signature: added after signing", path);
        else if ((st = hash_file(path, digest)) == SOV_OK && memcmp(digest, f->sha256, sizeof digest) != 0)
            st = sov_fail(SOV_ERR_FORMAT, "%s: its SHA-256 does not match the signature: it was changed after "
                          "signing", path);
        found += st == SOV_OK;
    }
    closedir(d);
    for (int i = 0; st == SOV_OK && found != s->nfiles && i < s->nfiles; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, s->files[i].name);
        if (access(path, F_OK) != 0)
            st = sov_fail(SOV_ERR_FORMAT, "%s: signed, but missing", path);
    }
    return st;
}

sov_status sov_ckpt_verify_signature(const char *path, const char *public_key) {
    char where[4400];
    snprintf(where, sizeof where, "%s/%s", path, SOV_SIGNATURE_FILE);
    EVP_PKEY *key = NULL;
    char hint[65];
    SOV_CHECK(load_public_key(public_key, &key, hint));
    char *text = NULL;
    size_t n = 0;
    sov_bundle b = {0};
    sov_statement s = {0};
    sov_status st = sov_read_file(where, BUNDLE_MAX, &text, &n);
    if (st != SOV_OK)
        st = sov_fail(SOV_ERR_FORMAT, "%s is not signed: %s", path, sov_last_error());
    if (st == SOV_OK)
        st = sov_bundle_parse(text, n, &b, where);
    if (st == SOV_OK && b.hint[0] && strcmp(b.hint, hint) != 0)
        st = sov_fail(SOV_ERR_FORMAT, "%s: signed by another key than %s (its public key hint differs)", where,
                      public_key);
    if (st == SOV_OK)
        st = check_signature(key, &b, where, public_key);
    if (st == SOV_OK)
        st = sov_statement_parse(b.payload, b.payload_n, &s, where);
    if (st == SOV_OK)
        st = check_files(path, &s);
    sov_statement_free(&s);
    sov_bundle_free(&b);
    free(text);
    EVP_PKEY_free(key);
    return st;
}

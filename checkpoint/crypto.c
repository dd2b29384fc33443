/* crypto.c: see crypto.h. Every primitive is OpenSSL's (EVP); this file only lays out bytes around them. */
#include "crypto.h"
#include "checksum.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The clear header of a sealed chunk (docs/checkpoint-format.md section 8.2). The associated data is its first
 * AAD_BYTES: magic, version, flags, index and length, so none of them can change unnoticed. */
#define SEAL_VERSION 1
#define AAD_BYTES 32
#define AT_CIPHER_XXH3 32
#define AT_HEADER_XXH3 56

static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* OpenSSL's own reason for a failure, for the message. */
static const char *openssl_reason(void) {
    unsigned long e = ERR_get_error();
    ERR_clear_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "no reason given";
}

sov_status sov_random_bytes(void *out, size_t n) {
    if (RAND_bytes(out, (int)n) != 1)
        return sov_fail(SOV_ERR_INTERNAL, "OpenSSL's random generator failed (%s)", openssl_reason());
    return SOV_OK;
}

void sov_wipe(void *p, size_t n) { OPENSSL_cleanse(p, n); }

sov_status sov_derive_key(const sov_key *data_key, uint64_t save_id, const char *purpose, sov_key *out) {
    uint8_t salt[8];
    put_u64(salt, save_id);
    char info[300];
    snprintf(info, sizeof info, "sovtrain checkpoint v1 %s", purpose);
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *ctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)data_key->bytes, SOV_KEY_BYTES),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, salt, sizeof salt),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info, strlen(info)),
        OSSL_PARAM_construct_end()};
    int ok = ctx && EVP_KDF_derive(ctx, out->bytes, SOV_KEY_BYTES, params) == 1;
    EVP_KDF_CTX_free(ctx);
    EVP_KDF_free(kdf);
    return ok ? SOV_OK : sov_fail(SOV_ERR_INTERNAL, "HKDF-SHA256 failed (%s)", openssl_reason());
}

sov_status sov_hmac(const sov_key *key, const void *data, size_t n, uint8_t mac[32]) {
    unsigned len = 0;
    if (!HMAC(EVP_sha256(), key->bytes, SOV_KEY_BYTES, data, n, mac, &len) || len != 32)
        return sov_fail(SOV_ERR_INTERNAL, "HMAC-SHA256 failed (%s)", openssl_reason());
    return SOV_OK;
}

/* AES-256-GCM over n bytes in place, with a 12-byte nonce and associated data; tag written (encrypt) or checked
 * (decrypt). Returns 1 on success; a decryption that does not authenticate returns 0. */
static int gcm(int encrypt, const sov_key *key, const uint8_t nonce[12], const uint8_t *aad, size_t aad_n,
               uint8_t *data, size_t n, uint8_t tag[16]) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int ok = ctx && EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, key->bytes, nonce, encrypt) == 1;
    int len = 0;
    if (ok && aad_n)
        ok = EVP_CipherUpdate(ctx, NULL, &len, aad, (int)aad_n) == 1;
    for (size_t at = 0; ok && at < n;) { /* EVP takes an int length */
        size_t part = n - at < ((size_t)1 << 30) ? n - at : (size_t)1 << 30;
        ok = EVP_CipherUpdate(ctx, data + at, &len, data + at, (int)part) == 1;
        at += part;
    }
    if (ok && !encrypt)
        ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, tag) == 1;
    if (ok)
        ok = EVP_CipherFinal_ex(ctx, data + n, &len) == 1;
    if (ok && encrypt)
        ok = EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1;
    EVP_CIPHER_CTX_free(ctx);
    ERR_clear_error();
    return ok;
}

static void chunk_nonce(uint64_t index, int last, uint8_t nonce[12]) {
    put_u64(nonce, index);
    put_u32(nonce + 8, last ? SOV_SEAL_LAST : 0);
}

sov_status sov_seal_chunk(const sov_key *file_key, uint64_t index, int last, uint8_t *buf, size_t inner,
                          size_t *total) {
    uint8_t *h = buf, *cipher = buf + SOV_SEAL_HEADER_BYTES, *tag = cipher + inner, nonce[12];
    memset(h, 0, SOV_SEAL_HEADER_BYTES);
    put_u32(h, SOV_SEAL_MAGIC);
    h[4] = SEAL_VERSION;
    h[5] = last ? SOV_SEAL_LAST : 0;
    put_u64(h + 8, index);
    put_u64(h + 16, inner);
    chunk_nonce(index, last, nonce);
    if (!gcm(1, file_key, nonce, h, AAD_BYTES, cipher, inner, tag))
        return sov_fail(SOV_ERR_INTERNAL, "sealing chunk %llu with AES-256-GCM failed", (unsigned long long)index);
    put_u64(h + AT_CIPHER_XXH3, sov_xxh3(cipher, inner + SOV_SEAL_TAG_BYTES));
    put_u64(h + AT_HEADER_XXH3, sov_xxh3(h, AT_HEADER_XXH3));
    *total = inner + SOV_SEAL_OVERHEAD;
    return SOV_OK;
}

static int all_zero(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* The clear header's checks: all of sov_seal_check but the ciphertext's checksum. */
static sov_status check_header(const uint8_t *c, size_t bytes, uint64_t index, int last, const char *where) {
    if (bytes < SOV_SEAL_OVERHEAD)
        return sov_fail(SOV_ERR_FORMAT, "%s: %zu bytes, too short for a sealed chunk", where, bytes);
    if (c[0] != 'S' || c[1] != 'C' || c[2] != 'H' || c[3] != 'E')
        return sov_fail(SOV_ERR_FORMAT, "%s: not a sealed chunk (bad magic): damaged, or not this checkpoint's", where);
    if (get_u64(c + AT_HEADER_XXH3) != sov_xxh3(c, AT_HEADER_XXH3))
        return sov_fail(SOV_ERR_FORMAT, "%s: the sealed chunk's header checksum does not match: damaged", where);
    if (c[4] != SEAL_VERSION || (c[5] & ~SOV_SEAL_LAST) || c[6] || c[7] || !all_zero(c + 24, 8) ||
        !all_zero(c + 40, 16))
        return sov_fail(SOV_ERR_FORMAT, "%s: the sealed chunk's header has unknown fields set", where);
    if (get_u64(c + 8) != index || (c[5] & SOV_SEAL_LAST) != (last ? SOV_SEAL_LAST : 0))
        return sov_fail(SOV_ERR_FORMAT, "%s: holds chunk %llu%s of its file where chunk %llu%s belongs: chunks were "
                        "moved, swapped or cut off", where, (unsigned long long)get_u64(c + 8),
                        c[5] & SOV_SEAL_LAST ? " (the last)" : "", (unsigned long long)index, last ? " (the last)" : "");
    if (get_u64(c + 16) != bytes - SOV_SEAL_OVERHEAD)
        return sov_fail(SOV_ERR_FORMAT, "%s: the sealed chunk says %llu bytes of ciphertext, the manifest %zu", where,
                        (unsigned long long)get_u64(c + 16), bytes - SOV_SEAL_OVERHEAD);
    return SOV_OK;
}

static int ciphertext_intact(const uint8_t *c, size_t bytes) {
    return get_u64(c + AT_CIPHER_XXH3) == sov_xxh3(c + SOV_SEAL_HEADER_BYTES, bytes - SOV_SEAL_HEADER_BYTES);
}

sov_status sov_seal_check(const uint8_t *c, size_t bytes, uint64_t index, int last, const char *where) {
    SOV_CHECK(check_header(c, bytes, index, last, where));
    if (!ciphertext_intact(c, bytes))
        return sov_fail(SOV_ERR_FORMAT, "%s: the ciphertext's checksum does not match: the stored bytes are damaged",
                        where);
    return SOV_OK;
}

sov_status sov_seal_open(const sov_key *file_key, uint8_t *c, size_t bytes, uint64_t index, int last,
                         const char *where) {
    SOV_CHECK(check_header(c, bytes, index, last, where));
    /* no checksum of the ciphertext first: GCM's tag covers it */
    uint8_t nonce[12];
    chunk_nonce(index, last, nonce);
    size_t inner = bytes - SOV_SEAL_OVERHEAD;
    if (gcm(0, file_key, nonce, c, AAD_BYTES, c + SOV_SEAL_HEADER_BYTES, inner, c + SOV_SEAL_HEADER_BYTES + inner))
        return SOV_OK;
    return sov_fail(SOV_ERR_FORMAT, "%s: does not authenticate under this checkpoint's key (AES-256-GCM): it is "
                    "damaged, was tampered with, or was moved here from another file or checkpoint", where);
}

sov_status sov_encrypt_text(const sov_key *key, const char *text, char **b64) {
    size_t n = strlen(text);
    uint8_t *buf = malloc(n + SOV_SEAL_TAG_BYTES), nonce[12] = {0}; /* the key seals this text only */
    if (!buf)
        return sov_fail(SOV_ERR_NOMEM, "encrypting the checkpoint's metadata: out of memory");
    memcpy(buf, text, n);
    int ok = gcm(1, key, nonce, NULL, 0, buf, n, buf + n);
    *b64 = ok ? sov_base64_encode(buf, n + SOV_SEAL_TAG_BYTES) : NULL;
    sov_wipe(buf, n);
    free(buf);
    if (!ok)
        return sov_fail(SOV_ERR_INTERNAL, "encrypting the checkpoint's metadata failed");
    return *b64 ? SOV_OK : sov_fail(SOV_ERR_NOMEM, "encrypting the checkpoint's metadata: out of memory");
}

sov_status sov_decrypt_text(const sov_key *key, const char *b64, char **text, const char *where) {
    size_t cap = strlen(b64) / 4 * 3 + 3, n = 0;
    uint8_t *buf = malloc(cap + 1), nonce[12] = {0};
    if (!buf)
        return sov_fail(SOV_ERR_NOMEM, "%s: out of memory for the metadata", where);
    if (!sov_base64_decode(b64, buf, cap, &n) || n < SOV_SEAL_TAG_BYTES ||
        !gcm(0, key, nonce, NULL, 0, buf, n - SOV_SEAL_TAG_BYTES, buf + n - SOV_SEAL_TAG_BYTES)) {
        free(buf);
        return sov_fail(SOV_ERR_FORMAT, "%s: the encrypted metadata does not authenticate: damaged or tampered with",
                        where);
    }
    buf[n - SOV_SEAL_TAG_BYTES] = '\0';
    *text = (char *)buf;
    return SOV_OK;
}

/* RFC 5649 through OpenSSL's wrap-with-padding cipher. */
static int wrap(int encrypt, const sov_key *kek, const uint8_t *in, size_t n, uint8_t *out, size_t *out_n) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int len = 0, fin = 0;
    int ok = ctx != NULL;
    if (ok) {
        EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
        ok = EVP_CipherInit_ex(ctx, EVP_aes_256_wrap_pad(), NULL, kek->bytes, NULL, encrypt) == 1 &&
             EVP_CipherUpdate(ctx, out, &len, in, (int)n) == 1 && EVP_CipherFinal_ex(ctx, out + len, &fin) == 1;
    }
    EVP_CIPHER_CTX_free(ctx);
    ERR_clear_error();
    *out_n = (size_t)(len + fin);
    return ok;
}

sov_status sov_key_wrap_rfc5649(const sov_key *kek, const sov_key *data_key, uint8_t wrapped[SOV_WRAPPED_BYTES]) {
    uint8_t out[SOV_WRAPPED_BYTES + 16];
    size_t n = 0;
    if (!wrap(1, kek, data_key->bytes, SOV_KEY_BYTES, out, &n) || n != SOV_WRAPPED_BYTES)
        return sov_fail(SOV_ERR_INTERNAL, "wrapping the data key (AES key wrap, RFC 5649) failed");
    memcpy(wrapped, out, SOV_WRAPPED_BYTES);
    return SOV_OK;
}

int sov_key_unwrap_rfc5649(const sov_key *kek, const uint8_t *wrapped, size_t n, sov_key *data_key) {
    uint8_t out[SOV_WRAPPED_BYTES + 16];
    size_t got = 0;
    if (n != SOV_WRAPPED_BYTES)
        return 0;
    int ok = wrap(0, kek, wrapped, n, out, &got) && got == SOV_KEY_BYTES;
    if (ok)
        memcpy(data_key->bytes, out, SOV_KEY_BYTES);
    sov_wipe(out, sizeof out);
    return ok;
}

char *sov_base64_encode(const void *data, size_t n) {
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    if (out)
        EVP_EncodeBlock((unsigned char *)out, data, (int)n);
    return out;
}

int sov_base64_decode(const char *text, uint8_t *out, size_t cap, size_t *n) {
    size_t len = strlen(text);
    if (len % 4 || len / 4 * 3 > cap + 2 || len > ((size_t)1 << 30))
        return 0;
    for (size_t i = 0; i < len; i++) /* EVP_DecodeBlock skips blanks; the format has none */
        if (!(text[i] == '+' || text[i] == '/' || text[i] == '=' || (text[i] >= '0' && text[i] <= '9') ||
              (text[i] >= 'a' && text[i] <= 'z') || (text[i] >= 'A' && text[i] <= 'Z')))
            return 0;
    size_t pad = len && text[len - 1] == '=' ? (len > 1 && text[len - 2] == '=' ? 2 : 1) : 0;
    uint8_t *tmp = malloc(len / 4 * 3 + 1);
    if (!tmp)
        return 0;
    int got = EVP_DecodeBlock(tmp, (const unsigned char *)text, (int)len);
    int ok = got >= 0 && (size_t)got >= pad && (size_t)got - pad <= cap;
    if (ok) {
        *n = (size_t)got - pad;
        memcpy(out, tmp, *n);
    }
    sov_wipe(tmp, len / 4 * 3 + 1);
    free(tmp);
    return ok;
}

void sov_hex(const uint8_t *bytes, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = '\0';
}

static int lower_hex_digit(char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; }

int sov_unhex(const char *hex, uint8_t *out, size_t n) {
    if (!hex || strlen(hex) != 2 * n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        int hi = lower_hex_digit(hex[2 * i]), lo = lower_hex_digit(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return 0;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 1;
}

/* fuzz_keys.c: libFuzzer target for what an encrypted or signed checkpoint's reader parses from outside: a sealed
 * chunk's clear header and ciphertext (checkpoint/crypto.c), a key command's replies (checkpoint/keys.c), the
 * sealed metadata's base64, and a signature bundle, model.sig, with its statement (checkpoint/signing.c).
 *
 * The first byte picks what the rest is fed to:
 *   0: a sealed chunk, checked and opened under a fixed key (the next byte: its index; bit 0 of the one after: the
 *      last-chunk flag). One input in 4 is first sealed properly from its own bytes and then damaged at one place
 *      the input chooses, so that the fuzzer reaches the opening of chunks whose header is valid.
 *   1: a key command's reply to "wrap"; 2: to "unwrap";
 *   3: the sealed metadata (base64 text), decrypted under the fixed key;
 *   4: model.sig's text, and the statement in its payload when it parses; 5: a statement alone.
 * No input may crash, leak or hit UB. Build and run: tests/fuzz/run.sh. */
#include "crypto.h"
#include "keys.h"
#include "signing.h"

#include <stdlib.h>
#include <string.h>

static const sov_key key = {{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                             17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32}};

static void sealed_chunk(const uint8_t *d, size_t n) {
    if (n < 3)
        return;
    uint64_t index = d[0];
    int last = d[1] & 1, reseal = (d[1] & 6) == 6;
    size_t damage = d[2];
    d += 3;
    n -= 3;
    uint8_t *buf = malloc(n + SOV_SEAL_OVERHEAD + 1);
    if (!buf)
        return;
    size_t bytes = n;
    if (reseal) { /* a valid chunk of these bytes, then one byte changed (or none, when damage is past its end) */
        memcpy(buf + SOV_SEAL_HEADER_BYTES, d, n);
        if (sov_seal_chunk(&key, index, last, buf, n, &bytes) != SOV_OK)
            abort();
        if (damage < bytes)
            buf[damage] ^= 0x20;
    } else {
        memcpy(buf, d, n);
    }
    (void)sov_seal_check(buf, bytes, index, last, "fuzz");
    (void)sov_seal_open(&key, buf, bytes, index, last, "fuzz");
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    const uint8_t *d = data + 1;
    size_t n = size - 1;
    char *text = malloc(n + 1);
    if (!text)
        return 0;
    memcpy(text, d, n);
    text[n] = '\0';
    switch (data[0] % 6) {
    case 0:
        sealed_chunk(d, n);
        break;
    case 1: {
        char id[256], *wrapped = NULL;
        if (sov_key_parse_wrap_reply(text, n, id, sizeof id, &wrapped, "fuzz") == SOV_OK && (!wrapped || !id[0]))
            abort();
        free(wrapped);
        break;
    }
    case 2: {
        sov_key dk;
        (void)sov_key_parse_unwrap_reply(text, n, &dk, "fuzz");
        break;
    }
    case 3: {
        char *plain = NULL;
        if (sov_decrypt_text(&key, text, &plain, "fuzz") == SOV_OK)
            free(plain);
        break;
    }
    case 4: {
        sov_bundle b;
        sov_statement st;
        if (sov_bundle_parse(text, n, &b, "fuzz") == SOV_OK) {
            if (sov_statement_parse(b.payload, b.payload_n, &st, "fuzz") == SOV_OK)
                sov_statement_free(&st);
            sov_bundle_free(&b);
        }
        break;
    }
    case 5: {
        sov_statement st;
        if (sov_statement_parse(d, n, &st, "fuzz") == SOV_OK)
            sov_statement_free(&st);
        break;
    }
    }
    free(text);
    return 0;
}

/* keys.h (internal): the operator's key, which wraps each save's data key and unwraps it to read (ckpt.h's
 * sov_ckpt_key). A key file holds the key-encryption key itself and wraps with AES key wrap (RFC 5649); a key
 * command keeps it elsewhere (Vault transit, an HSM, a KMS) and is asked over a JSON protocol on its stdin and
 * stdout (docs/security.md). */
#ifndef SOV_CKPT_KEYS_H
#define SOV_CKPT_KEYS_H

#include "crypto.h"
#include <sovtrain/ckpt.h>

#include <jansson.h>

/* Wraps data_key: *entry gets "key_id", "wrap" and "wrapped_key", as the manifest's encryption object keeps them. */
sov_status sov_key_wrap(const sov_ckpt_key *k, const sov_key *data_key, json_t **entry);
/* Unwraps the data key that `entry` (the manifest's encryption object) holds. `where` names the checkpoint. */
sov_status sov_key_unwrap(const sov_ckpt_key *k, const json_t *entry, sov_key *data_key, const char *where);

/* A key command's replies, checked (a hostile or broken command gets a clear error, never a crash): to "wrap",
 * {"key_id": ID, "wrapped_key": TEXT}; to "unwrap", {"data_key": BASE64 of 32 bytes}; or {"error": TEXT}. */
sov_status sov_key_parse_wrap_reply(const char *text, size_t n, char *key_id, size_t id_cap, char **wrapped,
                                    const char *who);
sov_status sov_key_parse_unwrap_reply(const char *text, size_t n, sov_key *data_key, const char *who);

#endif

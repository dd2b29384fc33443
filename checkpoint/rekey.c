/* rekey.c: rotating the operator's key. An encrypted checkpoint's data is sealed under its own data key, which the
 * manifest keeps wrapped by the operator's key: a rotation rewraps those 32 bytes and rewrites the manifest (its
 * MAC, under the same data key, and its seal), and leaves every data file as it is. */
#include "catalog.h"
#include "crypto.h"
#include "fsio.h"
#include "keys.h"
#include "signing.h"
#include <sovtrain/ckpt.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The manifest with the new wrapping, MACed and sealed, written atomically. */
static sov_status rewrite_manifest(const sov_ckpt *c, const sov_ckpt_key *new_key) {
    json_t *m = json_deep_copy(sov_ckpt_manifest(c)), *enc = json_object_get(m, "encryption"), *entry = NULL;
    sov_key dk, mac_key;
    const char *id = json_string_value(json_object_get(enc, "save_id"));
    uint64_t save_id = id ? strtoull(id, NULL, 16) : 0;
    sov_status st = sov_ckpt_data_key(c, dk.bytes);
    if (st == SOV_OK)
        st = sov_key_wrap(new_key, &dk, &entry);
    if (st == SOV_OK) {
        json_object_update_existing(enc, entry); /* key_id, wrap, wrapped_key, in their places */
        st = sov_derive_key(&dk, save_id, "manifest", &mac_key);
    }
    if (st == SOV_OK)
        st = sov_manifest_store(sov_ckpt_path(c), m, &mac_key, NULL, NULL);
    sov_wipe(&dk, sizeof dk);
    sov_wipe(&mac_key, sizeof mac_key);
    json_decref(entry);
    json_decref(m);
    return st;
}

sov_status sov_ckpt_rekey(const char *path, const sov_ckpt_key *old_key, const sov_ckpt_key *new_key) {
    char sig[4300];
    snprintf(sig, sizeof sig, "%s/%s", path, SOV_SIGNATURE_FILE);
    if (access(sig, F_OK) == 0) /* its signature covers the manifest, which a rotation rewrites */
        return sov_fail(SOV_ERR_INVALID, "%s is signed: rotating its key would break the signature; it is left as "
                        "it is", path);
    sov_ckpt *c;
    SOV_CHECK(sov_ckpt_open_key(path, old_key, &c));
    sov_status st = SOV_OK;
    if (!sov_ckpt_key_id(c))
        st = sov_fail(SOV_ERR_INVALID, "%s is not encrypted: there is no key to rotate", path);
    if (st == SOV_OK) /* every chunk authenticates under the data key before the manifest changes */
        st = sov_ckpt_verify(c);
    if (st == SOV_OK)
        st = rewrite_manifest(c, new_key);
    sov_ckpt_close(c);
    return st;
}

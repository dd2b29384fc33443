#!/bin/sh
# A sovtrain key command in front of HashiCorp Vault's transit engine: the key-encryption key never leaves Vault.
#   sovtrain train ... --ckpt-key-command "/etc/sovtrain/vault-transit.sh sovtrain-ckpt"
# Needs: vault (logged in: VAULT_ADDR and VAULT_TOKEN, e.g. from Vault Agent) and jq. The transit key is made once
# with: vault secrets enable transit && vault write -f transit/keys/sovtrain-ckpt
# Protocol (docs/security.md): one JSON request on stdin, one JSON reply on stdout; exit non-zero on failure.
set -eu
key=${1:?usage: vault-transit.sh TRANSIT_KEY_NAME}
request=$(cat)
case $(printf '%s' "$request" | jq -r .op) in
wrap) # the data key arrives as base64, which is what transit's plaintext field takes
    wrapped=$(vault write -field=ciphertext "transit/encrypt/$key" \
        plaintext="$(printf '%s' "$request" | jq -r .data_key)")
    jq -n --arg id "vault-transit:$key" --arg w "$wrapped" '{key_id: $id, wrapped_key: $w}' ;;
unwrap)
    data_key=$(vault write -field=plaintext "transit/decrypt/$key" \
        ciphertext="$(printf '%s' "$request" | jq -r .wrapped_key)")
    jq -n --arg k "$data_key" '{data_key: $k}' ;;
*)
    echo '{"error": "unknown op"}' ;;
esac

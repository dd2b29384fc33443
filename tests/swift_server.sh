#!/usr/bin/env bash
# usage: swift_server.sh SOVTRAIN
# The test Swift of tests/swift (Debian's python3-swift on 127.0.0.1) through both of its APIs, with curl: native
# Swift (tempauth) and S3 (SigV4): a container/bucket, a 3 MiB object written and read back, a ranged read, the
# listing, an S3 multipart upload, wrong credentials refused; then every server stops. Skips (77) without
# python3-swift.
. "$(dirname "$0")/lib.sh"
. "$TESTS/swift/lib.sh"

swift_start
TOKEN='' STORAGE_URL='' # set by swift_auth

head -c $((3 << 20)) /dev/urandom >"$tmp/obj"
tail -c +1001 "$tmp/obj" | head -c 1000 >"$tmp/range" # bytes 1000-1999
head -c $((5 << 20)) /dev/urandom >"$tmp/part1"       # S3's smallest part but the last
head -c $((1 << 20)) /dev/urandom >"$tmp/part2"
cat "$tmp/part1" "$tmp/part2" >"$tmp/parts"

# http WANT WHAT CURL_ARGS...: one curl request; the body goes to $tmp/body, the headers to $tmp/headers. Fails
# (and returns 1) unless the HTTP status is WANT.
http() {
    local want=$1 what=$2 code
    shift 2
    code=$(curl -sS -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' "$@" 2>"$tmp/curl.err")
    if [ "$code" != "$want" ]; then
        fail "$what: HTTP $code, expected $want: $(cat "$tmp/curl.err") $(head -c 400 "$tmp/body")"
        return 1
    fi
}

# header NAME: the value of response header NAME of the last http call.
header() { tr -d '\r' <"$tmp/headers" | sed -n "s/^$1: //Ip" | tail -n 1; }

# same WHAT EXPECTED: the last response's body is the file EXPECTED.
same() {
    cmp -s "$tmp/body" "$2" && return
    fail "$1: the bytes read back differ from $2 ($(stat -c %s "$tmp/body") bytes read)"
    return 1
}

# body_has WHAT REGEX: the last response's body matches REGEX (grep -E).
body_has() {
    grep -Eq "$2" "$tmp/body" && return
    fail "$1: the response does not match $2: $(head -c 400 "$tmp/body")"
    return 1
}

# etag_is WHAT FILE: the last response's ETag is the MD5 of FILE (what Swift stored is what was sent).
etag_is() {
    local want
    want=$(md5sum <"$2" | cut -d' ' -f1)
    [ "$(header Etag | tr -d '"')" = "$want" ] && return
    fail "$1: ETag $(header Etag), expected the MD5 of $2, $want"
    return 1
}

# --- native Swift API (tempauth)

# swift_req WANT WHAT CURL_ARGS...: http with the token of swift_auth.
swift_req() {
    local want=$1 what=$2
    shift 2
    http "$want" "Swift API: $what" -H "X-Auth-Token: $TOKEN" "$@"
}

swift_auth() {
    http 200 "Swift API: GET $ST_AUTH as $ST_USER" -H "X-Auth-User: $ST_USER" -H "X-Auth-Key: $ST_KEY" "$ST_AUTH" ||
        return 1
    TOKEN=$(header X-Auth-Token)
    STORAGE_URL=$(header X-Storage-Url)
    if [ -z "$TOKEN" ] || [ -z "$STORAGE_URL" ]; then
        fail "Swift API: no X-Auth-Token or X-Storage-Url: $(cat "$tmp/headers")"
        return 1
    fi
    echo "ok: Swift API: tempauth gave a token for $STORAGE_URL"
}

swift_api() {
    local c=$STORAGE_URL/ckpt-native
    swift_req 201 "create container" -X PUT "$c" && echo "ok: Swift API: created container ckpt-native"
    swift_req 201 "PUT 3 MiB object" -T "$tmp/obj" "$c/obj" && etag_is "Swift API: PUT" "$tmp/obj"
    swift_req 200 "GET object" "$c/obj" && same "Swift API: GET" "$tmp/obj" && echo "ok: Swift API: 3 MiB object read back"
    swift_req 206 "ranged GET" -H "Range: bytes=1000-1999" "$c/obj" && same "Swift API: ranged GET" "$tmp/range" &&
        echo "ok: Swift API: bytes 1000-1999"
    swift_req 200 "list container" "$c" && body_has "Swift API: listing of ckpt-native" '^obj$' &&
        echo "ok: Swift API: listing is \"$(cat "$tmp/body")\""
}

# --- S3 API (SigV4)

# curl's --user splits at the first colon, and the access key (test:tester) has one: a netrc gives the key whole.
printf 'machine 127.0.0.1 login %s password %s\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$tmp/s3.netrc"
printf 'machine 127.0.0.1 login %s password wrong\n' "$AWS_ACCESS_KEY_ID" >"$tmp/s3-bad-secret.netrc"
printf 'machine 127.0.0.1 login nobody:none password %s\n' "$AWS_SECRET_ACCESS_KEY" >"$tmp/s3-bad-key.netrc"
EMPTY_SHA256=$(sha256sum </dev/null | cut -d' ' -f1)

# s3_req WANT WHAT PAYLOAD CURL_ARGS...: http signed with SigV4 by curl. PAYLOAD is the file sent as the body, or
# - for none: its SHA-256 goes in x-amz-content-sha256 (s3api refuses aws-chunked streaming). $S3_NETRC picks the
# credentials. curl 7.88 signs the query string as written, unsorted and unencoded, so queries here are written in
# canonical form: keys in order, "uploads=" with its "=".
s3_req() {
    local want=$1 what=$2 payload=$3 sha=$EMPTY_SHA256
    shift 3
    [ "$payload" = - ] || sha=$(sha256sum <"$payload" | cut -d' ' -f1)
    http "$want" "S3 API: $what" --netrc-file "${S3_NETRC:-$tmp/s3.netrc}" --aws-sigv4 "aws:amz:$AWS_REGION:s3" \
        -H "x-amz-content-sha256: $sha" "$@"
}

s3_api() {
    local b=$AWS_ENDPOINT_URL/ckpt-s3
    s3_req 200 "create bucket" - -X PUT "$b" && echo "ok: S3 API: created bucket ckpt-s3"
    s3_req 200 "PUT 3 MiB object" "$tmp/obj" -T "$tmp/obj" "$b/obj" && etag_is "S3 API: PUT" "$tmp/obj"
    s3_req 200 "GET object" - "$b/obj" && same "S3 API: GET" "$tmp/obj" && echo "ok: S3 API: 3 MiB object read back"
    s3_req 206 "ranged GET" - -H "Range: bytes=1000-1999" "$b/obj" && same "S3 API: ranged GET" "$tmp/range" &&
        echo "ok: S3 API: bytes 1000-1999"
    s3_req 200 "list bucket" - "$b?list-type=2" &&
        body_has "S3 API: listing of ckpt-s3" "<KeyCount>1</KeyCount>.*<Key>obj</Key>.*<Size>$((3 << 20))</Size>" &&
        echo "ok: S3 API: listing holds obj, $((3 << 20)) bytes"
}

s3_multipart() {
    local b=$AWS_ENDPOINT_URL/ckpt-s3 id n etags=()
    s3_req 200 "initiate multipart upload" - -X POST "$b/big?uploads=" || return
    id=$(sed -n 's:.*<UploadId>\(.*\)</UploadId>.*:\1:p' "$tmp/body")
    for n in 1 2; do
        s3_req 200 "upload part $n" "$tmp/part$n" -T "$tmp/part$n" "$b/big?partNumber=$n&uploadId=$id" || return
        etags+=("$(header Etag)")
    done
    printf '<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>%s</ETag></Part><Part><PartNumber>2</PartNumber><ETag>%s</ETag></Part></CompleteMultipartUpload>' \
        "${etags[@]}" >"$tmp/complete.xml"
    s3_req 200 "complete multipart upload" "$tmp/complete.xml" --data-binary @"$tmp/complete.xml" "$b/big?uploadId=$id" &&
        body_has "S3 API: completion (an ETag of 2 parts)" '<ETag>"[0-9a-f]{32}-2"</ETag>' || return
    s3_req 200 "GET multipart object" - "$b/big" && same "S3 API: multipart GET" "$tmp/parts" &&
        echo "ok: S3 API: multipart upload of 5 MiB + 1 MiB read back whole"
    # one account behind both APIs: the checkpoint store may write with one and read with the other
    swift_req 200 "GET the S3 multipart object" "$STORAGE_URL/ckpt-s3/big" && same "Swift API: GET of S3's object" "$tmp/parts" &&
        echo "ok: Swift API: reads the object S3 assembled"
}

wrong_credentials() {
    http 401 "Swift API: auth with a wrong key" -H "X-Auth-User: $ST_USER" -H "X-Auth-Key: wrong" "$ST_AUTH" &&
        echo "ok: Swift API: wrong key -> 401"
    http 401 "Swift API: GET with a made-up token" -H "X-Auth-Token: AUTH_tk0123456789abcdef" "$STORAGE_URL/ckpt-native/obj" &&
        echo "ok: Swift API: made-up token -> 401"
    S3_NETRC=$tmp/s3-bad-secret.netrc s3_req 403 "GET with a wrong secret" - "$AWS_ENDPOINT_URL/ckpt-s3/obj" &&
        body_has "S3 API: wrong secret" '<Code>SignatureDoesNotMatch</Code>' && echo "ok: S3 API: wrong secret -> 403 SignatureDoesNotMatch"
    # (behind tempauth, s3api cannot tell an unknown key from a wrong secret: both fail the signature check)
    S3_NETRC=$tmp/s3-bad-key.netrc s3_req 403 "GET with an unknown access key" - "$AWS_ENDPOINT_URL/ckpt-s3/obj" &&
        body_has "S3 API: unknown access key" '<Code>(InvalidAccessKeyId|SignatureDoesNotMatch)</Code>' &&
        echo "ok: S3 API: unknown access key -> 403 $(sed -n 's:.*<Code>\(.*\)</Code>.*:\1:p' "$tmp/body")"
}

# alive PID: PID runs (a zombie, which init may reap late, does not).
alive() {
    local state
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

stopped() {
    local name pid left=()
    swift_stop || fail "swift_stop failed"
    while read -r name pid; do
        alive "$pid" && left+=("$name (pid $pid)")
    done <"$SWIFT_DIR/pids"
    [ ${#left[@]} -eq 0 ] || fail "still running after swift_stop: ${left[*]}"
    swift_stop >/dev/null || fail "a second swift_stop failed"
    echo "ok: all $(wc -l <"$SWIFT_DIR/pids") servers stopped; a second swift_stop is harmless"
}

swift_auth && swift_api
s3_api
s3_multipart
wrong_credentials
stopped
finish

/* keys.c: the operator's key (keys.h): a key file, a key command, or a data key already unwrapped. */
#include "keys.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define KEY_FILE_MAX 256           /* bytes: 32 raw, 64 hex digits or 44 base64 characters, and a newline */
#define REPLY_MAX ((size_t)64 << 10)
#define WRAPPED_MAX 8192           /* characters of a command's wrapped key */
#define KEY_ID_MAX 256
#define COMMAND_TIMEOUT_S 120

enum key_kind { KEY_FILE, KEY_COMMAND, KEY_DATA };

struct sov_ckpt_key {
    enum key_kind kind;
    sov_key secret;        /* KEY_FILE: the key-encryption key; KEY_DATA: the data key */
    char id[KEY_ID_MAX];   /* KEY_FILE: its id, derived from the key */
    char *command;         /* KEY_COMMAND */
    char described[4400];  /* for messages */
};

/* ---- key files ---- */

static int hex_value(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* 32 raw bytes, or 64 hex digits, or base64 of 32 bytes, each with an optional trailing newline. */
static int parse_key_text(const uint8_t *text, size_t n, sov_key *out) {
    if (n == SOV_KEY_BYTES) {
        memcpy(out->bytes, text, SOV_KEY_BYTES);
        return 1;
    }
    while (n && (text[n - 1] == '\n' || text[n - 1] == '\r'))
        n--;
    if (n == 2 * SOV_KEY_BYTES) {
        for (size_t i = 0; i < SOV_KEY_BYTES; i++) {
            int hi = hex_value((char)text[2 * i]), lo = hex_value((char)text[2 * i + 1]);
            if (hi < 0 || lo < 0)
                return 0;
            out->bytes[i] = (uint8_t)(hi << 4 | lo);
        }
        return 1;
    }
    char b64[KEY_FILE_MAX + 1];
    size_t got = 0;
    if (n > KEY_FILE_MAX)
        return 0;
    memcpy(b64, text, n);
    b64[n] = '\0';
    int ok = sov_base64_decode(b64, out->bytes, SOV_KEY_BYTES, &got) && got == SOV_KEY_BYTES;
    sov_wipe(b64, sizeof b64);
    return ok;
}

/* A key file's id: derived from the key, one-way, so that the manifest can name the key without revealing it. */
static sov_status key_file_id(const sov_key *kek, char *id, size_t cap) {
    uint8_t mac[32];
    SOV_CHECK(sov_hmac(kek, "sovtrain key id", 15, mac));
    char hex[65];
    sov_hex(mac, 8, hex);
    snprintf(id, cap, "local:%s", hex);
    return SOV_OK;
}

sov_status sov_ckpt_key_from_file(const char *path, sov_ckpt_key **out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sov_fail(SOV_ERR_IO, "key file %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return sov_fail(SOV_ERR_INVALID, "key file %s: not a regular file", path);
    }
    if (sb.st_mode & (S_IRWXG | S_IRWXO)) {
        close(fd);
        return sov_fail(SOV_ERR_INVALID, "key file %s is accessible to group or others (mode %03o): refusing it; "
                        "chmod 600 %s (a Kubernetes Secret: defaultMode 0400)", path, (unsigned)(sb.st_mode & 0777),
                        path);
    }
    uint8_t text[KEY_FILE_MAX + 1];
    ssize_t n = read(fd, text, sizeof text);
    close(fd);
    sov_ckpt_key *k = sov_calloc(1, sizeof *k);
    int ok = n > 0 && (size_t)n <= KEY_FILE_MAX && k && parse_key_text(text, (size_t)n, &k->secret);
    sov_wipe(text, sizeof text);
    if (!ok) {
        free(k);
        return sov_fail(SOV_ERR_INVALID, "key file %s: expected a 32-byte key: 32 raw bytes, 64 hex digits or base64 "
                        "(make one with: openssl rand -out %s 32)", path, path);
    }
    k->kind = KEY_FILE;
    sov_status st = key_file_id(&k->secret, k->id, sizeof k->id);
    if (st != SOV_OK) {
        sov_ckpt_key_free(k);
        return st;
    }
    snprintf(k->described, sizeof k->described, "key file %s (key id %s)", path, k->id);
    *out = k;
    return SOV_OK;
}

sov_status sov_ckpt_key_from_command(const char *command, sov_ckpt_key **out) {
    if (!command || !*command)
        return sov_fail(SOV_ERR_INVALID, "the key command is empty");
    sov_ckpt_key *k = sov_calloc(1, sizeof *k);
    if (!k || !(k->command = strdup(command))) {
        free(k);
        return sov_fail(SOV_ERR_NOMEM, "key command: out of memory");
    }
    k->kind = KEY_COMMAND;
    snprintf(k->described, sizeof k->described, "key command `%s`", command);
    *out = k;
    return SOV_OK;
}

sov_status sov_ckpt_key_from_data_key(const uint8_t data_key[32], sov_ckpt_key **out) {
    sov_ckpt_key *k = sov_calloc(1, sizeof *k);
    if (!k)
        return SOV_ERR_NOMEM;
    k->kind = KEY_DATA;
    memcpy(k->secret.bytes, data_key, SOV_KEY_BYTES);
    snprintf(k->described, sizeof k->described, "a data key given by the program");
    *out = k;
    return SOV_OK;
}

void sov_ckpt_key_free(sov_ckpt_key *k) {
    if (!k)
        return;
    free(k->command);
    sov_wipe(k, sizeof *k);
    free(k);
}

const char *sov_ckpt_key_describe(const sov_ckpt_key *k) { return k ? k->described : "no key"; }

/* ---- key commands: one JSON request on stdin, one JSON reply on stdout ---- */

/* Writes all of `request` to the command's stdin (a socket: a command that exits without reading it gives EPIPE,
 * not a SIGPIPE that would kill this process) and reads its whole stdout. */
static sov_status talk(const sov_ckpt_key *k, int in, int out, const char *request, char **reply, size_t *n) {
    size_t len = strlen(request), sent = 0, got = 0;
    while (sent < len) {
        ssize_t w = send(in, request + sent, len - sent, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            break; /* it stopped reading: its exit status and reply tell why */
        sent += (size_t)w;
    }
    close(in);
    char *buf = malloc(REPLY_MAX + 1);
    if (!buf)
        return sov_fail(SOV_ERR_NOMEM, "%s: out of memory for its reply", k->described);
    double deadline = sov_now() + COMMAND_TIMEOUT_S;
    for (;;) {
        int wait_ms = (int)((deadline - sov_now()) * 1000);
        struct pollfd p = {.fd = out, .events = POLLIN};
        int r = wait_ms > 0 ? poll(&p, 1, wait_ms) : 0;
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            free(buf);
            return sov_fail(SOV_ERR_IO, "%s: no reply within %d s", k->described, COMMAND_TIMEOUT_S);
        }
        ssize_t m = read(out, buf + got, REPLY_MAX - got);
        if (m < 0 && errno == EINTR)
            continue;
        if (m <= 0)
            break;
        got += (size_t)m;
        if (got == REPLY_MAX) {
            free(buf);
            return sov_fail(SOV_ERR_FORMAT, "%s: its reply exceeds %zu bytes", k->described, REPLY_MAX);
        }
    }
    buf[got] = '\0';
    *reply = buf;
    *n = got;
    return SOV_OK;
}

/* Runs the command with `request` on its stdin; *reply is its stdout. Its stderr is this process's. */
static sov_status run_command(const sov_ckpt_key *k, const char *request, char **reply, size_t *n) {
    int in[2], out[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in) != 0)
        return sov_fail(SOV_ERR_IO, "%s: socketpair: %s", k->described, strerror(errno));
    if (pipe2(out, O_CLOEXEC) != 0) {
        close(in[0]);
        close(in[1]);
        return sov_fail(SOV_ERR_IO, "%s: pipe: %s", k->described, strerror(errno));
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[1], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    char *argv[] = {"sh", "-c", k->command, NULL};
    pid_t pid;
    int err = posix_spawn(&pid, "/bin/sh", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(in[1]);
    close(out[1]);
    if (err != 0) {
        close(in[0]);
        close(out[0]);
        return sov_fail(SOV_ERR_IO, "%s: cannot start /bin/sh: %s", k->described, strerror(err));
    }
    sov_status st = talk(k, in[0], out[0], request, reply, n);
    close(out[0]);
    if (st != SOV_OK)
        kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (st == SOV_OK && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
        free(*reply);
        *reply = NULL;
        return sov_fail(SOV_ERR_IO, "%s %s %d (its own messages are above)", k->described,
                        WIFEXITED(status) ? "exited with status" : "was killed by signal",
                        WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    }
    return st;
}

/* The reply as a JSON object, or the command's own {"error": ...}. */
static sov_status parse_reply(const char *text, size_t n, const char *who, json_t **out) {
    json_error_t e;
    json_t *r = json_loadb(text, n, JSON_REJECT_DUPLICATES, &e);
    if (!json_is_object(r)) {
        json_decref(r);
        return sov_fail(SOV_ERR_FORMAT, "%s: its reply is not a JSON object (%s)", who, r ? "another value" : e.text);
    }
    json_t *error = json_object_get(r, "error");
    if (error) {
        const char *why = json_string_value(error);
        sov_status st = sov_fail(SOV_ERR_IO, "%s refused: %.500s", who, why ? why : "(a non-string error)");
        json_decref(r);
        return st;
    }
    *out = r;
    return SOV_OK;
}

static int printable(const char *s, size_t max) {
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

sov_status sov_key_parse_wrap_reply(const char *text, size_t n, char *key_id, size_t id_cap, char **wrapped,
                                    const char *who) {
    json_t *r;
    SOV_CHECK(parse_reply(text, n, who, &r));
    const char *id = json_string_value(json_object_get(r, "key_id"));
    const char *w = json_string_value(json_object_get(r, "wrapped_key"));
    sov_status st = SOV_OK;
    if (!id || !printable(id, id_cap - 1 < KEY_ID_MAX - 1 ? id_cap - 1 : KEY_ID_MAX - 1))
        st = sov_fail(SOV_ERR_FORMAT, "%s: its wrap reply lacks \"key_id\" (1 to %d printable characters)", who,
                      KEY_ID_MAX - 1);
    else if (!w || !printable(w, WRAPPED_MAX))
        st = sov_fail(SOV_ERR_FORMAT, "%s: its wrap reply lacks \"wrapped_key\" (1 to %d printable characters)", who,
                      WRAPPED_MAX);
    else if (!(*wrapped = strdup(w)))
        st = sov_fail(SOV_ERR_NOMEM, "%s: out of memory", who);
    if (st == SOV_OK)
        snprintf(key_id, id_cap, "%s", id);
    json_decref(r);
    return st;
}

sov_status sov_key_parse_unwrap_reply(const char *text, size_t n, sov_key *data_key, const char *who) {
    json_t *r;
    SOV_CHECK(parse_reply(text, n, who, &r));
    const char *b64 = json_string_value(json_object_get(r, "data_key"));
    size_t got = 0;
    int ok = b64 && sov_base64_decode(b64, data_key->bytes, SOV_KEY_BYTES, &got) && got == SOV_KEY_BYTES;
    json_decref(r);
    return ok ? SOV_OK : sov_fail(SOV_ERR_FORMAT, "%s: its unwrap reply lacks \"data_key\" (base64 of 32 bytes)",
                                  who);
}

static sov_status command_wrap(const sov_ckpt_key *k, const sov_key *dk, json_t **entry) {
    char *b64 = sov_base64_encode(dk->bytes, SOV_KEY_BYTES), *reply = NULL, *wrapped = NULL;
    json_t *req = b64 ? json_pack("{s:s, s:i, s:s}", "op", "wrap", "version", 1, "data_key", b64) : NULL;
    char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
    size_t n = 0;
    char id[KEY_ID_MAX];
    sov_status st = text ? run_command(k, text, &reply, &n) : sov_fail(SOV_ERR_NOMEM, "%s: out of memory", k->described);
    if (st == SOV_OK)
        st = sov_key_parse_wrap_reply(reply, n, id, sizeof id, &wrapped, k->described);
    if (st == SOV_OK)
        *entry = json_pack("{s:s, s:s, s:s}", "key_id", id, "wrap", "command", "wrapped_key", wrapped);
    if (b64)
        sov_wipe(b64, strlen(b64));
    if (text)
        sov_wipe(text, strlen(text));
    free(b64);
    free(text);
    free(reply);
    free(wrapped);
    json_decref(req);
    return st;
}

static sov_status command_unwrap(const sov_ckpt_key *k, const char *id, const char *wrapped, sov_key *dk) {
    json_t *req = json_pack("{s:s, s:i, s:s, s:s}", "op", "unwrap", "version", 1, "key_id", id, "wrapped_key", wrapped);
    char *text = req ? json_dumps(req, JSON_COMPACT) : NULL, *reply = NULL;
    size_t n = 0;
    sov_status st = text ? run_command(k, text, &reply, &n) : sov_fail(SOV_ERR_NOMEM, "%s: out of memory", k->described);
    if (st == SOV_OK)
        st = sov_key_parse_unwrap_reply(reply, n, dk, k->described);
    if (reply)
        sov_wipe(reply, n);
    free(reply);
    free(text);
    json_decref(req);
    return st;
}

/* ---- wrapping and unwrapping ---- */

sov_status sov_key_wrap(const sov_ckpt_key *k, const sov_key *dk, json_t **entry) {
    if (k->kind == KEY_COMMAND)
        return command_wrap(k, dk, entry);
    if (k->kind != KEY_FILE)
        return sov_fail(SOV_ERR_INVALID, "%s cannot encrypt a new checkpoint: give a key file or a key command",
                        k->described);
    uint8_t wrapped[SOV_WRAPPED_BYTES];
    SOV_CHECK(sov_key_wrap_rfc5649(&k->secret, dk, wrapped));
    char *b64 = sov_base64_encode(wrapped, sizeof wrapped);
    *entry = b64 ? json_pack("{s:s, s:s, s:s}", "key_id", k->id, "wrap", "rfc5649", "wrapped_key", b64) : NULL;
    free(b64);
    return *entry ? SOV_OK : sov_fail(SOV_ERR_NOMEM, "wrapping the data key: out of memory");
}

sov_status sov_key_unwrap(const sov_ckpt_key *k, const json_t *entry, sov_key *dk, const char *where) {
    const char *id = json_string_value(json_object_get(entry, "key_id"));
    const char *alg = json_string_value(json_object_get(entry, "wrap"));
    const char *wrapped = json_string_value(json_object_get(entry, "wrapped_key"));
    if (!id || !alg || !wrapped)
        return sov_fail(SOV_ERR_FORMAT, "%s: its encryption entry lacks key_id, wrap or wrapped_key", where);
    if (!k)
        return sov_fail(SOV_ERR_INVALID, "%s is encrypted with key id %s: give its key (--ckpt-key-file or "
                        "--ckpt-key-command)", where, id);
    if (k->kind == KEY_DATA) {
        *dk = k->secret;
        return SOV_OK;
    }
    if (strcmp(alg, k->kind == KEY_FILE ? "rfc5649" : "command") != 0)
        return sov_fail(SOV_ERR_INVALID, "%s: its data key (key id %s) was wrapped by a key %s, not by the %s", where,
                        id, strcmp(alg, "command") == 0 ? "command" : "file", k->described);
    if (k->kind == KEY_COMMAND)
        return command_unwrap(k, id, wrapped, dk);
    if (strcmp(id, k->id) != 0)
        return sov_fail(SOV_ERR_INVALID, "%s is encrypted with key id %s, not with the %s: wrong key", where, id,
                        k->described);
    uint8_t raw[SOV_WRAPPED_BYTES + 4];
    size_t n = 0;
    if (!sov_base64_decode(wrapped, raw, sizeof raw, &n) || !sov_key_unwrap_rfc5649(&k->secret, raw, n, dk))
        return sov_fail(SOV_ERR_FORMAT, "%s: its wrapped data key does not unwrap with the %s although the ids "
                        "match: the wrapped key is damaged", where, k->described);
    return SOV_OK;
}

/* job_token.c: ranks of a job started without mpirun prove to each other that they hold the job's secret before a
 * byte of the job's data crosses a connection: at the rendezvous and on every tcp ring link (docs/security.md).
 *
 * The secret comes from SOVTRAIN_JOB_TOKEN_FILE (a mounted Kubernetes Secret) or SOVTRAIN_JOB_TOKEN (`sovtrain
 * launch` makes one per job). On each new connection, both ways, by HMAC-SHA256 challenge and response:
 *   the accepting side sends  MAGIC | its nonce Na (32 random bytes)
 *   the connecting side sends MAGIC | its nonce Nc | HMAC(secret, "connect" | Na | Nc)
 *   the accepting side checks it, then sends HMAC(secret, "accept" | Na | Nc)
 * and the connecting side checks that. The secret never crosses the wire, a reply cannot be replayed (the other
 * side's nonce is fresh), and neither side talks on to a process without the secret. A job with no secret skips
 * this, saying so once. */
#include "comm_internal.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC "SOVAUTH1"
#define MAGIC_BYTES 8
#define NONCE_BYTES 32
#define MAC_BYTES 32
#define TOKEN_MAX 4096

static struct {
    int loaded;
    sov_status status;
    char error[512];
    uint8_t secret[TOKEN_MAX];
    size_t n;
} token;

/* The secret from SOVTRAIN_JOB_TOKEN_FILE (trailing newlines dropped) or SOVTRAIN_JOB_TOKEN; n = 0 when neither. */
static sov_status read_token(void) {
    const char *file = getenv("SOVTRAIN_JOB_TOKEN_FILE"), *text = getenv("SOVTRAIN_JOB_TOKEN");
    if (file && *file) {
        int fd = open(file, O_RDONLY | O_CLOEXEC);
        struct stat sb;
        if (fd < 0)
            return sov_fail(SOV_ERR_INVALID, "SOVTRAIN_JOB_TOKEN_FILE %s: %s", file, strerror(errno));
        if (fstat(fd, &sb) == 0 && (sb.st_mode & (S_IRWXG | S_IRWXO))) {
            close(fd);
            return sov_fail(SOV_ERR_INVALID, "SOVTRAIN_JOB_TOKEN_FILE %s is accessible to group or others (mode "
                            "%03o): refusing it; chmod 600 (a Kubernetes Secret: defaultMode 0400)", file,
                            (unsigned)(sb.st_mode & 0777));
        }
        ssize_t n = read(fd, token.secret, sizeof token.secret);
        close(fd);
        if (n < 0 || (size_t)n == sizeof token.secret)
            return sov_fail(SOV_ERR_INVALID, "SOVTRAIN_JOB_TOKEN_FILE %s: unreadable, or over %d bytes", file,
                            TOKEN_MAX - 1);
        token.n = (size_t)n;
    } else if (text && *text) {
        token.n = strlen(text) < sizeof token.secret ? strlen(text) : sizeof token.secret - 1;
        memcpy(token.secret, text, token.n);
    }
    while (token.n && (token.secret[token.n - 1] == '\n' || token.secret[token.n - 1] == '\r'))
        token.n--;
    if ((file && *file) && token.n < 16)
        return sov_fail(SOV_ERR_INVALID, "SOVTRAIN_JOB_TOKEN_FILE %s holds %zu bytes: a job's secret needs 16 or "
                        "more (openssl rand -hex 32)", file, token.n);
    return SOV_OK;
}

/* The job's secret, read once; n = 0 when the job has none. */
static sov_status job_token(void) {
    if (!token.loaded) {
        token.loaded = 1;
        token.status = read_token();
        if (token.status != SOV_OK)
            snprintf(token.error, sizeof token.error, "%s", sov_last_error());
        else if (token.n == 0)
            sov_log("warning: this job has no secret (SOVTRAIN_JOB_TOKEN_FILE or SOVTRAIN_JOB_TOKEN): any process "
                    "that reaches MASTER_ADDR:MASTER_PORT or a rank's port can join it (docs/security.md)");
    }
    return token.status == SOV_OK ? SOV_OK : sov_fail(token.status, "%s", token.error);
}

sov_status sov_job_secret_load(void) { return job_token(); }

static int mac(const char *role, const uint8_t *na, const uint8_t *nc, uint8_t out[MAC_BYTES]) {
    uint8_t msg[16 + 2 * NONCE_BYTES];
    size_t r = strlen(role);
    memcpy(msg, role, r);
    memcpy(msg + r, na, NONCE_BYTES);
    memcpy(msg + r + NONCE_BYTES, nc, NONCE_BYTES);
    unsigned len = 0;
    return HMAC(EVP_sha256(), token.secret, (int)token.n, msg, r + 2 * NONCE_BYTES, out, &len) != NULL &&
           len == MAC_BYTES;
}

sov_status sov_auth_accept(int fd, double deadline, const char *what) {
    SOV_CHECK(job_token());
    if (token.n == 0)
        return SOV_OK;
    uint8_t hello[MAGIC_BYTES + NONCE_BYTES], reply[MAGIC_BYTES + NONCE_BYTES + MAC_BYTES], want[MAC_BYTES];
    memcpy(hello, MAGIC, MAGIC_BYTES);
    if (RAND_bytes(hello + MAGIC_BYTES, NONCE_BYTES) != 1)
        return sov_fail(SOV_ERR_INTERNAL, "%s: OpenSSL's random generator failed", what);
    SOV_CHECK(sov_tcp_send(fd, hello, sizeof hello, deadline, what));
    SOV_CHECK(sov_tcp_recv(fd, reply, sizeof reply, deadline, what));
    const uint8_t *na = hello + MAGIC_BYTES, *nc = reply + MAGIC_BYTES;
    if (memcmp(reply, MAGIC, MAGIC_BYTES) != 0 || !mac("connect", na, nc, want) ||
        CRYPTO_memcmp(want, reply + MAGIC_BYTES + NONCE_BYTES, MAC_BYTES) != 0)
        return sov_fail(SOV_ERR_COMM, "%s: it did not prove that it holds the job's secret", what);
    if (!mac("accept", na, nc, want))
        return sov_fail(SOV_ERR_INTERNAL, "%s: HMAC-SHA256 failed", what);
    return sov_tcp_send(fd, want, sizeof want, deadline, what);
}

sov_status sov_auth_connect(int fd, double deadline, const char *what) {
    SOV_CHECK(job_token());
    if (token.n == 0)
        return SOV_OK;
    uint8_t hello[MAGIC_BYTES + NONCE_BYTES], reply[MAGIC_BYTES + NONCE_BYTES + MAC_BYTES], got[MAC_BYTES],
        want[MAC_BYTES];
    SOV_CHECK(sov_tcp_recv(fd, hello, sizeof hello, deadline, what));
    if (memcmp(hello, MAGIC, MAGIC_BYTES) != 0)
        return sov_fail(SOV_ERR_COMM, "%s: the other side does not ask for the job's secret: a job without one, or "
                        "not a sovtrain rank", what);
    memcpy(reply, MAGIC, MAGIC_BYTES);
    const uint8_t *na = hello + MAGIC_BYTES, *nc = reply + MAGIC_BYTES;
    if (RAND_bytes(reply + MAGIC_BYTES, NONCE_BYTES) != 1 || !mac("connect", na, nc, reply + MAGIC_BYTES + NONCE_BYTES))
        return sov_fail(SOV_ERR_INTERNAL, "%s: OpenSSL failed", what);
    SOV_CHECK(sov_tcp_send(fd, reply, sizeof reply, deadline, what));
    sov_status st = sov_tcp_recv(fd, got, sizeof got, deadline, what);
    if (st != SOV_OK)
        return sov_fail(SOV_ERR_COMM, "%s: refused: the other side holds another secret (%s)", what,
                        sov_last_error());
    if (!mac("accept", na, nc, want) || CRYPTO_memcmp(got, want, MAC_BYTES) != 0)
        return sov_fail(SOV_ERR_COMM, "%s: the other side did not prove that it holds the job's secret", what);
    return SOV_OK;
}

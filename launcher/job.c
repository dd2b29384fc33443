/* job.c: see job.h. */
#include "job.h"
#include "sov_internal.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t child_pid, stop_requested;

static void on_stop(int sig) {
    if (!stop_requested)
        stop_requested = sig;
    if (child_pid > 0)
        kill((pid_t)child_pid, SIGUSR1); /* mpirun forwards it: every rank saves and exits */
}

#define MAX_LOGS 4096

static const char *log_dir;
static FILE *rank_logs[MAX_LOGS], *launcher_log;

/* The log file of `rank` (-1: mpirun's own lines), opened for appending on first use; NULL without --log-dir. */
static FILE *log_of(int rank) {
    if (!log_dir || rank >= MAX_LOGS)
        return NULL;
    FILE **slot = rank < 0 ? &launcher_log : &rank_logs[rank];
    if (!*slot) {
        char path[4200];
        if (rank < 0)
            snprintf(path, sizeof path, "%s/launcher.log", log_dir);
        else
            snprintf(path, sizeof path, "%s/rank-%d.log", log_dir, rank);
        *slot = fopen(path, "a");
    }
    return *slot;
}

static void close_logs(void) {
    for (int i = 0; i < MAX_LOGS; i++)
        if (rank_logs[i]) {
            fclose(rank_logs[i]);
            rank_logs[i] = NULL;
        }
    if (launcher_log)
        fclose(launcher_log);
    launcher_log = NULL;
}

/* A rank's text since its last newline. mpirun tags what it reads from a rank, not lines: one line may arrive as
 * several tagged pieces, and a piece may end mid-line with another rank's piece right after it. */
typedef struct partial_line {
    char *text;
    size_t len, cap;
} partial_line;

typedef struct stream {
    int fd;
    FILE *out;
    char buf[65536];
    size_t len;
    job_failure *failure; /* mpirun's own lines on stderr are read for what failed */
    job_timeouts *timeouts; /* and the ranks' watchdog reports */
    partial_line *ranks;    /* by rank, grown as ranks appear */
    int nranks;
} stream;

/* A rank's collective watchdog: "error: rank R: OP #SEQ (BACKEND backend) did not complete within ...". */
static void read_timeout(job_timeouts *t, const char *line) {
    const char *at = strstr(line, "error: rank ");
    int rank;
    char op[16];
    unsigned long long seq;
    if (!t || !at || !strstr(at, "did not complete within") ||
        sscanf(at, "error: rank %d: %15s #%llu", &rank, op, &seq) != 3 || rank < 0 || rank >= JOB_MAX_WATCHED ||
        seq == 0)
        return;
    if (!t->seq[rank])
        t->count++;
    t->seq[rank] = seq;
    snprintf(t->op[rank], sizeof t->op[rank], "%s", op);
}

/* Reads what mpirun says about the first rank that failed. */
static void read_failure(job_failure *f, const char *line) {
    int rank, pid, sig, code;
    char host[128];
    if (sscanf(line, "mpirun noticed that process rank %d with PID %d on node %127s exited on signal %d", &rank, &pid,
               host, &sig) == 4) {
        *f = (job_failure){.known = 1, .rank = rank, .signal = sig};
        snprintf(f->host, sizeof f->host, "%s", host);
    } else if (sscanf(line, " Process name: [[%*d,%*d],%d]", &rank) == 1) {
        f->known = 1, f->rank = rank, f->signal = 0;
    } else if (sscanf(line, " Exit code: %d", &code) == 1) {
        f->exit_code = code;
    } else if (sscanf(line, "MPI_ABORT was invoked on rank %d", &rank) == 1) {
        if (!f->known)
            f->known = 1, f->rank = rank;
        f->aborted = 1;
    } else if (sscanf(line, " Local host: %127s", host) == 1 && !f->host[0]) {
        snprintf(f->host, sizeof f->host, "%s", host);
    }
}

static void scan_line(stream *s, const char *line, size_t len) {
    if (!s->timeouts)
        return;
    char copy[512];
    snprintf(copy, sizeof copy, "%.*s", (int)(len < 511 ? len : 511), line);
    read_timeout(s->timeouts, copy);
}

/* An untagged line: mpirun's own. */
static void relay_untagged(stream *s, const char *line, size_t len) {
    fwrite(line, 1, len, s->out);
    FILE *log = log_of(-1);
    if (log) {
        fwrite(line, 1, len, log);
        fflush(log);
    }
    if (s->failure) {
        char copy[512];
        snprintf(copy, sizeof copy, "%.*s", (int)(len < 511 ? len : 511), line);
        read_failure(s->failure, copy);
    }
    scan_line(s, line, len);
}

/* Rank `rank`'s line, whole, as "[rank N] ..." (and into its log). */
static void emit_rank_line(stream *s, int rank) {
    partial_line *p = &s->ranks[rank];
    fprintf(s->out, "[rank %d] %.*s", rank, (int)p->len, p->text);
    FILE *log = log_of(rank);
    if (log) {
        fwrite(p->text, 1, p->len, log);
        fflush(log);
    }
    scan_line(s, p->text, p->len);
    p->len = 0;
}

static void append_piece(stream *s, int rank, const char *text, size_t len) {
    if (rank >= s->nranks) {
        int n = rank + 64;
        partial_line *grown = realloc(s->ranks, (size_t)n * sizeof *grown);
        if (!grown) { /* no memory to assemble it: the piece goes out on a line of its own */
            fprintf(s->out, "[rank %d] %.*s\n", rank, (int)len, text);
            return;
        }
        memset(grown + s->nranks, 0, (size_t)(n - s->nranks) * sizeof *grown);
        s->ranks = grown, s->nranks = n;
    }
    partial_line *p = &s->ranks[rank];
    if (p->len + len > p->cap) {
        size_t cap = (p->len + len) * 2;
        char *t = realloc(p->text, cap);
        if (!t) {
            fprintf(s->out, "[rank %d] %.*s%.*s\n", rank, (int)p->len, p->text, (int)len, text);
            p->len = 0;
            return;
        }
        p->text = t, p->cap = cap;
    }
    memcpy(p->text + p->len, text, len);
    p->len += len;
}

/* The length of Open MPI's "[job,rank]<stdout>:" tag at `at` (its rank in *rank), or 0 when there is none. */
static size_t tag_at(const char *at, size_t len, int *rank) {
    unsigned job, r;
    char kind[8];
    int consumed = 0;
    if (len < 8 || at[0] != '[')
        return 0;
    char head[64];
    snprintf(head, sizeof head, "%.*s", (int)(len < 63 ? len : 63), at);
    if (sscanf(head, "[%u,%u]<%7[a-z]>:%n", &job, &r, kind, &consumed) != 3 || consumed <= 0 || r > 1u << 20)
        return 0;
    *rank = (int)r;
    return (size_t)consumed;
}

/* One line of mpirun's output: untagged (mpirun's own), or tagged pieces of the ranks' lines, each added to its
 * rank's line and written out as "[rank N] ..." once the rank's newline comes. */
static void relay_line(stream *s, const char *line, size_t len) {
    int rank;
    size_t tag = tag_at(line, len, &rank);
    if (!tag) {
        relay_untagged(s, line, len);
        fflush(s->out);
        return;
    }
    size_t at = 0;
    while (at < len) {
        size_t start = at + tag, end = start;
        int next_rank = -1;
        size_t next_tag = 0;
        while (end < len && !(line[end] == '[' && (next_tag = tag_at(line + end, len - end, &next_rank)) > 0))
            end++;
        append_piece(s, rank, line + start, end - start);
        if (end > start && line[end - 1] == '\n' && rank < s->nranks)
            emit_rank_line(s, rank);
        at = end, rank = next_rank, tag = next_tag;
    }
    fflush(s->out);
}

/* At the end of the stream: what the ranks left without a newline. */
static void flush_partial_lines(stream *s) {
    for (int r = 0; r < s->nranks; r++) {
        if (s->ranks[r].len) {
            append_piece(s, r, "\n", 1);
            emit_rank_line(s, r);
        }
        free(s->ranks[r].text);
    }
    free(s->ranks);
    s->ranks = NULL, s->nranks = 0;
    fflush(s->out);
}

/* Reads what is available; relays complete lines. Returns 0 at EOF. */
static int pump(stream *s) {
    ssize_t r = read(s->fd, s->buf + s->len, sizeof s->buf - 1 - s->len);
    if (r < 0 && errno == EINTR)
        return 1;
    if (r <= 0) {
        if (s->len)
            relay_line(s, s->buf, s->len);
        s->len = 0;
        flush_partial_lines(s);
        return 0;
    }
    s->len += (size_t)r;
    size_t start = 0;
    for (size_t i = 0; i < s->len; i++)
        if (s->buf[i] == '\n') {
            relay_line(s, s->buf + start, i + 1 - start);
            start = i + 1;
        }
    if (start == 0 && s->len == sizeof s->buf - 1) { /* a line longer than the buffer: pass it on as is */
        relay_line(s, s->buf, s->len);
        s->len = 0;
    } else {
        memmove(s->buf, s->buf + start, s->len - start);
        s->len -= start;
    }
    return 1;
}

static int exit_code_of(int status) {
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return 1;
}

/* Past the grace period after a stop request: mpirun gets SIGTERM, and SIGKILL 5 s later. */
static void enforce_grace(pid_t pid, double stop_at, double grace_s, int *escalated) {
    double late = sov_now() - stop_at - grace_s;
    if (late >= 0 && *escalated == 0) {
        fprintf(stderr, "sovtrain launch: the ranks did not finish within --grace %.0f s: terminating them\n", grace_s);
        kill(pid, SIGTERM);
        *escalated = 1;
    } else if (late >= 5 && *escalated == 1) {
        kill(pid, SIGKILL);
        *escalated = 2;
    }
}

void job_run(const char *const *argv, double grace_s, const char *logs, job_result *result) {
    memset(result, 0, sizeof *result);
    log_dir = logs;
    int out_pipe[2], err_pipe[2];
    if (pipe(out_pipe) != 0 || pipe(err_pipe) != 0) {
        fprintf(stderr, "sovtrain launch: pipe: %s\n", strerror(errno));
        result->exit_code = 1;
        return;
    }
    /* SIGTERM, SIGINT and SIGUSR1 (Slurm's usual warning before preemption, e.g. sbatch --signal=B:USR1@120)
     * all ask for a graceful stop; installed before the fork so that none is lost to the default action. */
    struct sigaction sa = {.sa_handler = on_stop};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "sovtrain launch: fork: %s\n", strerror(errno));
        result->exit_code = 1;
        return;
    }
    if (pid == 0) {
        /* mpirun in its own process group: a signal to the launcher's group (Ctrl-C, salloc -K, scancel) reaches
         * the launcher, which turns it into the graceful SIGUSR1, not mpirun, which would abort the job. And if
         * the launcher itself is killed, mpirun is told to end the job. */
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        dup2(out_pipe[1], STDOUT_FILENO);
        dup2(err_pipe[1], STDERR_FILENO);
        close(out_pipe[0]), close(out_pipe[1]), close(err_pipe[0]), close(err_pipe[1]);
        execvp(argv[0], (char *const *)argv);
        fprintf(stderr, "sovtrain launch: cannot run %s: %s (install openmpi-bin, or set --mpirun)\n", argv[0],
                strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid); /* as the child does: whichever runs first */
    child_pid = pid;
    if (stop_requested)
        kill(pid, SIGUSR1);
    close(out_pipe[1]);
    close(err_pipe[1]);
    static stream streams[2];
    streams[0] = (stream){.fd = out_pipe[0], .out = stdout};
    result->timeouts = calloc(1, sizeof *result->timeouts); /* without it, reports are simply not read */
    streams[1] = (stream){.fd = err_pipe[0], .out = stderr, .failure = &result->failure, .timeouts = result->timeouts};
    int open_streams = 2, escalated = 0;
    double stop_at = 0;
    struct pollfd fds[2] = {{.fd = out_pipe[0], .events = POLLIN}, {.fd = err_pipe[0], .events = POLLIN}};
    while (open_streams > 0) {
        if (stop_requested && stop_at == 0)
            stop_at = sov_now();
        if (stop_at > 0)
            enforce_grace(pid, stop_at, grace_s, &escalated);
        int n = poll(fds, 2, stop_at > 0 ? 200 : -1);
        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; n > 0 && i < 2; i++)
            if (fds[i].fd >= 0 && (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) && !pump(&streams[i])) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_streams--;
            }
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        if (stop_at > 0)
            enforce_grace(pid, stop_at, grace_s, &escalated);
    child_pid = 0;
    close_logs();
    result->exit_code = exit_code_of(status);
    result->stop_signal = stop_requested;
}

void job_result_free(job_result *r) {
    free(r->timeouts);
    r->timeouts = NULL;
}

/* Appends ", " and the number n to out (which holds *len of cap bytes), or " ..." once when out is full. */
static void append_rank(char *out, size_t cap, size_t *len, int n, int *listed) {
    if (*len + 16 >= cap) {
        if (*listed >= 0)
            *len += (size_t)snprintf(out + *len, cap - *len, " ...");
        *listed = -1;
        return;
    }
    *len += (size_t)snprintf(out + *len, cap - *len, "%s%d", *listed > 0 ? ", " : "", n);
    (*listed)++;
}

/* From the watchdogs' reports: the ranks that never arrived in the collective the others waited in. */
static int describe_timeouts(const job_result *r, char *out, size_t cap) {
    const job_timeouts *t = r->timeouts;
    if (!t || t->count == 0 || r->world < 1 || r->world > JOB_MAX_WATCHED)
        return 0;
    int first = 0;
    while (!t->seq[first])
        first++;
    char missing[256] = "", waited[256] = "", other[256] = "";
    size_t ml = 0, wl = 0, ol = 0;
    int mn = 0, wn = 0, on = 0;
    for (int k = 0; k < r->world; k++) {
        if (!t->seq[k])
            append_rank(missing, sizeof missing, &ml, k, &mn);
        else if (t->seq[k] == t->seq[first] && strcmp(t->op[k], t->op[first]) == 0)
            append_rank(waited, sizeof waited, &wl, k, &wn);
        else
            append_rank(other, sizeof other, &ol, k, &on);
    }
    int n = snprintf(out, cap, "%s %s #%llu did not complete within --comm-timeout: rank%s %s waited in it",
                     mn ? "hung collective:" : "collective", t->op[first], t->seq[first], wn == 1 ? "" : "s", waited);
    if (on && n > 0 && (size_t)n < cap)
        n += snprintf(out + n, cap - (size_t)n, "; rank%s %s waited in another collective (a different order of "
                      "calls)", on == 1 ? "" : "s", other);
    if (mn && n > 0 && (size_t)n < cap)
        snprintf(out + n, cap - (size_t)n, "; rank%s %s never arrived (hung, stopped, or far behind)",
                 mn == 1 ? "" : "s", missing);
    return 1;
}

void job_describe(const job_result *r, char *out, size_t cap) {
    const job_failure *f = &r->failure;
    if (describe_timeouts(r, out, cap))
        return;
    if (!f->known) {
        snprintf(out, cap, "mpirun exited with status %d", r->exit_code);
    } else if (f->signal) {
        snprintf(out, cap, "rank %d%s%s was killed by signal %d (%s)", f->rank, f->host[0] ? " on host " : "", f->host,
                 f->signal, strsignal(f->signal));
    } else if (f->aborted) {
        snprintf(out, cap, "rank %d%s%s ended the job after an error (see its messages above)", f->rank,
                 f->host[0] ? " on host " : "", f->host);
    } else {
        snprintf(out, cap, "rank %d%s%s exited with code %d", f->rank, f->host[0] ? " on host " : "", f->host,
                 f->exit_code);
    }
}
